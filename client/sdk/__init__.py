"""The SDK clinical applications use to call the encrypted inference service.

It installs on its own (``pip install ./packaging/fedcare-sdk``), without torch, Flower,
Opacus or numpy: it needs only :mod:`protocol.inference`, :mod:`privacy.hpke`,
``httpx`` and ``cryptography``.
"""

from client.sdk.inference_client import (
    AuthenticationError,
    ConnectionFailed,
    InferenceClient,
    InferenceError,
    InferenceResult,
    InvalidInput,
    ModelNotFound,
    PermissionDenied,
    ProtocolViolation,
    RateLimited,
    RequestRejected,
    ServiceError,
    ServiceKey,
)

__all__ = [
    "AuthenticationError",
    "ConnectionFailed",
    "InferenceClient",
    "InferenceError",
    "InferenceResult",
    "InvalidInput",
    "ModelNotFound",
    "PermissionDenied",
    "ProtocolViolation",
    "RateLimited",
    "RequestRejected",
    "ServiceError",
    "ServiceKey",
]
