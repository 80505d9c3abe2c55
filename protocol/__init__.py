"""fedcare: the wire formats, each shared by both sides of its exchange.

Nothing is imported here: the SDK distribution (``packaging/fedcare-sdk``) ships this file
with :mod:`protocol.inference` only, without Flower (:mod:`protocol.federation`).
"""
