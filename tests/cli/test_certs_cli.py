"""``canvoy certs`` as a user runs it: validity, enrolment, renewal, the CRL, list and check."""

from __future__ import annotations

import datetime as dt
import json
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from canvoy.certs import enrol, health, pki
from canvoy.cli import main
from canvoy.errors import PKIError
from tests.identitykit import dated_crl

NOW = dt.datetime.now(dt.UTC)


def run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def root(tmp_path: Path) -> Path:
    pki.init_ca(tmp_path / "pki")
    return tmp_path / "pki"


@pytest.mark.parametrize(
    "flags",
    [["--days", "0"], ["--days", "-1"], ["--hours", "0"], ["--hours", "-5"]],
    ids=" ".join,
)
def test_validity_must_be_positive(
    capsys: pytest.CaptureFixture[str], root: Path, flags: list[str]
) -> None:
    code, _out, err = run(capsys, "certs", "issue", "device", "x", "--certs", root, *flags)
    assert code == 2
    assert err.count("\n") == 1 and "positive" in err and flags[1] in err, err
    assert "Traceback" not in err and not (root / "device" / "x").exists()


def test_hours_make_a_short_lived_certificate(
    capsys: pytest.CaptureFixture[str], root: Path
) -> None:
    code, _out, _err = run(
        capsys, "certs", "issue", "operator", "ci", "--dir", root, "--hours", "2"
    )
    assert code == 0
    cert = x509.load_pem_x509_certificate((root / "operator" / "ci" / "cert.pem").read_bytes())
    assert dt.timedelta(hours=1.9) < cert.not_valid_after_utc - NOW < dt.timedelta(hours=2.1)


def test_second_kind_under_a_name_is_refused_naming_the_first(
    capsys: pytest.CaptureFixture[str], root: Path
) -> None:
    assert run(capsys, "certs", "issue", "bridge", "bridge-1", "--certs", root)[0] == 0
    code, _out, err = run(capsys, "certs", "issue", "device", "bridge-1", "--certs", root)
    assert code == 2 and "already a bridge identity" in err and err.count("\n") == 1


def test_request_sign_round_trip_keeps_the_key_where_it_was_made(
    capsys: pytest.CaptureFixture[str], root: Path, tmp_path: Path
) -> None:
    key, csr = tmp_path / "car" / "key.pem", tmp_path / "car" / "car-7.csr"
    assert run(capsys, "certs", "request", "device", "car-7", "--key", key, "-o", csr)[0] == 0
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    first = key.read_bytes()
    assert run(capsys, "certs", "request", "device", "car-7", "--key", key, "-o", csr)[0] == 0
    assert key.read_bytes() == first  # an existing key is used, never replaced
    code, out, _err = run(capsys, "certs", "sign", csr, "--certs", root, "-o", tmp_path / "c.pem")
    assert code == 0 and "copy" in out
    cert = x509.load_pem_x509_certificate((tmp_path / "c.pem").read_bytes())
    private = serialization.load_pem_private_key(first, password=None)
    assert cert.public_key() == private.public_key()
    cert.verify_directly_issued_by(
        x509.load_pem_x509_certificate(pki.ca_cert_path(root).read_bytes())
    )
    assert not (root / "device" / "car-7" / "key.pem").exists()
    code, _out, err = run(capsys, "certs", "sign", csr, "--certs", root)
    assert code == 2 and "renew" in err  # same key again: that is a renewal
    code, out, _err = run(capsys, "certs", "list", "--certs", root)
    assert "elsewhere" in out


