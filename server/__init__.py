"""fedcare: server."""
