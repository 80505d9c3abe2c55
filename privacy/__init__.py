"""fedcare: privacy."""
