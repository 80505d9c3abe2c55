"""Provisioning: keys, certificates, who holds what, and never overwriting a private key."""

from __future__ import annotations

import shutil
import stat
import subprocess
import tomllib
from ipaddress import ip_address
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.verification import PolicyBuilder, Store

from client.site import resolve_settings
from deploy.provision import ProvisionError, issue_service_cert, load_federation, provision
from deploy.superlink import write_connection
from deploy.supernode import load_site_config, supernode_command, write_node_config
from models.data.site_config import SiteConfigError
from privacy import pki, signing
from tests.unit.privacy.test_signing import ssh_keygen_fingerprint

SITES = ["a", "b", "c"]


@pytest.fixture()
def prov(tmp_path: Path):
    out = tmp_path / "fed"
    result = provision("demo", SITES, out, san_dns=["localhost"], san_ips=["127.0.0.1"])
    return out, result


def _files(d: Path) -> set[str]:
    return {str(p.relative_to(d)) for p in d.rglob("*") if p.is_file()}


def _private_files(d: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(d)): p.read_bytes()
        for p in d.rglob("*")
        if p.is_file() and p.suffix == ".key"
    }


def test_layout_each_participant_holds_only_its_own(prov):
    out, result = prov
    assert _files(out / "ca") == {"ca.key", "ca.crt"}
    assert _files(out / "coordinator") == {
        "ca.crt",
        "superlink.crt",
        "superlink.key",
        "signing.key",
        "signing.pub",
        "federation.toml",
        *{f"sites/{s}.pub" for s in SITES},
    }
    for site in SITES:
        assert _files(out / "sites" / site) == {
            "ca.crt",
            "auth.key",
            "auth.pub",
            "signing.pub",
            "site.toml",
        }
    # A site's folder holds no byte of any other private key.
    secrets = {k: v for k, v in _private_files(out).items()}
    for site in SITES:
        site_dir = out / "sites" / site
        blob = b"".join(p.read_bytes() for p in site_dir.rglob("*") if p.is_file())
        for name, secret in secrets.items():
            if name == f"sites/{site}/auth.key":
                continue
            assert secret not in blob, f"{name} leaked into site {site}"
    # The coordinator does not hold the CA key nor any site's private key.
    coord_blob = b"".join(p.read_bytes() for p in (out / "coordinator").rglob("*") if p.is_file())
    assert (out / "ca" / "ca.key").read_bytes() not in coord_blob
    for site in SITES:
        assert (out / "sites" / site / "auth.key").read_bytes() not in coord_blob
    assert len(result.created) == 3 + len(SITES)  # CA, SuperLink, signing + one per site


def test_private_keys_are_0600(prov):
    out, _ = prov
    keys = [p for p in out.rglob("*.key")]
    assert len(keys) == 3 + len(SITES)
    for key in keys:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key


def test_node_auth_keys_in_the_format_flower_reads(prov):
    out, _ = prov
    # The exact loaders flower-supernode and `flwr supernode register` use.
    from flwr.cli.supernode.register import try_load_public_key

    for site in SITES:
        d = out / "sites" / site
        priv = pki.load_node_auth_private_key((d / "auth.key").read_bytes())
        assert isinstance(priv.curve, ec.SECP384R1)
        pub = pki.load_node_auth_public_key((d / "auth.pub").read_bytes())
        assert pub.public_numbers() == priv.public_key().public_numbers()
        assert try_load_public_key(d / "auth.pub")  # flwr accepts it
        assert (out / "coordinator" / "sites" / f"{site}.pub").read_bytes() == (
            d / "auth.pub"
        ).read_bytes()


def test_federation_toml_has_the_fingerprints_the_participants_can_check(prov):
    out, _ = prov
    fed = load_federation(out / "coordinator")
    for site in SITES:
        assert fed.fingerprints[site] == ssh_keygen_fingerprint(out / "sites" / site / "auth.pub")
    assert len(set(fed.fingerprints.values())) == len(SITES)
    toml = tomllib.loads((out / "coordinator" / "federation.toml").read_text())
    verify_key = signing.load_verify_key(out / "sites" / "a" / "signing.pub")
    assert toml["signing-public-key-fingerprint"] == pki.fingerprint(verify_key)


