"""What metrics cost the agent: a full-speed replay with and without a scraper, in one run.

Run: python bench/metrics.py [--seconds S] [--rounds N] [--every S]. Replays a drive of S
seconds (candump format, at full speed, through a real Mosquitto) N times with metrics on and
nobody scraping, and N times with a scraper fetching /metrics every ``--every`` seconds
(Prometheus' default is 15 s; the default here, 0.5 s, exaggerates 30-fold). Prints frames/s of
each run (the agent's own "replay ... ended" line), their medians, the ratio, and the mean time
of one scrape.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.venv import reexec_in_venv

reexec_in_venv()

import httpx

from canvoy.broker.config import BrokerSettings
from canvoy.broker.process import Broker
from canvoy.certs import pki
from tests.conftest import free_port

AGENT_RUN = (sys.executable, "-m", "canvoy", "agent", "run")
RATE = re.compile(r"ended: ([\d,]+) frames in ([\d.]+) s")


def _config(root: Path, port: int, metrics: int, log: Path) -> Path:
    folder = pki.identity_dir(root / "pki", "device", "car-1")
    config = root / "agent.yaml"
    config.write_text(
        f"""device: car-1
tls: {{ca: "{pki.ca_cert_path(root / "pki")}", cert: "{folder / "cert.pem"}",
       key: "{folder / "key.pem"}"}}
buses: [{{name: pt, databases: ["{root / "demo_vehicle.dbc"}"], replay: "{log}"}}]
outbox: {{path: "{root / "outbox.sqlite"}"}}
mqtt: {{host: 127.0.0.1, port: {port}}}
metrics: {{enabled: true, port: {metrics}}}
"""
    )
    return config


def _run(config: Path, metrics: int, every_s: float | None) -> tuple[float, list[float]]:
    """One replay: frames/s, and the seconds of each scrape made meanwhile."""
    for old in config.parent.glob("outbox.sqlite*"):
        old.unlink()
    proc = subprocess.Popen(
        [*AGENT_RUN, "--config", str(config), "--exit-when-done"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    scrapes: list[float] = []

    def scrape() -> None:
        while every_s is not None and proc.poll() is None:
            started = time.perf_counter()
            try:
                httpx.get(f"http://127.0.0.1:{metrics}/metrics", timeout=5).raise_for_status()
                scrapes.append(time.perf_counter() - started)
            except httpx.HTTPError:
                pass  # not listening yet, or gone
            time.sleep(every_s)

    scraper = threading.Thread(target=scrape, daemon=True)
    scraper.start()
    out, _ = proc.communicate(timeout=600)
    scraper.join()
    found = RATE.search(out)
    if found is None:
        raise SystemExit(f"no replay line in the agent's output:\n{out[-2000:]}")
    frames, seconds = int(found.group(1).replace(",", "")), float(found.group(2))
    return frames / seconds, scrapes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=600, help="drive length")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--every", type=float, default=0.5, help="seconds between scrapes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pki.init_ca(root / "pki")
        pki.issue(root / "pki", "broker", "broker", hosts=["127.0.0.1"])
        pki.issue(root / "pki", "device", "car-1")
        canvoy = [sys.executable, "-m", "canvoy"]
        subprocess.run([*canvoy, "dbc", "copy", "demo_vehicle.dbc", "-o", tmp], check=True)
        log = root / "drive.log"
        record = [*canvoy, "sim", "record", "-o", str(log), "--dbc", str(root / "demo_vehicle.dbc")]
        subprocess.run([*record, "--duration", str(args.seconds)], check=True)
        port, metrics = free_port(), free_port()
        broker = Broker(BrokerSettings(certs=root / "pki", port=port, data=root / "broker"))
        with (root / "mosquitto.log").open("wb") as broker_log:
            broker.start(log=broker_log)
            try:
                config = _config(root, port, metrics, log)
                quiet, scraped, times = [], [], []
                for _ in range(args.rounds):  # alternated: the machine's load hits both alike
                    quiet.append(_run(config, metrics, None)[0])
                    rate, scrapes = _run(config, metrics, args.every)
                    scraped.append(rate)
                    times += scrapes
            finally:
                broker.stop()
    print(f"replay at full speed, {args.seconds} s drive, {args.rounds} rounds")
    print(f"  no scraper       {', '.join(f'{r:,.0f}' for r in quiet)} frames/s")
    print(f"  scrape every {args.every:g} s {', '.join(f'{r:,.0f}' for r in scraped)} frames/s")
    ratio = statistics.median(scraped) / statistics.median(quiet)
    print(f"  median ratio     {ratio:.3f} (scraped / not scraped)")
    if times:
        print(
            f"  one scrape       {statistics.mean(times) * 1000:.1f} ms mean, {len(times)} scrapes"
        )


if __name__ == "__main__":
    main()
