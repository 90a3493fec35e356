"""The built wheel, installed away from the checkout, works as the README says it does."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from tests.agentkit import REPO

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # Built from a copy, so that no build/ folder of an earlier build leaks into the wheel.
    source = tmp_path_factory.mktemp("source") / "canvoy"
    shutil.copytree(
        REPO,
        source,
        symlinks=True,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "demo-run"
        ),
    )
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(out), str(source)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    warnings = [
        line
        for line in done.stdout.splitlines() + done.stderr.splitlines()
        if "warning" in line.lower() and "Location" not in line
    ]
    assert not warnings, warnings
    (built,) = out.glob("canvoy-*.whl")
    return built


def _venv(folder: Path, requirement: str) -> Path:
    venv.create(folder, with_pip=True)
    python = folder / "bin" / "python"
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", requirement],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return folder / "bin"


def _run(bin_dir: Path, *args: str, cwd: Path, timeout: float = 120) -> str:
    # No checkout on the path: the wheel alone must carry the code and the data.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{bin_dir}:{env.get('PATH', '')}"
    done = subprocess.run(
        list(args), capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr
    return done.stdout


def test_wheel_holds_one_package_its_data_and_the_license(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"canvoy"}
    assert any(n.endswith("dist-info/licenses/LICENSE") for n in names)
    for shipped in ("demo_vehicle.dbc", "demo_vehicle_hv.dbc", "demo_policy.yaml"):
        assert f"canvoy/dbc/{shipped}" in names
    assert "canvoy/dbc/scenarios/overheat.yaml" in names


def test_wheel_with_all_extras_runs_the_readme_away_from_the_checkout(
    wheel: Path, tmp_path: Path
) -> None:
    bin_dir = _venv(tmp_path / "venv", f"{wheel}[all]")
    work = tmp_path / "elsewhere"
    work.mkdir()
    assert "canvoy" in _run(bin_dir, "canvoy", "--help", cwd=work)
    _run(
        bin_dir,
        "canvoy",
        "sim",
        "record",
        "--scenario",
        "overheat",
        "--duration",
        "60",
        "-o",
        "x.blf",
        cwd=work,
    )
    _run(bin_dir, "canvoy", "dbc", "copy", "-o", ".", cwd=work)
    decoded = _run(bin_dir, "canvoy", "decode", "--dbc", "demo_vehicle.dbc", "x.blf", cwd=work)
    assert '"CoolantTemp"' in decoded
    demo = _run(bin_dir, "canvoy", "demo", cwd=work, timeout=300)
    assert " open: P0217" in demo and " closed: P0217" in demo
    _run(bin_dir, "python", "-c", "import canvoy.agent, canvoy.bridge.service", cwd=work)
    probe = subprocess.run(
        [str(bin_dir / "python"), "-c", "import agent"],
        capture_output=True,
        text=True,
        cwd=work,
        check=False,
    )
    assert probe.returncode == 1 and "ModuleNotFoundError" in probe.stderr
    top = _run(bin_dir, "python", "-c", _TOP_LEVEL, cwd=work)
    assert top.split() == ["canvoy"]


def test_wheel_without_extras_is_a_vehicle_install(wheel: Path, tmp_path: Path) -> None:
    bin_dir = _venv(tmp_path / "venv", str(wheel))
    work = tmp_path / "car"
    work.mkdir()
    installed = _run(bin_dir, "python", "-m", "pip", "list", "--format", "freeze", cwd=work)
    names = {line.split("==")[0].lower() for line in installed.splitlines()}
    assert not names & {"httpx", "nats-py"}, names
    _run(bin_dir, "canvoy", "agent", "--help", cwd=work)
    _run(bin_dir, "canvoy", "sim", "record", "--duration", "5", "-o", "x.asc", cwd=work)
    _run(bin_dir, "canvoy", "dbc", "copy", "demo_vehicle.dbc", "-o", ".", cwd=work)
    assert "WHEEL_SPEEDS" in _run(
        bin_dir, "canvoy", "decode", "--dbc", "demo_vehicle.dbc", "x.asc", cwd=work
    )


_TOP_LEVEL = """
from importlib.metadata import distribution
dist = distribution("canvoy")
print(*sorted({f.parts[0] for f in dist.files if not f.parts[0].endswith(".dist-info")
               and f.parts[0] != ".." and f.suffix != ".pth"}))
"""
