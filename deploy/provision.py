"""`fedcare provision`: everything a federation needs, one folder per participant.

    OUT/
      ca/                     the certificate authority; keep it offline. Needed only to
        ca.key ca.crt         (re)issue the SuperLink's certificate.
      coordinator/            the coordinator host (SuperLink + ServerApp + registry)
        ca.crt
        superlink.crt superlink.key       TLS for the SuperLink's one port
        signing.key signing.pub           Ed25519 key that signs registry manifests
        sites/<site>.pub                  every site's SuperNode public key (to register)
        federation.toml                   names, address, fingerprints
      inference/              the inference service's host (`fedcare keys tls`, later)
        ca.crt                            for its clients to verify it
        tls.crt tls.key                   its TLS certificate, issued by the CA
      sites/<site>/           one hospital; holds nothing of another participant's secrets
        ca.crt                            to verify the SuperLink
        auth.key auth.pub                 this site's SuperNode authentication key pair
        signing.pub                       to verify models the coordinator publishes
        site.toml                         the agent's configuration (filled in by the site),
                                          with the approved app's FAB hash

Re-running is safe: an existing private key is reused, never replaced, unless `force`.
Public artefacts (certificates, copies of public keys, federation.toml) are rewritten from
the keys; a site's `site.toml` is left alone once it exists (the hospital edits it).
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from flwr.cli.build import build_fab_from_disk

from privacy import pki

# fedcare's own Flower App (the folder with its pyproject.toml's [tool.flwr.app]).
FEDCARE_APP = Path(__file__).resolve().parents[1]
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
DEFAULT_PORT = 8000
RENEW_BEFORE = timedelta(days=30)


class ProvisionError(Exception):
    """Provisioning cannot proceed; the message says why and what to do."""


@dataclass
class ProvisionResult:
    """What one `provision` call made, kept and wrote.

    Parameters
    ----------
    out_dir : Path
        The federation's folder.
    federation, sites : str, list of str
        The federation's and its sites' names.
    superlink_address : str
        host:port the sites dial.
    created, reused, written : list of Path
        New private keys, private keys kept as they were, public artefacts (re)written.
    server_cert_issued : bool
        Whether the SuperLink's certificate was (re)issued.
    approved_apps : list of str
        The FAB hashes written into new site.toml files (empty when none was written).
    """

    out_dir: Path
    federation: str
    sites: list[str]
    superlink_address: str
    created: list[Path] = field(default_factory=list)  # new private keys
    reused: list[Path] = field(default_factory=list)  # private keys kept as they were
    written: list[Path] = field(default_factory=list)  # public artefacts (re)written
    server_cert_issued: bool = False
    approved_apps: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """A few lines for the operator: what was made and who gets which folder."""
        lines = [
            f"federation {self.federation!r}: {len(self.sites)} site(s) "
            f"({', '.join(self.sites)}), SuperLink at {self.superlink_address}",
            f"  new private keys: {len(self.created)}; kept: {len(self.reused)}",
            f"  SuperLink certificate: {'issued' if self.server_cert_issued else 'kept'}",
            f"  approved apps (FAB sha256) in new site.toml files: "
            f"{', '.join(self.approved_apps) or '-'}",
            f"  give each site only its folder {self.out_dir / 'sites' / '<site>'}; "
            f"keep {self.out_dir / 'ca'} offline",
        ]
        return "\n".join(lines)


def _check_name(kind: str, name: str) -> str:
    if not NAME_RE.match(name):
        raise ProvisionError(
            f"invalid {kind} name {name!r}: use lower-case letters, digits, '-' or '_' "
            "(start with a letter or digit, at most 63 characters)"
        )
    return name


def _private(path: Path, make: Callable[[], bytes], force: bool, result: ProvisionResult) -> bytes:
    """Return the private key bytes at `path`, creating them only if absent (or forced)."""
    if path.exists() and not force:
        result.reused.append(path)
        return path.read_bytes()
    data = make()
    pki.write_private_key(path, data, force=force)
    result.created.append(path)
    return data


def _public(path: Path, data: bytes, result: ProvisionResult) -> None:
    if path.exists() and path.read_bytes() == data:
        return
    pki.write_public(path, data)
    result.written.append(path)


def _server_cert_ok(
    cert_path: Path, key, ca_cert, dns_names: Sequence[str], ip_addresses: Sequence[str]
) -> bool:
    if not cert_path.exists():
        return False
    try:
        cert = pki.load_cert(cert_path.read_bytes())
    except pki.PKIError:
        return False
    if not pki.verify_issued_by(cert, ca_cert) or not pki.public_keys_match(key, cert):
        return False
    if cert.not_valid_after_utc - datetime.now(UTC) < RENEW_BEFORE:
        return False
    want_dns = {d.strip() for d in dns_names if d.strip()}
    want_ips = {str(pki.parse_sans((), [ip])[0].value) for ip in ip_addresses if ip.strip()}
    return pki.cert_sans(cert) == (want_dns, want_ips)


def app_fab_sha256(app_dir: str | Path = FEDCARE_APP) -> str:
    """The hash a run of the Flower App in ``app_dir`` carries.

    The sha256 hex digest of the FAB that ``flwr build`` and ``flwr run`` build from the
    folder (Flower's build is reproducible: fixed timestamps, filtered files).

    Parameters
    ----------
    app_dir : str or Path
        The app's folder (its ``pyproject.toml`` has ``[tool.flwr.app]``).
    """
    return hashlib.sha256(build_fab_from_disk(Path(app_dir))).hexdigest()


@dataclass(frozen=True)
class SiteDefaults:
    """What a new site.toml starts with; the hospital may change any of it.

    Parameters
    ----------
    runtime_port : int
        The SuperNode's loopback Runtime API port.
    epsilon_budget : float
        The site's lifetime ε budget.
    epsilon_per_run, epsilon_per_federation : float
        The most one run, and all runs of the federation, may spend.
    approved_apps : tuple of str
        FAB hashes of the apps the site takes part in.
    """

    runtime_port: int = 9094
    epsilon_budget: float = 8.0
    epsilon_per_run: float = 8.0
    epsilon_per_federation: float = 8.0
    approved_apps: tuple[str, ...] = ()


def _site_toml(site: str, federation: str, address: str, d: SiteDefaults) -> str:
    approved = ", ".join(f'"{h}"' for h in d.approved_apps)
    return f"""\
# fedcare site configuration for {site!r} in federation {federation!r}.
# Paths are relative to this file. Fill in [data] before `fedcare site check`.

[site]
name = "{site}"
federation = "{federation}"

[superlink]
# host:port of the coordinator's SuperLink; the hospital needs outbound HTTPS to it only.
address = "{address}"
root-certificates = "ca.crt"

[auth]
private-key = "auth.key"

[data]
path = ""            # CSV or Parquet file with this site's records (required)
schema = ""          # the federation's schema file (required)

[state]
# The privacy ledger and the SuperNode's working files live here; back it up.
dir = "state"

[privacy]
# This site refuses any round that would take it past one of these.
epsilon-budget = {d.epsilon_budget!r} # over the site's lifetime, every federation and run
epsilon-per-run = {d.epsilon_per_run!r} # what one run may spend
epsilon-per-federation = {d.epsilon_per_federation!r} # what all runs of one federation may spend
delta = 1e-5

[supernode]
# Loopback port of the SuperNode's local Runtime API (ClientApp <-> SuperNode).
runtime-port = {d.runtime_port}

[runtime]
# Runs this site takes part in: the sha256 of each approved Flower App Bundle (FAB), as
# `flwr build` names it. For them the site runs its own installed ClientApp; it never
# installs or imports a run's code. Any other run gets an error reply (code 105).
approved-apps = [{approved}]
client-app = "client.app:app"
task-poll-interval = 0.5  # seconds between task requests when the SuperNode sends no nudge
supernode-poll-interval = 0.2  # most seconds the SuperNode waits between asks for messages
"""


def _federation_toml(
    federation: str,
    address: str,
    sites: list[str],
    fingerprints: dict[str, str],
    server_cert,
    signing_pub_fp: str,
) -> str:
    dns, ips = pki.cert_sans(server_cert)
    lines = [
        "# Written by `fedcare provision`; public information only.",
        f'federation = "{federation}"',
        f'superlink-address = "{address}"',
        'ca-certificate = "ca.crt"',
        'superlink-certificate = "superlink.crt"',
        'superlink-key = "superlink.key"',
        'signing-key = "signing.key"',
        'signing-public-key = "signing.pub"',
        f'signing-public-key-fingerprint = "{signing_pub_fp}"',
        f'superlink-certificate-sha256 = "{pki.cert_fingerprint(server_cert)}"',
        f"superlink-dns-names = {sorted(dns)!r}".replace("'", '"'),
        f"superlink-ip-addresses = {sorted(ips)!r}".replace("'", '"'),
        "",
    ]
    for site in sites:
        lines += [
            "[[sites]]",
            f'name = "{site}"',
            f'public-key = "sites/{site}.pub"',
            f'fingerprint = "{fingerprints[site]}"',
            "",
        ]
    return "\n".join(lines)


def provision(
    federation: str,
    sites: Sequence[str],
    out_dir: str | Path,
    san_dns: Sequence[str] = ("localhost",),
    san_ips: Sequence[str] = ("127.0.0.1",),
    force: bool = False,
    superlink_address: str | None = None,
    port: int = DEFAULT_PORT,
    supernode_runtime_port: int = 9094,
    approved_apps: Sequence[str] | None = None,
    epsilon_budget: float = 8.0,
    epsilon_per_run: float | None = None,
    epsilon_per_federation: float | None = None,
) -> ProvisionResult:
    """Create (or complete) a federation's keys and certificates under `out_dir`.

    Parameters
    ----------
    federation, sites : names (lower-case letters, digits, '-', '_').
    san_dns, san_ips : the names and addresses by which sites reach the SuperLink; each
        site dials `superlink_address`, whose host must be among them.
    force : replace existing private keys (all of them: a new CA, new SuperLink key, new
        site keys, new signing key). Without it nothing private is ever overwritten.
    superlink_address : host:port the sites dial; default the first DNS name (else IP)
        with `port`.
    supernode_runtime_port : the loopback port written into each new site.toml.
    approved_apps : FAB sha256 digests the new site.toml files approve; default the hash of
        fedcare's own app folder (:func:`app_fab_sha256`).
    epsilon_budget, epsilon_per_run, epsilon_per_federation : the new site.toml files'
        lifetime ε budget and caps per run and per federation (default: the lifetime
        budget, i.e. no tighter cap).
    """
    federation = _check_name("federation", federation)
    sites = [_check_name("site", s.strip()) for s in sites if s.strip()]
    if not sites:
        raise ProvisionError("at least one site is needed (--sites a,b,c)")
    if len(set(sites)) != len(sites):
        raise ProvisionError(f"duplicate site names in {sites}")
    if any(s in ("ca", "coordinator") for s in sites):
        raise ProvisionError("'ca' and 'coordinator' are reserved and cannot be site names")
    san_dns = [d.strip() for d in san_dns if d.strip()]
    san_ips = [i.strip() for i in san_ips if i.strip()]
    pki.parse_sans(san_dns, san_ips)  # validates (raises PKIError)
    if superlink_address is None:
        host = san_dns[0] if san_dns else san_ips[0]
        host = f"[{host}]" if ":" in host else host
        superlink_address = f"{host}:{port}"
    host_part = superlink_address.rsplit(":", 1)[0].strip("[]")
    if host_part not in san_dns and host_part not in san_ips:
        raise ProvisionError(
            f"the SuperLink address host {host_part!r} is not among the certificate's names "
            f"{san_dns + san_ips}: sites would reject the certificate"
        )

    defaults = SiteDefaults(
        runtime_port=supernode_runtime_port,
        epsilon_budget=float(epsilon_budget),
        epsilon_per_run=float(epsilon_per_run or epsilon_budget),
        epsilon_per_federation=float(epsilon_per_federation or epsilon_budget),
        approved_apps=tuple(approved_apps or ()),
    )
    out = Path(out_dir)
    ca_dir, coord_dir, sites_dir = out / "ca", out / "coordinator", out / "sites"
    result = ProvisionResult(
        out_dir=out,
        federation=federation,
        sites=sites,
        superlink_address=superlink_address,
    )

    # --- the CA. A CA certificate without its key means the key was moved offline (or
    # lost): never invent a new CA behind the sites' backs.
    ca_key_path, ca_cert_path = ca_dir / "ca.key", ca_dir / "ca.crt"
    if not force and ca_cert_path.exists() and not ca_key_path.exists():
        ca_key = None
        ca_cert = pki.load_cert(ca_cert_path.read_bytes())
    else:
        ca_key_pem = _private(
            ca_key_path, lambda: pki.ec_key_to_pem(pki.generate_ec_key()), force, result
        )
        ca_key = pki.load_pem_private_key(ca_key_pem)
        ca_cert = None
        if ca_cert_path.exists() and not force:
            ca_cert = pki.load_cert(ca_cert_path.read_bytes())
            if not pki.public_keys_match(ca_key, ca_cert):
                ca_cert = None
        if ca_cert is None:
            _, ca_cert = pki.make_ca(f"fedcare {federation} CA", key=ca_key)
            pki.write_public(ca_cert_path, pki.cert_to_pem(ca_cert))
            result.written.append(ca_cert_path)
    ca_pem = pki.cert_to_pem(ca_cert)

    # --- the coordinator
    _public(coord_dir / "ca.crt", ca_pem, result)
    sl_key_pem = _private(
        coord_dir / "superlink.key",
        lambda: pki.ec_key_to_pem(pki.generate_ec_key()),
        force,
        result,
    )
    sl_key = pki.load_pem_private_key(sl_key_pem)
    cert_path = coord_dir / "superlink.crt"
    if force or not _server_cert_ok(cert_path, sl_key, ca_cert, san_dns, san_ips):
        if ca_key is None:
            raise ProvisionError(
                f"the SuperLink certificate must be (re)issued but the CA key {ca_key_path} "
                "is absent: bring the CA key back into that folder and re-run"
            )
        server_cert = pki.issue_server_cert(
            ca_key, ca_cert, sl_key, f"fedcare {federation} SuperLink", san_dns, san_ips
        )
        _public(cert_path, pki.cert_to_pem(server_cert), result)
        result.server_cert_issued = True
    else:
        server_cert = pki.load_cert(cert_path.read_bytes())

    sign_pem = _private(
        coord_dir / "signing.key",
        lambda: pki.generate_signing_keys().private_pem,
        force,
        result,
    )
    signing_key = pki.load_signing_private_key(sign_pem)
    signing = pki.signing_keys_from_private(signing_key)
    _public(coord_dir / "signing.pub", signing.public_pem, result)
    signing_fp = pki.fingerprint(signing_key.public_key())

    # --- the sites
    fingerprints: dict[str, str] = {}
    for site in sites:
        sdir = sites_dir / site
        key_bytes = _private(
            sdir / "auth.key",
            lambda site=site: pki.generate_node_auth_keys(f"{federation}/{site}").private_openssh,
            force,
            result,
        )
        site_key = pki.load_node_auth_private_key(key_bytes)
        keys = pki.node_auth_keys_from_private(site_key, comment=f"{federation}/{site}")
        _public(sdir / "auth.pub", keys.public_openssh, result)
        _public(sdir / "ca.crt", ca_pem, result)
        _public(sdir / "signing.pub", signing.public_pem, result)
        _public(coord_dir / "sites" / f"{site}.pub", keys.public_openssh, result)
        site_toml = sdir / "site.toml"
        if force or not site_toml.exists():
            if approved_apps is None and not result.approved_apps:
                # building the FAB takes seconds: only when a site.toml is written
                defaults = replace(defaults, approved_apps=(app_fab_sha256(),))
            result.approved_apps = list(defaults.approved_apps)
            text = _site_toml(site, federation, superlink_address, defaults)
            pki.write_public(site_toml, text.encode())
            result.written.append(site_toml)
        fingerprints[site] = pki.fingerprint(site_key.public_key())

    _public(
        coord_dir / "federation.toml",
        _federation_toml(
            federation, superlink_address, sites, fingerprints, server_cert, signing_fp
        ).encode(),
        result,
    )
    return result


# ------------------------------------------------------- the inference service's TLS


@dataclass(frozen=True)
class ServiceCertificate:
    """The inference service's TLS files, as :func:`issue_service_cert` left them.

    Parameters
    ----------
    cert, key, ca_cert : Path
        Its certificate, its private key (mode 0600) and the federation CA's certificate
        (what its clients pass as ``--ca-cert``).
    issued : bool
        Whether the certificate was (re)issued (False: the existing one still fits).
    key_created : bool
        Whether the private key is new.
    """

    cert: Path
    key: Path
    ca_cert: Path
    issued: bool
    key_created: bool


def issue_service_cert(
    out_dir: str | Path,
    san_dns: Sequence[str] = ("localhost",),
    san_ips: Sequence[str] = ("127.0.0.1",),
    force: bool = False,
) -> ServiceCertificate:
    """Issue the inference service's TLS certificate from a provisioned federation's CA.

    Writes ``out_dir/inference/{tls.key, tls.crt, ca.crt}``. As for the SuperLink's, an
    existing key is reused (unless ``force``) and the certificate is issued again only
    when it does not verify under the CA, does not match the key, has other names or
    expires within 30 days.

    Parameters
    ----------
    out_dir : path
        The folder :func:`provision` made (its ``ca/`` must hold the CA key).
    san_dns, san_ips : sequence of str
        The names and addresses by which clinical applications reach the service.
    force : bool
        Make a new key and certificate even if the existing ones fit.
    """
    out = Path(out_dir)
    ca_key_path, ca_cert_path = out / "ca" / "ca.key", out / "ca" / "ca.crt"
    if not ca_cert_path.exists():
        raise ProvisionError(f"{ca_cert_path} not found: run `fedcare provision` first")
    san_dns = [d.strip() for d in san_dns if d.strip()]
    san_ips = [i.strip() for i in san_ips if i.strip()]
    pki.parse_sans(san_dns, san_ips)  # validates (raises PKIError)
    ca_cert = pki.load_cert(ca_cert_path.read_bytes())
    folder = out / "inference"
    key_path, cert_path = folder / "tls.key", folder / "tls.crt"
    scratch = ProvisionResult(out_dir=out, federation="", sites=[], superlink_address="")
    key_pem = _private(key_path, lambda: pki.ec_key_to_pem(pki.generate_ec_key()), force, scratch)
    key = pki.load_pem_private_key(key_pem)
    _public(folder / "ca.crt", pki.cert_to_pem(ca_cert), scratch)
    issued = force or not _server_cert_ok(cert_path, key, ca_cert, san_dns, san_ips)
    if issued:
        if not ca_key_path.exists():
            raise ProvisionError(
                f"the inference service's certificate must be (re)issued but the CA key "
                f"{ca_key_path} is absent: bring the CA key back into that folder and re-run"
            )
        ca_key = pki.load_pem_private_key(ca_key_path.read_bytes())
        if not pki.public_keys_match(ca_key, ca_cert):
            raise ProvisionError(f"{ca_key_path} is not the key of {ca_cert_path}")
        cert = pki.issue_server_cert(
            ca_key, ca_cert, key, "fedcare inference service", san_dns, san_ips
        )
        _public(cert_path, pki.cert_to_pem(cert), scratch)
    return ServiceCertificate(
        cert=cert_path,
        key=key_path,
        ca_cert=folder / "ca.crt",
        issued=issued,
        key_created=key_path in scratch.created,
    )


# ------------------------------------------------------------------- reading it back


@dataclass(frozen=True)
class FederationFile:
    """The coordinator's view of a provisioned federation (coordinator/federation.toml)."""

    root: Path
    federation: str
    superlink_address: str
    sites: dict[str, Path]  # site name -> its public key file
    fingerprints: dict[str, str]  # site name -> its key's fingerprint (pki.fingerprint)

    @property
    def ca_cert(self) -> Path:
        """The federation CA's certificate."""
        return self.root / "ca.crt"

    @property
    def server_cert(self) -> Path:
        """The SuperLink's TLS certificate."""
        return self.root / "superlink.crt"

    @property
    def server_key(self) -> Path:
        """The SuperLink's TLS private key."""
        return self.root / "superlink.key"

    @property
    def signing_key(self) -> Path:
        """The coordinator's model-signing private key."""
        return self.root / "signing.key"


def load_federation(coordinator_dir: str | Path) -> FederationFile:
    """Read the coordinator's ``federation.toml`` back.

    Parameters
    ----------
    coordinator_dir : path
        The coordinator's folder made by :func:`provision`.

    Raises
    ------
    ProvisionError
        When the folder holds no ``federation.toml``.
    """
    root = Path(coordinator_dir)
    path = root / "federation.toml"
    if not path.exists():
        raise ProvisionError(f"{path} not found: run `fedcare provision` first")
    data = tomllib.loads(path.read_text())
    sites = {s["name"]: root / s["public-key"] for s in data.get("sites", [])}
    fps = {s["name"]: s["fingerprint"] for s in data.get("sites", [])}
    return FederationFile(
        root=root,
        federation=data["federation"],
        superlink_address=data["superlink-address"],
        sites=sites,
        fingerprints=fps,
    )