ODD_SUBJECTS = [
    [(NameOID.COMMON_NAME, "b1")],
    [
        (NameOID.ORGANIZATION_NAME, "canvoy fleet"),
        (NameOID.ORGANIZATIONAL_UNIT_NAME, "device"),
        (NameOID.COMMON_NAME, "car 7"),
    ],
    [
        (NameOID.ORGANIZATION_NAME, "canvoy fleet"),
        (NameOID.ORGANIZATIONAL_UNIT_NAME, "device"),
        (NameOID.COMMON_NAME, "car-1,OU=bridge"),
    ],
    [
        (NameOID.ORGANIZATION_NAME, "canvoy fleet"),
        (NameOID.ORGANIZATIONAL_UNIT_NAME, "ca"),
        (NameOID.COMMON_NAME, "car-1"),
    ],
    [
        (NameOID.ORGANIZATION_NAME, "canvoy fleet"),
        (NameOID.ORGANIZATIONAL_UNIT_NAME, "device"),
        (NameOID.COMMON_NAME, "x" * 65),
    ],
]


@pytest.mark.filterwarnings("ignore:Attribute's length")
@pytest.mark.parametrize("attributes", ODD_SUBJECTS)
def test_sign_refuses_requests_not_made_for_the_fleet(
    root: Path, tmp_path: Path, attributes: list[tuple[x509.ObjectIdentifier, str]]
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(o, v, _validate=False) for o, v in attributes])
    odd = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    path = tmp_path / "odd.csr"
    path.write_bytes(odd.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(PKIError, match="canvoy certs request KIND NAME"):
        enrol.sign(root, path)
    assert pki.identities(root) == []


def test_sign_refuses_a_name_of_another_kind_and_a_broker_without_hosts(
    root: Path, tmp_path: Path
) -> None:
    pki.issue(root, "bridge", "b1")
    enrol.request("device", "b1", enrol.FileKey(tmp_path / "k.pem"), tmp_path / "b1.csr")
    with pytest.raises(PKIError, match="already a bridge identity"):
        enrol.sign(root, tmp_path / "b1.csr")
    enrol.request("broker", "broker", enrol.FileKey(tmp_path / "bk.pem"), tmp_path / "bk.csr")
    with pytest.raises(PKIError, match="--host"):
        enrol.sign(root, tmp_path / "bk.csr")
    assert enrol.sign(root, tmp_path / "bk.csr", hosts=["localhost"]).kind == "broker"


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=600))
def test_any_bytes_as_a_request_are_refused_with_a_pki_error(
    data: bytes, tmp_path_factory: pytest.TempPathFactory
) -> None:
    folder = tmp_path_factory.mktemp("csr")
    path = folder / "x.csr"
    path.write_bytes(b"-----BEGIN CERTIFICATE REQUEST-----\n" + data)
    with pytest.raises(PKIError):
        enrol.read_request(path)


def test_renew_keeps_the_key_and_the_hosts(root: Path) -> None:
    old = pki.issue(root, "broker", "broker", hosts=["mqtt.example", "10.0.0.5"], days=10)
    new = enrol.renew(root, "broker", "broker", days=400)
    old_cert = x509.load_pem_x509_certificate(new.cert_path.read_bytes())
    assert new.serial != old.serial and new.not_after > old.not_after
    san = old_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["mqtt.example"]
    key = serialization.load_pem_private_key(old.key_path.read_bytes(), password=None)
    assert old_cert.public_key() == key.public_key()


def test_renew_new_key_only_for_keys_made_here(root: Path, tmp_path: Path) -> None:
    made = pki.issue(root, "device", "car-1")
    before = made.key_path.read_bytes()
    enrol.renew(root, "device", "car-1", new_key=True)
    assert made.key_path.read_bytes() != before
    enrol.request("device", "car-2", enrol.FileKey(tmp_path / "k.pem"), tmp_path / "c.csr")
    enrol.sign(root, tmp_path / "c.csr")
    with pytest.raises(PKIError, match="enrolled by request"):
        enrol.renew(root, "device", "car-2", new_key=True)
    with pytest.raises(PKIError, match="certs issue device nobody"):
        enrol.renew(root, "device", "nobody")


