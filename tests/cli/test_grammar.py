"""One command-line grammar: examples and help everywhere, one spelling per concept, options
after the subcommand, documented exit codes, JSON logs."""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import canvoy.errors
import canvoy.wire.errors
from canvoy.cli import EXIT_FAILURE, EXIT_USAGE, build_parser, exit_code
from canvoy.commands.options import DEFAULT_PORT, parse_broker
from canvoy.errors import CanvoyError, ConfigError
from canvoy.logs import JsonFormatter, level_for
from tests.agentkit import REPO, TEST_DBC
from tests.conftest import free_port


def _parsers(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser, bool]]:
    """(command path, parser, is a leaf) for every level of the CLI."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    yield path, parser, not subs
    for action in subs:
        for name, child in action.choices.items():
            yield from _parsers(child, (*path, name))


PARSERS = list(_parsers(build_parser()))
LEAVES = [(" ".join(p), parser) for p, parser, leaf in PARSERS if leaf]


def test_the_walk_sees_every_subcommand() -> None:
    names = {name for name, _p in LEAVES}
    assert {"decode", "tail", "agent init", "agent run", "bridge init", "certs issue"} <= names
    assert len(LEAVES) >= 24


@pytest.mark.parametrize(("name", "parser"), LEAVES, ids=[n for n, _p in LEAVES])
def test_every_subcommand_has_an_example_and_help_for_every_option(
    name: str, parser: argparse.ArgumentParser
) -> None:
    assert parser.epilog and "example" in parser.epilog, f"canvoy {name}: no example"
    assert f"canvoy {name}" in parser.epilog, f"canvoy {name}: the example runs something else"
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"canvoy {name} {'/'.join(action.option_strings) or action.dest}"


@pytest.mark.parametrize(("name", "parser"), LEAVES, ids=[n for n, _p in LEAVES])
def test_one_flag_name_per_concept(name: str, parser: argparse.ArgumentParser) -> None:
    flags = {f: a for a in parser._actions for f in a.option_strings}
    if "--dir" in flags:  # the old spelling, kept as an alias under certs only
        assert name.startswith("certs ") and flags["--dir"] is flags["--certs"]
    for old in ("--pki", "--ca-dir", "--host-port"):
        assert old not in flags
    if "--broker" in flags:
        assert flags["--broker"].metavar == "HOST[:PORT]"
        assert str(DEFAULT_PORT) in (flags["--broker"].help or "")
    if "--certs" in flags:
        assert flags["--certs"].metavar == "DIR"


@pytest.mark.parametrize(
    "argv",
    [
        ["agent", "status", "--config", "a.yaml", "-v"],
        ["agent", "status", "-vv", "--config", "a.yaml"],
        ["decode", "--dbc", "x.dbc", "-", "--log-level", "debug"],
        ["-q", "decode", "--dbc", "x.dbc", "-", "--log-format", "json"],
    ],
)
def test_logging_options_after_the_subcommand(argv: list[str]) -> None:
    build_parser().parse_args(argv)  # argparse exits 2 on an unrecognized argument


def test_logging_levels() -> None:
    assert level_for(0, 0, None) == logging.WARNING
    assert level_for(1, 0, None) == logging.INFO
    assert level_for(5, 0, None) == logging.DEBUG
    assert level_for(0, 1, None) == logging.ERROR
    assert level_for(0, 0, None, service=True) == logging.INFO
    assert level_for(0, 1, None, service=True) == logging.WARNING
    assert level_for(1, 0, None, service=True) == logging.DEBUG
    assert level_for(0, 0, "error", service=True) == logging.ERROR
    assert level_for(2, 0, "error") == logging.ERROR  # --log-level wins


def _error_classes() -> list[type[CanvoyError]]:
    found = []
    for module in (canvoy.errors, canvoy.wire.errors):
        for _name, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, CanvoyError) and cls.__module__ == module.__name__:
                found.append(cls)
    return found


USAGE = {"UsageError", "ConfigError", "PKIError", "DecodeError", "InvalidIdentityError"}


@pytest.mark.parametrize("cls", _error_classes(), ids=lambda c: c.__name__)
def test_exit_codes_follow_the_error_tree(cls: type[CanvoyError]) -> None:
    """2: the user must change what they gave (usage, config, a named file); 1: it failed."""
    try:
        error = cls("x")
    except TypeError:
        error = cls("x", 0)
    want = EXIT_USAGE if cls.__name__ in USAGE else EXIT_FAILURE
    assert exit_code(error) == want


def _canvoy(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "canvoy", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )


def test_a_usage_error_exits_2_and_a_runtime_failure_1(pki_dir: Path) -> None:
    usage = _canvoy(
        "agent",
        "init",
        "--device",
        "car 7",
        "--certs",
        str(pki_dir),
        "--broker",
        "h",
        "--dbc",
        "d",
        "--bus",
        "virtual:x",
        "-o",
        "a.yaml",
    )
    assert usage.returncode == 2 and usage.stderr.count("\n") == 1, usage.stderr
    assert _canvoy("agent", "frobnicate").returncode == 2  # argparse's own
    no_pki = _canvoy("tail", "--certs", str(pki_dir / "nothing"), "--identity", "operator/ops")
    assert no_pki.returncode == 2, no_pki.stderr
    assert no_pki.stderr.count("\n") == 1 and "canvoy certs issue operator ops" in no_pki.stderr
    # A PKI that is fine, and nobody listens on the port: a runtime failure.
    down = _canvoy(
        "tail",
        "--certs",
        str(pki_dir),
        "--identity",
        "operator/ops",
        "--broker",
        f"127.0.0.1:{free_port()}",
    )
    assert down.returncode == 1, down.stderr
    assert down.stderr.count("\n") == 1 and "Traceback" not in down.stderr


def test_json_logs_are_one_object_per_line() -> None:
    done = _canvoy(
        "decode",
        "--dbc",
        str(TEST_DBC),
        "-",
        "-vv",
        "--log-format",
        "json",
        stdin="junk line\n(1.0) can0 100#A00F820300000000\n",
    )
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert records, done.stderr
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    assert any(r["logger"] == "canvoy.agent.candump" and "junk" in r["message"] for r in records)
    assert all(r["level"] in ("debug", "info", "warning", "error", "critical") for r in records)


def test_json_formatter_carries_the_exception() -> None:
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        record = logging.LogRecord(
            "canvoy.x", logging.ERROR, __file__, 1, "failed %s", ("it",), sys.exc_info()
        )
    line = JsonFormatter().format(record)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["message"] == "failed it" and parsed["level"] == "error"
    assert "ValueError: bad\nvalue" in parsed["exception"]
    assert parsed["time"].endswith("+00:00")


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("localhost", ("localhost", 8883)),
        ("mq.example.com:8884", ("mq.example.com", 8884)),
        ("127.0.0.1", ("127.0.0.1", 8883)),
        ("[::1]:1883", ("::1", 1883)),
        ("[::1]", ("::1", 8883)),
        ("::1", ("::1", 8883)),
    ],
)
def test_broker_addresses(text: str, want: tuple[str, int]) -> None:
    assert parse_broker(text) == want


@pytest.mark.parametrize(
    "text", ["", ":8883", "h:", "h:0", "h:65536", "h:x", "[::1", "[::1]x", "a b:1", "h:١٢"]
)
def test_bad_broker_addresses_say_what_to_give(text: str) -> None:
    with pytest.raises(ConfigError, match="must be HOST or HOST:PORT"):
        parse_broker(text)


hosts = st.from_regex(r"[a-z][a-z0-9.-]{0,30}", fullmatch=True)


@given(hosts, st.integers(1, 65535))
def test_host_and_port_read_back(host: str, port: int) -> None:
    assert parse_broker(f"{host}:{port}") == (host, port)
    assert parse_broker(host) == (host, DEFAULT_PORT)


@given(st.text(max_size=40))
def test_any_broker_text_is_an_address_or_one_config_error(text: str) -> None:
    try:
        host, port = parse_broker(text)
    except ConfigError as exc:
        assert "--broker" in str(exc)
        return
    assert host and 1 <= port <= 65535 and not any(c.isspace() for c in host)


def test_with_json_logs_the_error_line_is_json_too() -> None:
    done = _canvoy("decode", "--dbc", "missing.dbc", "x.log", "--log-format", "json")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["level"] == "error" and record["logger"] == "canvoy"
    assert record["message"].startswith("canvoy decode: error: database 'missing.dbc'")
