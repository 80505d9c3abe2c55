"""The SDK clinical applications use to call the encrypted inference service.

It installs on its own (``packaging/fedcare-sdk``), without torch, Flower or Opacus:
it needs only :mod:`protocol.inference`, :mod:`privacy.hpke` and ``httpx``.
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
    parse_key_config,
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
    "parse_key_config",
]
