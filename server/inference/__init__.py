"""The encrypted inference service: `fedcare serve` (see docs/INFERENCE.md, docs/PROTOCOL.md).

Modules, one concept each: ``protocol`` (the JSON inside the envelopes, shared with the
SDK), ``keyring`` (HPKE keys and rotation), ``model_store`` (verified models, hot reload),
``replay`` (replay protection), ``audit`` (the audit log), ``config`` (settings),
``service`` (the request logic) and ``app`` (the FastAPI routes).
"""
