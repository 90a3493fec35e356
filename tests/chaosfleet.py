"""The processes of a chaos run, each started through the ``canvoy`` CLI as a user would.

A broker (``canvoy broker``), bridges (``canvoy bridge run``), an agent (``canvoy agent run``)
and a JetStream cluster (tests/jetstream.py), all on free 127.0.0.1 ports under one folder.
Every canvoy process gets its own process group, so that a SIGKILL takes it down with its
children at once (``canvoy broker`` runs Mosquitto as a child; a bridge runs verifying workers):
a crash, never a clean stop.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives.asymmetric import ec

from canvoy.agent.outbox import Outbox, OutboxConfig
from canvoy.wire.envelope import BOOT_ID_BYTES
from tests.conftest import free_port
from tests.jetstream import NatsCluster, listening

REPO = Path(__file__).resolve().parents[1]
DEVICE = "car-1"
STREAM = "CANVOY"
BRIDGES = ("b1", "b2")
DATABASES = ("demo_vehicle.dbc", "demo_vehicle_hv.dbc")
# Every envelope the agent commits is also noted here, in the same transaction (a trigger): the
# record of what was sealed survives any SIGKILL exactly as the envelope does.
SEALED_LOG = """
CREATE TABLE IF NOT EXISTS chaos_sealed (
    id INTEGER PRIMARY KEY, seq INTEGER NOT NULL, kind TEXT NOT NULL,
    created_ms INTEGER NOT NULL, head BLOB NOT NULL
);
CREATE TRIGGER IF NOT EXISTS chaos_sealed_note AFTER INSERT ON outbox BEGIN
    INSERT INTO chaos_sealed (seq, kind, created_ms, head)
    VALUES (NEW.seq, NEW.kind, NEW.created_ms, substr(NEW.payload, 1, 160));
END;
"""


class StartError(RuntimeError):
    """A process of the run did not come up."""


def canvoy(*args: str, cwd: Path) -> None:
    """Run one ``canvoy`` command to completion.

    Raises:
        StartError: it failed (its output is in the message).
    """
    done = subprocess.run(
        [sys.executable, "-m", "canvoy", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise StartError(f"canvoy {' '.join(args)}: {done.stderr.strip() or done.stdout}")


def wait_until(condition: Any, timeout_s: float, what: str) -> None:
    """Poll ``condition`` until it is true.

    Raises:
        StartError: it is still false after ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise StartError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


