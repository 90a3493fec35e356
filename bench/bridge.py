"""Bridge throughput: verified envelopes/s and signal samples/s of one bridge process.

Run: python bench/bridge.py [--devices N] [--envelopes N]. A simulated fleet publishes signed
telemetry batches (one second of 20 signals each) while the bridge is stopped, so they wait in
its persistent session; then the bridge starts and the time from its first to its last
forwarded envelope (jsonl sink, fsync per batch) is measured.

The last line is a worst-case authentic stream: every envelope holds as many samples as the
protocol's bounds allow (``body.MAX_SAMPLES``, in a payload under 128 KiB), so each becomes the
largest JSON record a valid message can; it prints envelopes/s and the bridge's peak RSS (main
process and verify workers together).
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.venv import reexec_in_venv

reexec_in_venv()


from canvoy.broker.config import BrokerSettings
from canvoy.broker.process import Broker
from canvoy.certs import pki
from canvoy.simulator.fleet import VirtualDevice, drive_series
from canvoy.transport.mqtt import Connection
from canvoy.wire import body
from canvoy.wire.envelope import unpack

REPO = Path(__file__).resolve().parents[1]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bridge_yaml(root: Path, certs: Path, port: int, workers: int | None) -> Path:
    folder = pki.identity_dir(certs, "bridge", "bench")
    config = root / "bridge.yaml"
    config.write_text(
        json.dumps(
            {
                "name": "bench",
                "tls": {
                    "ca": str(pki.ca_cert_path(certs)),
                    "cert": str(folder / "cert.pem"),
                    "key": str(folder / "key.pem"),
                },
                "broker": {"host": "127.0.0.1", "port": port},
                "receipts": False,
                "verify_workers": workers,
                "quarantine": str(root / "quarantine.jsonl"),
                "status_file": str(root / "status.json"),
                "sinks": {
                    "files": {
                        "type": "jsonl",
                        "path": str(root / "out.jsonl"),
                        "max_bytes": 1 << 40,
                    }
                },
                "routes": {"telemetry": ["files"], "events": ["files"]},
            }
        )
    )
    return config


def _status(root: Path) -> dict[str, int]:
    try:
        counts: dict[str, int] = json.loads((root / "status.json").read_text())["counts"]
        return counts
    except (OSError, ValueError, KeyError):
        return {}


def _lines(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open("rb") as f:
        return sum(1 for _ in f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--envelopes", type=int, default=10_000)
    parser.add_argument("--workers", type=int, help="verify_workers (default: the bridge's)")
    parser.add_argument(
        "--signals",
        type=int,
        nargs="+",
        default=[1, 5, 20],
        help="signals per simulated vehicle (10 ms to 1 s cycles); one run per value",
    )
    parser.add_argument("--worst", type=int, default=500, help="envelopes in the worst-case stream")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="canvoy-bench-bridge-") as tmp:
        root = Path(tmp)
        certs = root / "pki"
        pki.init_ca(certs)
        pki.issue(certs, "broker", "broker", hosts=["127.0.0.1"])
        pki.issue(certs, "bridge", "bench")
        names = [f"veh-{i:04}" for i in range(args.devices)]
        for name in names:
            pki.issue(certs, "device", name)
        port = _port()
        broker = Broker(BrokerSettings(certs=certs, port=port, data=root / "broker"))
        with (root / "mosquitto.log").open("wb") as broker_log:
            broker.start(log=broker_log)
            try:
                for signals in args.signals:
                    _run(
                        root / f"s{signals}",
                        certs,
                        port,
                        names=names,
                        total=args.envelopes,
                        signals=signals,
                        workers=args.workers,
                    )
                _run(
                    root / "worst",
                    certs,
                    port,
                    names=names,
                    total=args.worst,
                    signals=0,
                    workers=args.workers,
                    make=_worst,
                )
            finally:
                broker.stop()


def _worst(dev: VirtualDevice, i: int) -> bytes:
    """As many samples as the bounds allow: 64 series of 1,024 values, 100 Hz, 4 bits of noise."""
    rng = random.Random(i)
    per = body.MAX_SAMPLES // 64
    columns: dict[str, tuple[list[int], list[body.Scalar]]] = {}
    for s in range(64):
        t = 1_700_000_000_000 + i * 10_000
        times = [t + k * 10 for k in range(per)]
        columns[f"pt/WORST/S{s}"] = (times, [rng.randint(0, 15) for _ in range(per)])
    payload = dev.seal("telemetry", body.telemetry_content(dev.policy, columns))
    assert len(payload) <= 128 * 1024, len(payload)
    return payload


def _peak_rss_mb(pid: int) -> tuple[float, float]:
    """VmHWM of ``pid`` and of its children (the verify workers) together, in MB."""
    main = workers = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(entry.name) != pid and int(stat[1]) != pid:
                continue
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    kib = int(line.split()[1])
                    if int(entry.name) == pid:
                        main += kib
                    else:
                        workers += kib
        except OSError:
            continue
    return main / 1024, workers / 1024


def _run(
    root: Path,
    certs: Path,
    port: int,
    *,
    names: list[str],
    total: int,
    signals: int,
    workers: int | None,
    make: Callable[[VirtualDevice, int], bytes] | None = None,
) -> None:
    root.mkdir()
    config = _bridge_yaml(root, certs, port, workers)
    cmd = [sys.executable, "-m", "canvoy", "bridge", "run", "--config", str(config)]
    log = (root / "bridge.log").open("ab")
    first = subprocess.Popen(cmd, stdout=log, stderr=log, cwd=REPO)
    while not _status(root).get("connects"):
        time.sleep(0.05)
    first.terminate()
    first.wait(30)  # the session (and its subscriptions) stays on the broker
    per_device = total // len(names)
    start = time.perf_counter()
    samples = 0
    payloads: list[tuple[VirtualDevice, list[bytes]]] = []
    for name in names:
        dev = VirtualDevice.from_pki(certs, name)
        batch = [
            make(dev, i) if make else dev.telemetry(drive_series(1_700_000_000 + i, 1.0, signals))
            for i in range(per_device)
        ]
        payloads.append((dev, batch))
    e = unpack(payloads[0][1][0]).envelope
    samples_per = body.parse_telemetry(body.decode(e.encoding, e.body)).samples
    print(
        f"signed {per_device * len(names):,} envelopes of {samples_per} samples "
        f"({len(payloads[0][1][0]):,} bytes each) for {len(names)} devices "
        f"in {time.perf_counter() - start:.1f} s",
        flush=True,
    )
    for dev, batch in payloads:
        conn = Connection(
            client_id=dev.device, tls=pki.tls_files(certs, "device", dev.device).context()
        )
        conn.connect("127.0.0.1", port)
        conn.publish(dev.topic("status"), dev.birth(), retain=True).result(10)
        futures = [conn.publish(dev.topic("telemetry"), p) for p in batch]
        for fut in futures:
            fut.result(60)
        conn.close()
        samples += samples_per * len(batch)
    expected = per_device * len(names)
    out = root / "out.jsonl"
    proc = subprocess.Popen(cmd, stdout=log, stderr=log, cwd=REPO)
    try:
        while _lines(out) == 0:
            time.sleep(0.005)
        t0 = time.perf_counter()
        seen = _lines(out)
        while seen < expected:
            time.sleep(0.05)
            seen = _lines(out)
        seconds = time.perf_counter() - t0
        rss = _peak_rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)
    counts = _status(root)
    rate = (expected - 1) / seconds
    if make is not None:
        print(
            f"worst case ({samples_per:,} samples per envelope, the protocol's bound): "
            f"{rate:,.0f} verified envelopes/s, {rate * samples_per:,.0f} samples/s, "
            f"bridge peak RSS {sum(rss):,.0f} MB (main {rss[0]:,.0f}, workers {rss[1]:,.0f}; "
            f"{expected:,} envelopes in {seconds:.1f} s)"
        )
        return
    print(
        f"{signals} signals/vehicle, one bridge process: {rate:,.0f} verified envelopes/s, "
        f"{rate * samples_per:,.0f} signal samples/s "
        f"({expected:,} envelopes in {seconds:.1f} s; jsonl sink, fsync per batch)"
    )
    print(f"bridge counters: {json.dumps(counts)}", flush=True)


if __name__ == "__main__":
    main()
