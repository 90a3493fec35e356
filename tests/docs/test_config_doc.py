"""docs/CONFIG.md cannot drift: every key of the config dataclasses is in it, and every key in
it is one the code reads.

Each key table sits under a heading named in ``SECTIONS`` (which config file, which section).
Its first column names keys relative to that section (``tls.ca``; ``host``, ``port``). A nested
dataclass with a section of its own (``batch``) is a row here and a table there; one without
(``tls``) is documented inline as ``tls.ca``, ``tls.cert``, ...
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from canvoy.agent.config import AgentConfig
from canvoy.bridge.config import BridgeConfig
from canvoy.bridge.sinks.jsonl import JsonlConfig
from canvoy.bridge.sinks.mqtt import MqttSinkConfig
from canvoy.bridge.sinks.nats import NatsConfig
from canvoy.bridge.sinks.webhook import WebhookConfig
from tests.agentkit import REPO

CONFIG_MD = REPO / "docs" / "CONFIG.md"

# heading text -> (the config's root dataclass, the section's key path inside it)
SECTIONS: dict[str, tuple[type[Any], str]] = {
    "Agent (`agent.yaml`)": (AgentConfig, ""),
    "`batch`": (AgentConfig, "batch"),
    "`diagnostics`": (AgentConfig, "diagnostics"),
    "`triggers`": (AgentConfig, "diagnostics.triggers"),
    "`outbox`": (AgentConfig, "outbox"),
    "`mqtt`": (AgentConfig, "mqtt"),
    "`delivery`": (AgentConfig, "delivery"),
    "Agent: `buses`": (AgentConfig, "buses"),
    "`obd`": (AgentConfig, "buses.obd"),
    "Bridge (`bridge.yaml`)": (BridgeConfig, ""),
    "`service_rules`": (BridgeConfig, "service_rules"),
    "`type: jsonl`": (JsonlConfig, ""),
    "`type: webhook`": (WebhookConfig, ""),
    "`type: mqtt`": (MqttSinkConfig, ""),
    "`type: nats`": (NatsConfig, ""),
}

Key = tuple[str, str]  # (root dataclass name, dotted key path)


def _nested(hint: Any) -> type[Any] | None:
    """The dataclass inside ``hint`` (``X``, ``X | None``, ``tuple[X, ...]``), if any."""
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return hint
    for arg in typing.get_args(hint):
        found = _nested(arg)
        if found is not None:
            return found
    return None


def code_keys(root: type[Any], sections: set[str]) -> tuple[dict[str, set[str]], set[str]]:
    """Per section path, the keys its table must hold; and the keys it may hold besides (the
    name of a nested dataclass documented inline as ``name.key``)."""
    required: dict[str, set[str]] = {}
    optional: set[str] = set()

    def walk(cls: type[Any], section: str, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            path = f"{prefix}{f.name}"
            inner = _nested(hints[f.name])
            full = f"{section}.{path}" if section else path
            if inner is not None and full in sections:
                required.setdefault(section, set()).add(path)
                walk(inner, full, "")
            elif inner is not None:
                optional.add(f"{section}|{path}")
                walk(inner, section, f"{path}.")
            else:
                required.setdefault(section, set()).add(path)

    walk(root, "", "")
    return required, optional


def doc_keys(markdown: str, sections: dict[str, tuple[type[Any], str]]) -> dict[Key, set[str]]:
    """(root name, section path) -> the keys in the first column of the tables under its
    heading. Tables under other headings (command-line options) are not config keys."""
    found: dict[Key, set[str]] = {}
    current: Key | None = None
    for line in markdown.splitlines():
        heading = re.match(r"#+ (.*)", line)
        if heading:
            spec = sections.get(heading.group(1).strip())
            current = (spec[0].__name__, spec[1]) if spec else None
            if current is not None:
                found.setdefault(current, set())
            continue
        if current is None or not line.startswith("|") or line.startswith("|---"):
            continue
        first = line.split("|")[1]
        if first.strip() == "key":
            continue
        found[current] |= set(re.findall(r"`([A-Za-z_][A-Za-z0-9_.]*)`", first))
    return found


def drift(markdown: str, sections: dict[str, tuple[type[Any], str]]) -> list[str]:
    """What the doc lacks and what it has too many, one line each; empty when they agree."""
    documented = doc_keys(markdown, sections)
    problems = []
    for root in dict.fromkeys(cls for cls, _s in sections.values()):
        paths = {s for cls, s in sections.values() if cls is root}
        required, optional = code_keys(root, paths)
        for section in sorted(paths):
            have = documented.get((root.__name__, section))
            where = f"{root.__name__} {section or '(top level)'}"
            if have is None:
                problems.append(f"{where}: no heading for this section")
                continue
            want = required.get(section, set())
            for key in sorted(want - have):
                problems.append(f"{where}: {key} is not documented")
            for key in sorted(have - want):
                if f"{section}|{key}" not in optional:
                    problems.append(f"{where}: {key} is documented but no such key exists")
    return problems


def test_config_md_documents_every_key_and_only_real_keys() -> None:
    """Acceptance 6."""
    assert drift(CONFIG_MD.read_text(), SECTIONS) == []


# A synthetic config: the check must break when a key is added without documenting it.


@dataclass(frozen=True, kw_only=True)
class _Limits:
    max_bytes: int = 1
    max_age_s: float = 1.0


@dataclass(frozen=True, kw_only=True)
class _Tls:
    ca: Path = Path("ca.pem")


@dataclass(frozen=True, kw_only=True)
class _Demo:
    name: str
    tls: _Tls = field(default_factory=_Tls)
    limits: _Limits = field(default_factory=_Limits)


_DEMO_SECTIONS: dict[str, tuple[type[Any], str]] = {
    "Demo (`demo.yaml`)": (_Demo, ""),
    "`limits`": (_Demo, "limits"),
}
_DEMO_MD = """\
## Demo (`demo.yaml`)