def test_check_names_what_expires_and_passes_after_renewal_and_crl(
    capsys: pytest.CaptureFixture[str], root: Path
) -> None:
    assert run(capsys, "certs", "issue", "device", "short", "--certs", root, "--days", "10")[0] == 0
    dated_crl(
        root, last_update=NOW - dt.timedelta(days=340), next_update=NOW + dt.timedelta(days=25)
    )
    code, out, _err = run(capsys, "certs", "check", "--within", "30", "--certs", root)
    assert code == 1
    lines = out.splitlines()
    assert len(lines) == 2
    expiry = (NOW + dt.timedelta(days=10)).strftime("%Y-%m-%d")
    assert any(line.startswith("device short: expires " + expiry) for line in lines), out
    assert any(line.startswith("CRL: lapses") for line in lines), out
    code, out, _err = run(capsys, "certs", "check", "--within", "30", "--certs", root, "--json")
    assert code == 1 and {f["what"] for f in json.loads(out)} == {"device short", "CRL"}
    assert (
        run(capsys, "certs", "renew", "device", "short", "--certs", root, "--days", "365")[0] == 0
    )
    assert run(capsys, "certs", "crl", "--certs", root)[0] == 0
    code, out, _err = run(capsys, "certs", "check", "--within", "30", "--certs", root)
    assert code == 0 and "nothing" in out


def test_check_reports_past_and_not_yet_valid_but_not_revoked(root: Path) -> None:
    pki.issue(root, "device", "gone", days=1)
    pki.revoke(root, "gone")
    pki.issue(root, "device", "soon", days=2)
    later = health.check(root, dt.timedelta(days=30), NOW + dt.timedelta(days=5))
    assert {f.what: f.state for f in later} == {"device soon": "expired"}
    early = health.check(root, dt.timedelta(days=0), NOW - dt.timedelta(days=1))
    assert {f.what: f.state for f in early} == {"device soon": "not yet valid"}


def test_crl_resign_keeps_revocations_and_needs_positive_days(root: Path) -> None:
    pki.issue(root, "device", "car-1")
    revoked = pki.revoke(root, "car-1")
    crl = pki.resign_crl(root, days=30)
    assert [e.serial_number for e in crl] == [revoked.serial]
    assert crl.next_update_utc is not None
    assert dt.timedelta(days=29) < crl.next_update_utc - NOW <= dt.timedelta(days=30, minutes=1)
    pki.issue(root, "device", "car-2")
    pki.revoke(root, "car-2")  # keeps the 30-day cadence
    again = pki.load_crl(root)
    assert again is not None and again.next_update_utc is not None
    assert again.next_update_utc - NOW <= dt.timedelta(days=30, minutes=1)
    with pytest.raises(PKIError, match="positive"):
        pki.resign_crl(root, days=0)


def test_list_json_carries_dates_and_the_crl(
    capsys: pytest.CaptureFixture[str], root: Path
) -> None:
    pki.issue(root, "device", "car-1", days=10)
    code, out, _err = run(capsys, "certs", "list", "--certs", root, "--json")
    doc = json.loads(out)
    assert code == 0
    assert set(doc["crl"]) >= {"last_update", "next_update", "days_left", "revoked"}
    (ident,) = doc["identities"]
    assert ident["name"] == "car-1" and ident["revoked"] is False
    assert 9 < ident["days_left"] <= 10 and ident["not_before"] < ident["not_after"]
    assert ident["subject"] == "CN=car-1,OU=device,O=canvoy fleet"


def test_revoke_covers_every_certificate_and_previous_keeps_the_current(root: Path) -> None:
    first = pki.issue(root, "device", "car-1")
    second = enrol.renew(root, "device", "car-1", new_key=True)
    pki.revoke(root, "car-1", previous=True)
    crl = pki.load_crl(root)
    assert crl is not None and {e.serial_number for e in crl} == {first.serial}
    assert not [i for i in pki.identities(root) if i.revoked]
    third = enrol.renew(root, "device", "car-1")
    pki.revoke(root, "car-1")
    crl = pki.load_crl(root)
    assert crl is not None
    assert {e.serial_number for e in crl} == {first.serial, second.serial, third.serial}
    assert not list((root / "device").rglob("issued"))  # history lives outside device/