@dataclass
class Fleet:
    """Every process of one chaos run and the files they write."""

    folder: Path
    speed: str = "x20"
    drive_s: int = 600
    seed: int = 0
    broker_port: int = field(default_factory=free_port)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.nats = NatsCluster(self.folder / "nats")
        self.outbox = self.folder / "outbox.sqlite"
        self.agent_config = self.folder / "agent.yaml"

    # -- set-up ----------------------------------------------------------------------------

    def prepare(self) -> None:
        """The PKI, the drive, the databases, the configs and the noted outbox.

        Raises:
            StartError: a ``canvoy`` command failed.
        """
        here = self.folder
        canvoy("certs", "init", "--certs", "pki", cwd=here)
        canvoy("certs", "issue", "--certs", "pki", "broker", "--host", "127.0.0.1", cwd=here)
        canvoy("certs", "issue", "--certs", "pki", "device", DEVICE, cwd=here)
        for name in BRIDGES:
            canvoy("certs", "issue", "--certs", "pki", "bridge", name, cwd=here)
        canvoy("dbc", "copy", *DATABASES, "-o", ".", cwd=here)
        canvoy(
            "sim",
            "record",
            "--scenario",
            "overheat",  # a fan failure: events (P0217) travel with the telemetry
            "--seed",
            str(self.seed),
            "--duration",
            str(self.drive_s),
            "-o",
            "drive.blf",
            cwd=here,
        )
        broker = f"127.0.0.1:{self.broker_port}"
        dbcs = [arg for name in DATABASES for arg in ("--dbc", name)]
        canvoy(
            "agent",
            "init",
            "--device",
            DEVICE,
            "--certs",
            "pki",
            "--broker",
            broker,
            *dbcs,
            "--replay",
            "drive.blf",
            "--speed",
            self.speed,
            "--outbox",
            "outbox.sqlite",
            "-o",
            "agent.yaml",
            cwd=here,
        )
        self._edit(self.agent_config, self._agent_options)
        for name in BRIDGES:
            config = here / f"{name}.yaml"
            canvoy(
                "bridge",
                "init",
                "--certs",
                "pki",
                "--identity",
                f"bridge/{name}",
                "--broker",
                broker,
                "--jsonl",
                f"{name}.jsonl",
                "--nats",
                self.nats.urls[0],
                "--no-fleet",
                "-o",
                config.name,
                cwd=here,
            )
            self._edit(config, lambda c, n=name: self._bridge_options(c, n))
        self._note_sealed()

    @staticmethod
    def _agent_options(config: dict[str, Any]) -> None:
        config["mqtt"].update(reconnect_max_s=5.0)
        config["batch"].update(max_interval_s=0.2)  # many envelopes in a short life

    def _bridge_options(self, config: dict[str, Any], name: str) -> None:
        config["status_file"] = f"status-{name}.json"
        config["sinks"]["stream"].update(url=self.nats.urls, replicas=3, timeout_s=5.0)

    @staticmethod
    def _edit(path: Path, change: Any) -> None:
        config = yaml.safe_load(path.read_text())
        change(config)
        path.write_text(yaml.safe_dump(config, sort_keys=False))

    def _note_sealed(self) -> None:
        """Create the agent's outbox with its own code, then add the sealing note to it."""
        key = ec.generate_private_key(ec.SECP256R1())
        Outbox(
            OutboxConfig(path=self.outbox), device=DEVICE, boot=os.urandom(BOOT_ID_BYTES), key=key
        ).close()
        db = sqlite3.connect(self.outbox)
        try:
            db.executescript(SEALED_LOG)
        finally:
            db.close()

    # -- processes -------------------------------------------------------------------------

    def _spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        with (self.folder / f"{name}.log").open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "canvoy", *args],
                cwd=self.folder,
                stdout=out,
                stderr=out,
                start_new_session=True,  # its own process group: SIGKILL reaches its children
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self.procs[name] = proc
        return proc

    def kill(self, name: str) -> None:
        """SIGKILL the process group of ``name`` (nothing if it is not running)."""
        proc = self.procs.get(name)
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)

    def running(self, name: str) -> bool:
        """True while ``name`` runs."""
        proc = self.procs.get(name)
        return proc is not None and proc.poll() is None

    def start_broker(self) -> None:
        """``canvoy broker`` on its port, waiting until it listens.

        Raises:
            StartError: it did not listen within 30 s.
        """
        self._spawn("broker", "broker", "--certs", "pki", "--port", str(self.broker_port))
        wait_until(lambda: listening(self.broker_port) or not self.running("broker"), 30, "broker")
        if not self.running("broker"):
            raise StartError(f"canvoy broker exited: see {self.folder / 'broker.log'}")

    def start_bridge(self, name: str) -> None:
        """``canvoy bridge run`` for ``name``."""
        (self.folder / f"status-{name}.json").unlink(missing_ok=True)
        self._spawn(name, "bridge", "run", "--config", f"{name}.yaml")

    def bridge_connected(self, name: str) -> bool:
        """True once the bridge's status file says it is connected."""
        try:
            status = json.loads((self.folder / f"status-{name}.json").read_text())
            return bool(status["connected"])
        except (OSError, ValueError, KeyError):
            return False

    def start_agent(self, *more: str) -> subprocess.Popen[bytes]:
        """``canvoy agent run`` replaying the drive."""
        return self._spawn("agent", "agent", "run", "--config", "agent.yaml", *more)

    def start_all(self) -> None:
        """The cluster, the broker and both bridges, each ready.

        Raises:
            StartError: a process did not come up (see its log in the run's folder).
        """
        try:
            self.nats.start()
        except TimeoutError as exc:
            raise StartError(str(exc)) from exc
        self.start_broker()
        for name in BRIDGES:
            self.start_bridge(name)
        for name in BRIDGES:
            wait_until(lambda n=name: self.bridge_connected(n), 60, f"bridge {name}")

    def stop_all(self) -> None:
        """SIGTERM every canvoy process (the bridges finish their sinks), then the cluster."""
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for name in list(self.procs):
            try:
                self.procs[name].wait(30)
            except subprocess.TimeoutExpired:
                self.kill(name)
        self.nats.stop()
