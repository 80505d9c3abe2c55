"""fedcare: simulations."""
