"""fedcare: client.

Nothing is imported here: the SDK distribution (``packaging/fedcare-sdk``) ships this file
with :mod:`client.sdk` only, without the ClientApp's Flower, Opacus and torch.
"""
