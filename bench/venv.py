"""Run a benchmark with the project's .venv even when started as ``python bench/X.py``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

VENV_PYTHON = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "python"


def reexec_in_venv() -> None:
    """Replace this process with the same command under .venv's Python, if that is not us."""
    if not VENV_PYTHON.exists():
        return  # no 'make setup' yet: run with whatever Python this is
    if Path(sys.prefix).resolve() == VENV_PYTHON.parent.parent.resolve():
        return
    os.execv(VENV_PYTHON, [str(VENV_PYTHON), *sys.argv])
