"""fedcare: models."""
