"""The subcommands; each module has ``add_parser(subparsers)`` that sets ``func``."""

from importlib import import_module
from types import ModuleType

from canvoy import mf4

# Before any command imports python-can: its MF4 support (asammdf, numpy, pandas) is loaded
# only by a command that opens an .mf4 file (canvoy/mf4.py).
mf4.defer()

NAMES = ("certs", "broker", "dbc", "decode", "agent", "bridge", "fleet", "tail", "sim", "demo")
COMMANDS: tuple[ModuleType, ...] = tuple(import_module(f"canvoy.commands.{n}") for n in NAMES)
