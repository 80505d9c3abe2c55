"""fedcare: privacy.

Nothing is imported here: the SDK distribution (``packaging/fedcare-sdk``) ships this file
with :mod:`privacy.hpke` only, without Opacus or torch.
"""
