"""End to end: a 1,000,000-frame log through agent -> Mosquitto (mutual TLS) -> a verifier,
against a naive script that publishes one JSON message per decoded frame at QoS 1.

Run: python bench/pipeline.py [--frames N] [--skip-baseline]. Prints, for both pipelines,
frames/s from the first frame read to the last message received, bytes on the wire per signal
sample, and the publisher's peak RSS; and, in the same run, the frames/s of the bare
``can.LogReader`` + ``decode_message`` loop over the same log, run as its own process and timed
the same way (process start to last frame), with the agent's rates as ratios of it. The agent
runs twice: with ``delivery: bridge`` (the default: its outbox keeps each envelope until a
bridge, running throughout, confirms it) and with ``delivery: broker`` (rows leave at PUBACK).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.venv import reexec_in_venv

reexec_in_venv()


import can
import paho.mqtt.client as paho
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import load_pem_x509_certificate
from paho.mqtt.enums import CallbackAPIVersion

from bench.realdbc import CACHE, load, make_log, opendbc_file
from canvoy.agent.outbox import open_status
from canvoy.broker.config import BrokerSettings
from canvoy.broker.process import Broker
from canvoy.certs import pki
from canvoy.wire import body
from canvoy.wire.envelope import unpack, verify

REPO = Path(__file__).resolve().parents[1]
AGENT, NAIVE, SUBSCRIBER, BRIDGE = "bench-agent", "bench-naive", "bench-sub", "bench-bridge"
TLS_RECORD_BYTES = 22  # TLS 1.3 AES-GCM: 5 header + 1 content type + 16 tag
PUBACK_BYTES = 4
MAX_QUEUED = 10_000


def wire_bytes(topic: str, payload: int) -> int:
    """Bytes one QoS 1 PUBLISH and its PUBACK put on the wire, TLS records included."""
    remaining = 2 + len(topic.encode()) + 2 + 1 + payload  # topic, packet id, no properties
    length_bytes = 1 if remaining < 128 else 2 if remaining < 16384 else 3
    return 1 + length_bytes + remaining + PUBACK_BYTES + 2 * TLS_RECORD_BYTES


def _client(certs: Path, kind: pki.IdentityKind, name: str) -> paho.Client:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=paho.MQTTv5)
    client.tls_set_context(pki.tls_files(certs, kind, name).context())
    return client


# -- the subscriber process -------------------------------------------------------------------


def subscribe(certs: Path, port: int, device: str, mode: str, work: Path) -> None:
    """Count (and for envelopes verify) everything on ``device``'s telemetry topic."""
    cert = pki.identity_dir(certs, "device", device) / "cert.pem"
    key = load_pem_x509_certificate(cert.read_bytes()).public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    stats = {"messages": 0, "wire_bytes": 0, "samples": 0, "bad": 0, "last": 0.0}

    def on_message(_c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        payload = bytes(msg.payload)
        try:
            if mode == "envelope":
                e = verify(unpack(payload), key)
                stats["samples"] += body.parse_telemetry(body.decode(e.encoding, e.body)).samples
            else:
                stats["samples"] += len(json.loads(payload)["signals"])
        except Exception:
            stats["bad"] += 1
        stats["messages"] += 1
        stats["wire_bytes"] += wire_bytes(msg.topic, len(payload))
        stats["last"] = time.time()

    client = _client(certs, "operator", SUBSCRIBER)
    client.on_message = on_message
    client.on_connect = lambda c, *_a: c.subscribe(f"canvoy/v1/{device}/telemetry", qos=1)
    client.connect("127.0.0.1", port)
    client.loop_start()
    while stats["messages"] == 0 and not (work / "expected").exists():
        time.sleep(0.01)
        (work / "ready").touch()
    while not (work / "expected").exists():
        time.sleep(0.05)
    expected = int((work / "expected").read_text())
    deadline = time.time() + 600
    while stats["messages"] < expected and time.time() < deadline:
        time.sleep(0.02)
    client.disconnect()
    client.loop_stop()
    (work / "result.json").write_text(json.dumps(stats))


# -- the naive baseline (its own process, so its RSS is its own) ------------------------------


def naive(certs: Path, port: int, log: Path, dbc: Path, work: Path) -> None:
    """What most CAN-to-MQTT scripts do: decode each frame, publish it as JSON at QoS 1."""
    db = load(dbc)
    acked = 0

    def on_publish(*_a: Any) -> None:
        nonlocal acked
        acked += 1

    client = _client(certs, "device", NAIVE)
    client.on_publish = on_publish
    client.connect("127.0.0.1", port)
    client.loop_start()
    topic = f"canvoy/v1/{NAIVE}/telemetry"
    published = samples = 0
    for msg in can.LogReader(str(log)):
        try:
            message = db.get_message_by_frame_id(msg.arbitration_id)
            signals = message.decode(msg.data, decode_choices=False)  # type: ignore[arg-type]
        except Exception:
            continue
        payload = json.dumps({"t": msg.timestamp, "name": message.name, "signals": signals})
        client.publish(topic, payload, qos=1)
        published += 1
        while published - acked > MAX_QUEUED:  # paho's 16-bit message ids must not wrap
            time.sleep(0.001)
        samples += len(signals)
    while acked < published:
        time.sleep(0.01)
    client.disconnect()
    client.loop_stop()
    (work / "naive.json").write_text(json.dumps({"published": published, "samples": samples}))


# -- the driver --------------------------------------------------------------------------------


@dataclass
class Result:
    """One pipeline's figures."""

    name: str
    frames: int
    seconds: float
    messages: int
    wire_bytes: int
    input_samples: int
    delivered_samples: int
    rss_mb: float
    bad: int
    ingest: float = 0.0  # frames/s of the agent's replay thread, from its log

    def show(self) -> None:
        print(f"{self.name}")
        print(
            f"  frames/s end to end   {self.frames / self.seconds:>12,.0f}  "
            f"({self.frames:,} frames in {self.seconds:.1f} s)"
        )
        print(f"  messages              {self.messages:>12,}  ({self.bad} failed to verify)")
        print(f"  wire bytes            {self.wire_bytes:>12,}")
        print(
            f"  bytes/sample (input)  {self.wire_bytes / self.input_samples:>12.3f}  "
            f"({self.input_samples:,} signal values read from the bus)"
        )
        if self.delivered_samples != self.input_samples:
            print(
                f"  bytes/sample (sent)   {self.wire_bytes / self.delivered_samples:>12.3f}  "
                f"({self.delivered_samples:,} samples the policy reported)"
            )
        print(f"  publisher peak RSS    {self.rss_mb:>12.1f} MB")


def _run_measured(cmd: list[str], log: Path) -> tuple[int, float]:
    """Run ``cmd``; return its exit status and peak RSS in MB.

    The peak is the child's own ``VmHWM``, read while it runs: ``ru_maxrss`` from ``wait4``
    also counts this benchmark's own pages, which a forked child holds until it executes.
    """
    peak_kb = 0
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=out, cwd=REPO)
        status_file = Path(f"/proc/{proc.pid}/status")
        while True:
            pid, status, _usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            try:
                found = re.search(r"^VmHWM:\s+(\d+) kB", status_file.read_text(), re.MULTILINE)
            except OSError:
                found = None  # it is exiting
            if found:
                peak_kb = max(peak_kb, int(found.group(1)))
            time.sleep(0.02)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"{cmd[:4]} failed ({proc.returncode}); see {log}")
    return proc.returncode, peak_kb / 1024


