"""The CAN databases, collection policies and drive scenarios canvoy ships.

They are package data, found with ``importlib.resources`` wherever canvoy is installed (a wheel in
a virtual environment, an editable checkout). ``canvoy dbc list`` names them and ``canvoy dbc copy``
writes copies where a user wants to read or edit them.
"""

from __future__ import annotations

import atexit
from contextlib import ExitStack
from importlib import resources
from pathlib import Path

from canvoy.errors import ConfigError

DEMO_DBC = "demo_vehicle.dbc"
DEMO_HV_DBC = "demo_vehicle_hv.dbc"
DEMO_POLICY = "demo_policy.yaml"
# Files a package manager may have unpacked into a zip are extracted once, kept until exit.
_FILES = ExitStack()
atexit.register(_FILES.close)


def names() -> list[str]:
    """The shipped databases and policies, by file name (scenarios are listed by ``scenarios``)."""
    return sorted(
        f.name for f in resources.files(__name__).iterdir() if f.name.endswith((".dbc", ".yaml"))
    )


def scenarios() -> list[str]:
    """The shipped scenario names (``overheat``, ...)."""
    folder = resources.files(__name__) / "scenarios"
    return sorted(
        f.name.removesuffix(".yaml") for f in folder.iterdir() if f.name.endswith(".yaml")
    )


def path(name: str) -> Path:
    """A file system path to the shipped file ``name`` (``demo_vehicle.dbc``, ``scenarios/x.yaml``).

    Raises:
        ConfigError: no shipped file has that name.
    """
    if name in scenarios() or name.removesuffix(".yaml") in scenarios():
        name = f"scenarios/{name.removesuffix('.yaml')}.yaml"
    ref = resources.files(__name__).joinpath(*name.split("/"))
    if not ref.is_file():
        raise ConfigError(
            f"{name!r} is not a file canvoy ships: use one of {', '.join(names())} "
            f"or a scenario ({', '.join(scenarios())})"
        )
    return _FILES.enter_context(resources.as_file(ref))


def copy(name: str, folder: Path, *, force: bool = False) -> Path:
    """Write a copy of the shipped file ``name`` (or scenario) into ``folder``; return its path.

    Raises:
        ConfigError: no shipped file has that name, the copy exists and ``force`` is not set, or
            the folder cannot be written.
    """
    source = path(name)
    target = folder / source.name
    if target.exists() and not force:
        raise ConfigError(f"{target} exists: pass --force to overwrite it")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot write {target}: {exc.strerror or exc}") from exc
    return target
