"""Registry versions as the console shows them: metrics, ε per site, δ, signature state."""

from __future__ import annotations

import hashlib
import ssl
from dataclasses import dataclass, replace
from pathlib import Path

import httpx

from privacy.signing import SignatureError, VerifyKey
from protocol.inference import READY_PATH
from server.registry import ModelRegistry, ModelVersion, RegistryError, verify_version_bytes

VERIFIED = "verified"
NOT_CHECKED = "not checked (no verify key given)"
# The inference service answers its readiness route at once; a stuck one must not hang a page.
SERVICE_TIMEOUT = 5.0
NO_STORAGE_KEY = "give the console the registry's storage key (--storage-key) to check them"


@dataclass(frozen=True)
class VersionRow:
    """One registry version.

    Parameters
    ----------
    key : str
        ``<name>-v<version>-<registry hash>``: the version's handle in URLs, unique across
        the console's registries (a simulation's are all called ``registry``).
    name : str
        The model's name.
    version : int
        Its version number.
    registry : str
        The registry folder.
    created : str
        When it was registered (UTC, ISO 8601).
    run : str
        The run that trained it (its key), when recorded.
    kind : str
        The network's family.
    metrics : dict of str to float
        Its final metrics.
    delta : float or None
        δ of the sites' accounting.
    epsilon_budget : float or None
        The sites' ε budget, when the run set one.
    epsilon_per_site : dict of str to float
        Each site's ε spent when it was registered.
    signature : str
        ``verified``, why not, or that no key was given.
    served : bool
        Whether the inference service serves this version (see :class:`Serving`).
    """

    key: str
    name: str
    version: int
    registry: str
    created: str
    run: str
    kind: str
    metrics: dict[str, float]
    delta: float | None
    epsilon_budget: float | None
    epsilon_per_site: dict[str, float]
    signature: str
    served: bool = False

    @property
    def verified(self) -> bool:
        """Whether the signature and every file's sha256 checked out."""
        return self.signature == VERIFIED


@dataclass(frozen=True)
class MetricDiff:
    """One metric of two versions side by side.

    Parameters
    ----------
    metric : str
        The metric.
    a, b : float or None
        Its value in each version (None: not recorded).
    change : float or None
        ``b - a`` when both have it.
    """

    metric: str
    a: float | None
    b: float | None
    change: float | None


@dataclass(frozen=True)
class Serving:
    """Which version of each model the inference service serves, and how that is known.

    Parameters
    ----------
    versions : dict of str to int
        Per model name, its served version.
    source : str
        ``the inference service at <url>`` (its readiness route, asked now), ``the audit
        log (last answered)``, or why neither says.
    """

    versions: dict[str, int]
    source: str


def ask_service(url: str, ca_cert: Path | None) -> Serving:
    """The versions the running service serves, from its readiness route (no token needed).

    Parameters
    ----------
    url : str
        The service's base URL, e.g. ``https://inference.hospital.example:8443``.
    ca_cert : Path or None
        The CA its TLS certificate chains to (None: the system's).

    Raises
    ------
    ValueError
        The service did not answer, or answered something else, with what happened.
    """
    verify = ssl.create_default_context(cafile=str(ca_cert) if ca_cert else None)
    try:
        reply = httpx.get(url.rstrip("/") + READY_PATH, verify=verify, timeout=SERVICE_TIMEOUT)
        models = reply.json()["models"]
        versions = {str(name): int(version) for name, version in models.items()}
    except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"the inference service at {url} did not say: {err}") from err
    return Serving(versions, f"the inference service at {url}")


def signature_state(
    version: ModelVersion, key: VerifyKey | None, storage_key: bytes | None = None
) -> str:
    """``verified``, or why not: the signature and every listed file, checked with ``key``.

    Weights encrypted at rest verify only when they decrypt with ``storage_key`` (the
    registry checks the signature, each file's sha256, then decrypts).

    Parameters
    ----------
    version : ModelVersion
        The version.
    key : VerifyKey or None
        The coordinator's public signing key; None reports that nothing was checked.
    storage_key : bytes or None
        The registry's storage key, for versions encrypted at rest.
    """
    if key is None:
        return NOT_CHECKED
    try:
        verify_version_bytes(version.path, key, storage_key)
    except SignatureError as err:
        hint = (
            f" ({NO_STORAGE_KEY})"
            if storage_key is None and version.manifest.get("at_rest")
            else ""
        )
        return f"not verified: {err}{hint}"
    return VERIFIED


def version_rows(
    registries: list[Path], key: VerifyKey | None, storage_key: bytes | None = None
) -> list[VersionRow]:
    """Every complete version of every model in ``registries``, newest registration first.

    Parameters
    ----------
    registries : list of Path
        Registry folders.
    key : VerifyKey or None
        The coordinator's public signing key.
    storage_key : bytes or None
        The registry's storage key, for versions encrypted at rest.
    """
    rows = []
    for root in registries:
        registry = ModelRegistry(root)
        tag = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:8]
        for name in registry.names():
            try:
                versions = registry.versions(name)
            except RegistryError:
                continue  # a damaged manifest: the registry's own tools report it
            for v in versions:
                privacy = v.manifest.get("privacy", {})
                rows.append(
                    VersionRow(
                        key=f"{v.name}-v{v.version}-{tag}",
                        name=v.name,
                        version=v.version,
                        registry=str(root),
                        created=str(v.manifest.get("created", "")),
                        run=str(v.manifest.get("extra", {}).get("run", "")),
                        kind=str(v.manifest["model"].get("kind", "")),
                        metrics=dict(v.manifest.get("metrics", {})),
                        delta=privacy.get("delta"),
                        epsilon_budget=privacy.get("epsilon_budget"),
                        epsilon_per_site=dict(privacy.get("epsilon_per_site", {})),
                        signature=signature_state(v, key, storage_key),
                    )
                )
    return sorted(rows, key=lambda r: (r.created, r.version), reverse=True)


def mark_served(rows: list[VersionRow], served: dict[str, int]) -> list[VersionRow]:
    """``rows`` with ``served`` set on the version served of each model.

    Parameters
    ----------
    rows : list of VersionRow
        The versions.
    served : dict of str to int
        The version served, per model name (:class:`Serving`).
    """
    return [replace(r, served=served.get(r.name) == r.version) for r in rows]


def metric_diff(a: VersionRow, b: VersionRow) -> list[MetricDiff]:
    """Every metric of either version, with ``b``'s change from ``a``.

    Parameters
    ----------
    a, b : VersionRow
        The versions compared.
    """
    out = []
    for metric in sorted({*a.metrics, *b.metrics}):
        va, vb = a.metrics.get(metric), b.metrics.get(metric)
        change = vb - va if va is not None and vb is not None else None
        out.append(MetricDiff(metric, va, vb, change))
    return out
