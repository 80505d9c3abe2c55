"""fedcare: cli."""