def test_the_superlink_certificate_digest_is_what_openssl_prints(prov):
    out, _ = prov
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    cert = out / "coordinator" / "superlink.crt"
    run = subprocess.run(
        [openssl, "x509", "-noout", "-fingerprint", "-sha256", "-in", str(cert)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    toml = tomllib.loads((out / "coordinator" / "federation.toml").read_text())
    assert toml["superlink-certificate-sha256"] == run.stdout.strip().split("=", 1)[1]


def test_server_certificate_chains_to_ca_with_sans(prov):
    out, _ = prov
    ca = pki.load_cert((out / "ca" / "ca.crt").read_bytes())
    cert = pki.load_cert((out / "coordinator" / "superlink.crt").read_bytes())
    assert pki.verify_issued_by(cert, ca)
    assert pki.cert_sans(cert) == ({"localhost"}, {"127.0.0.1"})
    key = pki.load_pem_private_key((out / "coordinator" / "superlink.key").read_bytes())
    assert pki.public_keys_match(key, cert)
    store = Store([ca])
    for name in (
        x509.DNSName("localhost"),
        x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1")),
    ):
        verifier = PolicyBuilder().store(store).build_server_verifier(name)
        verifier.verify(cert, [])  # raises if the chain, SAN or EKU is wrong
    other = provision("other", ["x"], out.parent / "other")
    assert other.federation == "other"
    other_ca = pki.load_cert((out.parent / "other" / "ca" / "ca.crt").read_bytes())
    assert not pki.verify_issued_by(cert, other_ca)
    # Every participant got the same CA certificate.
    for site in SITES:
        assert (out / "sites" / site / "ca.crt").read_bytes() == (
            out / "ca" / "ca.crt"
        ).read_bytes()


def test_signing_key_signs_and_sites_can_verify(prov):
    out, _ = prov
    key = pki.load_signing_private_key((out / "coordinator" / "signing.key").read_bytes())
    sig = key.sign(b"manifest")
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    pub = load_pem_public_key((out / "sites" / "a" / "signing.pub").read_bytes())
    pub.verify(sig, b"manifest")


def test_rerun_keeps_every_private_key_and_adds_only_new_sites(prov):
    out, _ = prov
    before = _private_files(out)
    cert_before = (out / "coordinator" / "superlink.crt").read_bytes()
    result = provision("demo", SITES + ["d"], out, san_dns=["localhost"], san_ips=["127.0.0.1"])
    after = _private_files(out)
    for name, data in before.items():
        assert after[name] == data, f"{name} was replaced"
    assert [p.relative_to(out).as_posix() for p in result.created] == ["sites/d/auth.key"]
    assert not result.server_cert_issued
    assert (out / "coordinator" / "superlink.crt").read_bytes() == cert_before
    assert set(load_federation(out / "coordinator").sites) == set(SITES + ["d"])


def test_force_replaces_private_keys(prov):
    out, _ = prov
    before = _private_files(out)
    provision("demo", SITES, out, force=True)
    after = _private_files(out)
    assert all(after[k] != v for k, v in before.items())


def test_write_private_key_refuses_to_overwrite(tmp_path):
    path = tmp_path / "k.key"
    pki.write_private_key(path, b"one")
    with pytest.raises(pki.KeyExistsError):
        pki.write_private_key(path, b"two")
    assert path.read_bytes() == b"one"
    pki.write_private_key(path, b"two", force=True)
    assert path.read_bytes() == b"two"


def test_new_sans_reissue_the_certificate_for_the_same_key(prov):
    out, _ = prov
    key_before = (out / "coordinator" / "superlink.key").read_bytes()
    r = provision(
        "demo", SITES, out, san_dns=["localhost", "fl.example.org"], san_ips=["127.0.0.1"]
    )
    assert r.server_cert_issued
    assert (out / "coordinator" / "superlink.key").read_bytes() == key_before
    cert = pki.load_cert((out / "coordinator" / "superlink.crt").read_bytes())
    assert pki.cert_sans(cert)[0] == {"localhost", "fl.example.org"}


def test_offline_ca_key_is_never_replaced_silently(prov):
    out, _ = prov
    ca_key = out / "ca" / "ca.key"
    offline = ca_key.read_bytes()
    ca_key.unlink()  # moved offline
    # Adding a site needs no CA key.
    r = provision("demo", SITES + ["e"], out, san_dns=["localhost"], san_ips=["127.0.0.1"])
    assert not ca_key.exists() and not r.server_cert_issued
    # A new certificate does: refuse rather than make a new CA.
    with pytest.raises(ProvisionError, match="CA key"):
        provision("demo", SITES, out, san_dns=["other.example.org"], san_ips=[])
    assert not ca_key.exists()
    pki.write_private_key(ca_key, offline)
    assert provision(
        "demo",
        SITES,
        out,
        san_dns=["other.example.org"],
        san_ips=[],
        superlink_address="other.example.org:8000",
    ).server_cert_issued


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"federation": "Bad Name", "sites": ["a"]}, "invalid federation"),
        ({"federation": "f", "sites": ["a", "a"]}, "duplicate"),
        ({"federation": "f", "sites": ["ca"]}, "reserved"),
        ({"federation": "f", "sites": []}, "at least one site"),
        ({"federation": "f", "sites": ["a"], "superlink_address": "evil.org:8000"}, "not among"),
    ],
)
def test_bad_arguments_are_refused(tmp_path, kwargs, match):
    with pytest.raises(ProvisionError, match=match):
        provision(out_dir=tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()


def test_bad_ip_san_is_refused(tmp_path):
    with pytest.raises(pki.PKIError, match="not an IP"):
        provision("f", ["a"], tmp_path / "x", san_ips=["300.1.1.1"])


def test_site_toml_drives_the_supernode_command(prov):
    out, _ = prov
    cfg = load_site_config(out / "sites" / "a" / "site.toml")
    assert cfg.name == "a" and cfg.federation == "demo"
    assert cfg.superlink == "localhost:8000"
    assert cfg.root_certificates == (out / "sites" / "a" / "ca.crt").resolve()
    node_cfg_file = write_node_config(cfg, {"value": 1.5})
    cmd = supernode_command(cfg, node_cfg_file)
    assert "--auth-supernode-private-key" in cmd and "--insecure" not in cmd
    # Flower parses the node-config file itself.
    from flwr.common.config import parse_config_args

    parsed = parse_config_args([str(node_cfg_file)])
    assert parsed["site-name"] == "a" and parsed["value"] == 1.5
    assert parsed["epsilon-budget"] == 8.0
    assert parsed["state-dir"] == str(cfg.state_dir)


def test_site_toml_and_node_config_refuse_with_the_one_site_config_error(tmp_path):
    with pytest.raises(SiteConfigError, match="not found"):
        load_site_config(tmp_path / "site.toml")
    with pytest.raises(SiteConfigError, match="no site data"):
        resolve_settings({})


def test_connection_is_read_back_by_flwr(prov, tmp_path, monkeypatch):
    out, _ = prov
    home = tmp_path / "flwr-home"
    write_connection(home, "127.0.0.1:18600", out / "coordinator" / "ca.crt")
    monkeypatch.setenv("FLWR_HOME", str(home))
    from flwr.cli.flower_config import read_superlink_connection

    conn = read_superlink_connection("fedcare")
    assert conn.address == "127.0.0.1:18600" and not conn.insecure
    assert Path(conn.root_certificates) == (out / "coordinator" / "ca.crt").resolve()


def test_the_inference_service_certificate_comes_from_the_federation_ca(prov):
    out, _ = prov
    issued = issue_service_cert(out, ["inference.example"], ["10.0.0.5"])
    assert issued.issued and issued.key_created
    assert _files(out / "inference") == {"ca.crt", "tls.crt", "tls.key"}
    assert stat.S_IMODE(issued.key.stat().st_mode) == 0o600
    assert issued.ca_cert.read_bytes() == (out / "ca" / "ca.crt").read_bytes()
    cert = pki.load_cert(issued.cert.read_bytes())
    ca = pki.load_cert(issued.ca_cert.read_bytes())
    store = Store([ca])
    for name in (x509.DNSName("inference.example"), x509.IPAddress(ip_address("10.0.0.5"))):
        PolicyBuilder().store(store).build_server_verifier(name).verify(cert, [])
    assert pki.public_keys_match(pki.load_pem_private_key(issued.key.read_bytes()), cert)
    # Re-running keeps what still fits; other names re-issue it for the same key.
    again = issue_service_cert(out, ["inference.example"], ["10.0.0.5"])
    assert not again.issued and not again.key_created
    key = issued.key.read_bytes()
    renamed = issue_service_cert(out, ["scoring.example"], [])
    assert renamed.issued and issued.key.read_bytes() == key
    assert pki.cert_sans(pki.load_cert(renamed.cert.read_bytes())) == ({"scoring.example"}, set())


def test_the_inference_certificate_needs_a_provisioned_ca_and_its_key(tmp_path, prov):
    with pytest.raises(ProvisionError, match="run `fedcare provision` first"):
        issue_service_cert(tmp_path / "nothing")
    out, _ = prov
    shutil.move(out / "ca" / "ca.key", tmp_path / "offline.key")
    with pytest.raises(ProvisionError, match="CA key .* is absent"):
        issue_service_cert(out)
    with pytest.raises(pki.PKIError, match="not an IP address"):
        issue_service_cert(out, [], ["inference"])