| option | default | meaning |
|---|---|---|
| `--port PORT` | 1 | a command-line option, not a key |

| key | default | meaning |
|---|---|---|
| `name` | required | the name |
| `tls.ca` | `ca.pem` | the CA |
| `limits` | | below |

### `limits`

| key | default | meaning |
|---|---|---|
| `max_bytes`, `max_age_s` | 1, 1 | bounds |
"""


def test_the_synthetic_config_agrees_with_its_doc() -> None:
    assert drift(_DEMO_MD, _DEMO_SECTIONS) == []


@dataclass(frozen=True, kw_only=True)
class _GrownLimits(_Limits):
    max_files: int = 3  # added to the code, not to the doc


@dataclass(frozen=True, kw_only=True)
class _DemoGrown(_Demo):
    limits: _GrownLimits = field(default_factory=_GrownLimits)
    retries: int = 0


def test_an_undocumented_key_breaks_the_check() -> None:
    sections = {"Demo (`demo.yaml`)": (_DemoGrown, ""), "`limits`": (_DemoGrown, "limits")}
    assert drift(_DEMO_MD, sections) == [
        "_DemoGrown (top level): retries is not documented",
        "_DemoGrown limits: max_files is not documented",
    ]


def test_a_documented_key_the_code_lacks_breaks_the_check() -> None:
    markdown = _DEMO_MD.replace("| `name` | required |", "| `name`, `colour` | required |")
    assert drift(markdown, _DEMO_SECTIONS) == [
        "_Demo (top level): colour is documented but no such key exists"
    ]


def test_a_lost_heading_breaks_the_check() -> None:
    markdown = _DEMO_MD.replace("### `limits`", "### Limits")
    assert "_Demo limits: no heading for this section" in drift(markdown, _DEMO_SECTIONS)