def _pipeline(
    name: str,
    work: Path,
    *,
    certs: Path,
    port: int,
    device: str,
    mode: str,
    cmd: list[str],
    expected: Any,
) -> tuple[dict[str, Any], float, float]:
    work.mkdir()
    sub = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--subscribe",
            mode,
            "--certs",
            str(certs),
            "--port",
            str(port),
            "--device",
            device,
            "--work",
            str(work),
        ],
        cwd=REPO,
    )
    while not (work / "ready").exists():
        time.sleep(0.01)
    start = time.time()
    _code, rss = _run_measured(cmd, work / f"{name}.log")
    (work / "expected").write_text(str(expected()))
    sub.wait(700)
    stats: dict[str, Any] = json.loads((work / "result.json").read_text())
    return stats, stats["last"] - start, rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=1_000_000)
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--subscribe", choices=("envelope", "json"), help=argparse.SUPPRESS)
    parser.add_argument("--naive", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--bare", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--certs", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--device", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.subscribe:
        subscribe(args.certs, args.port, args.device, args.subscribe, args.work)
        return
    dbc = opendbc_file()
    if args.naive:
        naive(args.certs, args.port, args.naive, dbc, args.work)
        return
    if args.bare:
        bare_loop(args.bare, dbc, args.work)
        return
    log = make_log(load(dbc), CACHE / f"vw_mqb_{args.frames}.blf", args.frames)
    print(f"log {log.name}: {args.frames:,} frames of {dbc.name}")
    with tempfile.TemporaryDirectory(prefix="canvoy-bench-") as tmp:
        root = Path(tmp)
        certs = root / "pki"
        pki.init_ca(certs)
        pki.issue(certs, "broker", "broker", hosts=["127.0.0.1"])
        identities: list[tuple[pki.IdentityKind, str]] = [
            ("device", AGENT),
            ("device", NAIVE),
            ("operator", SUBSCRIBER),
            ("bridge", BRIDGE),
        ]
        for kind, name in identities:
            pki.issue(certs, kind, name)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        # Saving rarely, as the broker did before it saved on every change: otherwise each of
        # the baseline's 1,000,000 publishes rewrites Mosquitto's database (PERFORMANCE.md).
        broker = Broker(
            BrokerSettings(certs=certs, port=port, data=root / "broker", autosave_changes=10**6)
        )
        with (root / "mosquitto.log").open("wb") as broker_log:
            broker.start(log=broker_log)
            try:
                # The bare loop runs just before and just after the agent; the mean of the two
                # is the reference, so that a change of machine load in between evens out.
                before = _bare(root / "bare-before", log, dbc)
                with _bridge(root, certs, port):  # confirms for the agent; gone for the baseline
                    # The agent once per delivery mode; the first one, bridge, is the default.
                    results = [
                        _agent(root, certs, port, log=log, dbc=dbc, frames=args.frames, delivery=d)
                        for d in ("bridge", "broker")
                    ]
                after = _bare(root / "bare-after", log, dbc)
                bare_s, loop_rate = (before[0] + after[0]) / 2, (before[1] + after[1]) / 2
                if not args.skip_baseline:
                    results.append(_naive(root, certs, port, log, args.frames))
            finally:
                broker.stop()
    for result in results:
        result.show()
    _compare(results[0], args.frames, bare_s, loop_rate)
    if not args.skip_baseline:
        a, b = results[0], results[-1]
        ratio = (b.wire_bytes / b.input_samples) / (a.wire_bytes / a.input_samples)
        print(f"the agent sends {ratio:.0f}x fewer bytes per signal value than the baseline")


def _compare(agent: Result, frames: int, bare_s: float, loop_rate: float) -> None:
    """Print the bare loop's figures and the agent's rates as ratios of them."""
    bare = frames / bare_s
    e2e = agent.frames / agent.seconds
    print(
        "bare loop (can.LogReader + db.decode_message, its own process, no output; the mean of "
        "a run just before and one just after the agent)"
    )
    print(
        f"  frames/s              {bare:>12,.0f}  ({frames:,} frames in {bare_s:.1f} s "
        "from process start, imports and database load included)"
    )
    print(f"  frames/s, loop alone  {loop_rate:>12,.0f}  (its first to its last frame)")
    print(
        f"the agent end to end (sealing thread, outbox, broker, verifier included) runs at "
        f"{e2e / bare:.2f}x the bare loop, both from process start ({e2e / loop_rate:.2f}x the "
        "loop alone)"
    )
    if agent.ingest:
        print(
            f"the agent's replay (frames read, collected and queued, sealing thread running) ran "
            f"at {agent.ingest:,.0f} frames/s: {agent.ingest / loop_rate:.2f}x the loop alone"
        )


@contextmanager
def _bridge(root: Path, certs: Path, port: int) -> Iterator[None]:
    """A bridge without sinks, running meanwhile: it verifies and confirms every envelope."""
    folder = pki.identity_dir(certs, "bridge", BRIDGE)
    status, config = root / "bridge-status.json", root / "bridge.yaml"
    files = {k: str(folder / f"{k}.pem") for k in ("cert", "key")}
    config.write_text(
        json.dumps(
            {
                "name": BRIDGE,
                "tls": {"ca": str(pki.ca_cert_path(certs)), **files},
                "broker": {"host": "127.0.0.1", "port": port},
                "quarantine": str(root / "quarantine.jsonl"),
                "status_file": str(status),
            }
        )
    )
    with (root / "bridge.log").open("wb") as out:
        cmd = [sys.executable, "-m", "canvoy", "bridge", "run", "--config", str(config)]
        proc = subprocess.Popen(cmd, stdout=out, stderr=out, cwd=REPO)
    while not (status.exists() and json.loads(status.read_text())["connected"]):
        if proc.poll() is not None:
            sys.exit(f"the bridge failed; see {root / 'bridge.log'}")
        time.sleep(0.05)
    try:
        yield
    finally:
        proc.terminate()
        proc.wait(30)


def _agent(
    root: Path, certs: Path, port: int, *, log: Path, dbc: Path, frames: int, delivery: str
) -> Result:
    folder = pki.identity_dir(certs, "device", AGENT)
    outbox = root / f"agent-{delivery}-outbox.sqlite"
    config = root / f"agent-{delivery}.yaml"
    config.write_text(
        json.dumps(
            {
                "device": AGENT,
                "tls": {
                    "ca": str(pki.ca_cert_path(certs)),
                    "cert": str(folder / "cert.pem"),
                    "key": str(folder / "key.pem"),
                },
                "buses": [{"name": "pt", "databases": [str(dbc)], "replay": str(log)}],
                "outbox": {"path": str(outbox)},
                "mqtt": {"host": "127.0.0.1", "port": port},
                "delivery": delivery,
                "shutdown_timeout_s": 600,
            }
        )
    )
    cmd = [
        sys.executable,
        "-m",
        "canvoy",
        "-v",
        "agent",
        "run",
        "--config",
        str(config),
        "--exit-when-done",
    ]

    def expected() -> int:
        return open_status(outbox).counters["next_seq"] - 1

    stats, seconds, rss = _pipeline(
        "agent",
        root / f"agent-{delivery}",
        certs=certs,
        port=port,
        device=AGENT,
        mode="envelope",
        cmd=cmd,
        expected=expected,
    )
    input_samples = _input_samples(log, dbc)
    found = re.search(
        r"replay of .* ended: .* \(([0-9.]+) frames/s\)",
        (root / f"agent-{delivery}" / "agent.log").read_text(),
    )
    return Result(
        f"canvoy agent, delivery: {delivery} (batched, signed, zstd, outbox)",
        frames,
        seconds,
        stats["messages"],
        stats["wire_bytes"],
        input_samples,
        stats["samples"],
        rss,
        stats["bad"],
        float(found.group(1)) if found else 0.0,
    )


def _naive(root: Path, certs: Path, port: int, log: Path, frames: int) -> Result:
    work = root / "naive"
    cmd = [
        sys.executable,
        __file__,
        "--naive",
        str(log),
        "--certs",
        str(certs),
        "--port",
        str(port),
        "--work",
        str(work),
    ]

    def expected() -> int:
        return int(json.loads((work / "naive.json").read_text())["published"])

    stats, seconds, rss = _pipeline(
        "naive",
        work,
        certs=certs,
        port=port,
        device=NAIVE,
        mode="json",
        cmd=cmd,
        expected=expected,
    )
    return Result(
        "naive baseline (cantools + one JSON publish per frame, QoS 1)",
        frames,
        seconds,
        stats["messages"],
        stats["wire_bytes"],
        stats["samples"],
        stats["samples"],
        rss,
        stats["bad"],
    )


def bare_loop(log: Path, dbc: Path, work: Path) -> None:
    """The bare loop: every frame of ``log`` read and decoded, nothing else (its own process)."""
    db = load(dbc)
    started = time.perf_counter()
    frames = 0
    for msg in can.LogReader(str(log)):
        frames += 1
        try:
            db.decode_message(msg.arbitration_id, bytes(msg.data), decode_choices=False)
        except Exception:  # an unknown id or a short frame, as in any real log
            continue
    seconds = time.perf_counter() - started
    (work / "bare.json").write_text(json.dumps({"frames": frames, "loop_s": seconds}))


def _bare(root: Path, log: Path, dbc: Path) -> tuple[float, float]:
    """Run the bare loop as a process working in ``root``; return its seconds from process
    start to exit, and the frames/s of the loop alone."""
    work = root
    work.mkdir()
    started = time.time()
    cmd = [sys.executable, __file__, "--bare", str(log), "--work", str(work)]
    _run_measured(cmd, work / "bare.log")
    seconds = time.time() - started
    result = json.loads((work / "bare.json").read_text())
    return seconds, result["frames"] / result["loop_s"]


def _input_samples(log: Path, dbc: Path) -> int:
    """Signal values in the log's decodable frames: what the baseline sends one by one."""
    cached = log.with_suffix(".samples")
    if cached.exists():
        return int(cached.read_text())
    db = load(dbc)
    counts = {m.frame_id: len(m.signals) for m in db.messages}
    total = 0
    for msg in can.LogReader(str(log)):
        message = db.get_message_by_frame_id(msg.arbitration_id)
        # Multiplexed messages carry only one page's signals per frame.
        if message.is_multiplexed():
            total += len(message.decode(bytes(msg.data), decode_choices=False))
        else:
            total += counts[msg.arbitration_id]
    cached.write_text(str(total))
    return total


if __name__ == "__main__":
    main()
