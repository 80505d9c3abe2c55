"""fedcare: client."""
