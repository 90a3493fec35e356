"""Acceptance 4 of issue 17: systemd accepts the units in deploy/ and rates them hardened."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "deploy" / "systemd"
INSTALLED = "/opt/canvoy/bin/canvoy"  # where docs/DEPLOY.md installs the command
SERVICES = sorted(UNITS.glob("*.service"))
LONG_RUNNING = [u for u in SERVICES if "Type=oneshot" not in u.read_text()]

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("systemd-analyze") is None,
        reason="systemd-analyze is not installed (apt-get install systemd)",
    ),
]


@pytest.fixture
def here(tmp_path: Path) -> Path:
    """The units as installed, with the command where this checkout has it: systemd checks
    that ExecStart's program exists."""
    canvoy = Path(sys.executable).with_name("canvoy")
    assert canvoy.exists(), f"{canvoy}: run make setup"
    for unit in [*SERVICES, *UNITS.glob("*.timer")]:
        (tmp_path / unit.name).write_text(unit.read_text().replace(INSTALLED, str(canvoy)))
    return tmp_path


def test_systemd_analyze_verify_accepts_every_unit(here: Path) -> None:
    units = sorted(str(p) for p in here.iterdir())
    done = subprocess.run(
        ["systemd-analyze", "verify", *units], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", done.stderr  # no warnings either


@pytest.mark.parametrize("unit", [u.name for u in SERVICES])
def test_each_service_is_hardened(here: Path, unit: str) -> None:
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(here / unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", done.stdout)
    assert found is not None, done.stdout + done.stderr
    assert float(found.group(1)) <= 2.0, done.stdout  # systemd's "OK" (a default unit: 9.6)


@pytest.mark.parametrize("unit", [u.name for u in SERVICES])
def test_the_rules_of_the_issue(unit: str) -> None:
    text = (UNITS / unit).read_text()
    for line in (
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=\n",
        "AmbientCapabilities=\n",
    ):
        assert line in text, f"{unit}: {line.strip()} missing"
    user = re.search(r"^User=(\S+)$", text, re.M)
    assert user is not None and user.group(1).startswith("canvoy-"), f"{unit}: its own user"
    writable = re.findall(r"^ReadWritePaths=(.+)$", text, re.M)
    assert writable == [f"/var/lib/{user.group(1)}"], f"{unit}: writes only its data directory"
    sysusers = (UNITS / "canvoy.sysusers.conf").read_text()
    assert re.search(rf"^u {user.group(1)} ", sysusers, re.M), f"{unit}: user in sysusers.d"


@pytest.mark.parametrize("unit", [u.name for u in LONG_RUNNING])
def test_services_restart_always(unit: str) -> None:
    assert "Restart=always" in (UNITS / unit).read_text()


def test_the_crl_timer_starts_the_crl_service() -> None:
    assert (UNITS / "canvoy-crl.timer").exists() and (UNITS / "canvoy-crl.service").exists()
    assert "canvoy certs crl" in (UNITS / "canvoy-crl.service").read_text()
