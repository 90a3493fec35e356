"""Start, reload and stop a Mosquitto process configured by broker.config."""

from __future__ import annotations

import logging
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import FrameType
from typing import IO

from canvoy.broker.config import BrokerSettings, write_acl, write_config
from canvoy.certs import pki
from canvoy.certs.health import log_crl_freshness
from canvoy.errors import BrokerError

log = logging.getLogger(__name__)

# How often a running broker looks at its CRL's next update (and at each SIGHUP).
CRL_CHECK_S = 3600.0

INSTALL_HINT = (
    "Mosquitto is not installed: on Debian, Ubuntu or Raspberry Pi OS run "
    "'sudo apt-get update && sudo apt-get install -y mosquitto mosquitto-clients' "
    "(or 'make setup'); elsewhere install Mosquitto 2.x from your package manager"
)


def _with_parent(command: list[str]) -> list[str]:
    """``command`` run so that Linux sends it SIGTERM (Mosquitto saves and exits) when the
    process that started it dies, even by SIGKILL: a killed supervisor never leaves an orphan
    broker holding the port. util-linux's setpriv sets that and executes the command; where it
    is missing the command runs as it is."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--", *command] if setpriv else command


def find_mosquitto() -> str:
    """The path of the mosquitto binary (Debian puts it in /usr/sbin, off a user's PATH).

    Raises:
        BrokerError: Mosquitto is not installed.
    """
    found = shutil.which("mosquitto") or shutil.which(
        "mosquitto", path="/usr/sbin:/usr/local/sbin:/opt/homebrew/sbin"
    )
    if found is None:
        raise BrokerError(INSTALL_HINT)
    return found


def _listening(port: int) -> bool:
    """True when something listens on ``port``; reads /proc so Mosquitto logs no failed probe."""
    want = f":{port:04X}"
    found_proc = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        found_proc = True
        for row in rows:
            fields = row.split()
            if fields[1].endswith(want) and fields[3] == "0A":  # 0A = LISTEN
                return True
    if found_proc:
        return False
    try:
        with socket.create_connection(("127.0.0.1", port), 0.2):
            return True
    except OSError:
        return False


class Broker:
    """One Mosquitto process; the same code serves ``canvoy broker`` and the test fixture."""

    def __init__(self, settings: BrokerSettings) -> None:
        self.settings = settings
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The Mosquitto process id while it runs."""
        return self._proc.pid if self._proc is not None else None

    def start(self, *, log: IO[bytes] | None = None, ready_timeout_s: float = 10.0) -> None:
        """Write the config, start Mosquitto and wait until its listener accepts connections.

        Raises:
            BrokerError: Mosquitto is missing, rejects its config, or does not listen in time.
        """
        binary = find_mosquitto()
        conf = write_config(self.settings)
        command = _with_parent([binary, "-c", str(conf)])
        self._proc = subprocess.Popen(command, stdout=log, stderr=log)
        self.wait_ready(ready_timeout_s)

    def wait_ready(self, timeout_s: float) -> None:
        """Wait until the TLS port accepts TCP connections.

        Raises:
            BrokerError: the process exited or the port did not open before the deadline.
        """
        proc = self._require()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BrokerError(
                    f"mosquitto exited with code {proc.returncode}: see its log "
                    f"(config {str(self.settings.conf_path)!r})"
                )
            if _listening(self.settings.port):
                return
            time.sleep(0.05)
        raise BrokerError(f"mosquitto did not listen on port {self.settings.port} in {timeout_s} s")

    def reload(self) -> None:
        """Rewrite the ACL from the PKI and make Mosquitto reload certificates, CRL and ACL."""
        write_acl(self.settings)
        self._require().send_signal(signal.SIGHUP)

    def stop(self, timeout_s: float = 10.0) -> int:
        """Stop Mosquitto (SIGTERM, then SIGKILL after ``timeout_s``); return its exit code."""
        proc = self._require()
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def terminate(self) -> None:
        """Ask Mosquitto to stop (SIGTERM) without waiting for it."""
        proc = self._require()
        if proc.poll() is None:
            proc.terminate()

    def kill(self) -> None:
        """SIGKILL Mosquitto, as a crash or power cut would."""
        proc = self._require()
        proc.kill()
        proc.wait()

    def wait(self, timeout_s: float | None = None) -> int | None:
        """Block until Mosquitto exits and return its exit code (None after ``timeout_s``)."""
        try:
            return self._require().wait(timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def _require(self) -> subprocess.Popen[bytes]:
        if self._proc is None:
            raise BrokerError("the broker has not been started")
        return self._proc


def run_foreground(settings: BrokerSettings) -> int:
    """Run Mosquitto until SIGTERM/SIGINT; SIGHUP rewrites the ACL and reloads TLS files.

    Raises:
        BrokerError: Mosquitto cannot be started.
    """
    broker = Broker(settings)
    check_crl(settings)
    broker.start()

    def on_hup(_signum: int, _frame: FrameType | None) -> None:
        broker.reload()
        check_crl(settings)

    def on_term(_signum: int, _frame: FrameType | None) -> None:
        # Only signal here: the main thread is inside wait() and reaps the process.
        broker.terminate()

    signal.signal(signal.SIGHUP, on_hup)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    code = broker.wait(CRL_CHECK_S)
    while code is None:
        check_crl(settings)
        code = broker.wait(CRL_CHECK_S)
    # Mosquitto exits 0 on SIGTERM; a negative code means it was killed.
    return 0 if code in (0, -signal.SIGTERM) else code


def check_crl(settings: BrokerSettings) -> None:
    """Warn within 7 days of the CRL's next update, and log an error after it: from then on
    Mosquitto refuses every client until a re-signed CRL arrives."""
    log_crl_freshness(pki.crl_path(settings.certs), log, certs=str(settings.certs))


def data_dir_default(certs: Path) -> Path:
    """Where broker state goes when ``--data`` is not given: beside the PKI."""
    return certs / "broker-data"
