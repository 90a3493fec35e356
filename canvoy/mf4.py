"""python-can's MF4 support, loaded only when an MF4 file is read or written.

python-can imports asammdf (and with it numpy and pandas) at ``import can`` whenever asammdf is
installed, as it is with ``canvoy[mf4]``: about 0.25 s and 70 MB for every process, although
only an ``.mf4`` file needs it. The command line therefore imports python-can with asammdf held
back (:func:`defer`, before any command module imports ``can``), and the two places that open
an MF4 file (log replay and ``canvoy sim record``) call :func:`load` first, which imports
asammdf and runs python-can's MF4 module again so that its reader and writer see it.

In a process that imported ``can`` before :func:`defer` (a user's own program, the tests),
nothing is held back and :func:`load` only says whether asammdf is there.
"""

from __future__ import annotations

import gc
import importlib
import importlib.util
import logging
import sys
import threading
from types import ModuleType

log = logging.getLogger(__name__)
_lock = threading.Lock()


def defer() -> None:
    """Import python-can without its MF4 support, unless it is imported already."""
    if "can" in sys.modules or "asammdf" in sys.modules:
        return
    # A None entry makes ``import asammdf`` fail at once; python-can's MF4 module catches the
    # ImportError and sets itself up without it. The entry goes straight after, so that any
    # later ``import asammdf`` (ours in load, or anyone's) works as usual.
    sys.modules["asammdf"] = None  # type: ignore[assignment]
    try:
        import can  # noqa: F401 - imported here, with asammdf held back
    finally:
        if "asammdf" in sys.modules and sys.modules["asammdf"] is None:
            del sys.modules["asammdf"]


def load() -> bool:
    """Make python-can's MF4 reader and writer usable; False when asammdf is not installed."""
    import can.io.mf4 as module

    with _lock:
        if not _has_asammdf(module) and importlib.util.find_spec("asammdf") is not None:
            # Running the module again rebinds its globals (asammdf, numpy, MDF...) in place, so
            # the MF4Reader and MF4Writer classes python-can already registered by suffix see
            # them; nothing else in python-can holds on to those names.
            importlib.reload(module)
        return _has_asammdf(module)


def _has_asammdf(module: ModuleType) -> bool:
    # python-can's MF4 module sets ``asammdf`` to None when its import failed.
    return getattr(module, "asammdf", None) is not None


def free_remains() -> None:
    """Free what a failed MF4 open left behind, now, without a traceback.

    asammdf's ``MDF4.__del__`` fails on a file it could not finish opening (a cut or foreign
    file), and Python prints such a failure as a traceback whenever the object goes. Called
    once the open has failed: the object goes here, and its complaint to the debug log.
    """
    previous = sys.unraisablehook
    sys.unraisablehook = _log_unraisable
    try:
        gc.collect()
    finally:
        sys.unraisablehook = previous


def _log_unraisable(unraisable: sys.UnraisableHookArgs) -> None:
    log.debug("asammdf, freeing a file it could not open: %r", unraisable.exc_value)
