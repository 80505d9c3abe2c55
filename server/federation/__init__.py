"""The coordinator's federated run: round loop, strategies, checkpoints and report."""
