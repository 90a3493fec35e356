"""Service tickets from diagnostic events: one ticket per fault episode, the same on every bridge.

Every event of an episode carries the episode's id (``episode``), so the ticket id
``<device>:<episode>`` is derived from the event alone: whichever bridge instance sees an
event, before or after a restart, names the same ticket. A ``set`` opens the ticket (status
``open``), an ``update`` (a freeze frame, an occurrence count, an FMI, an OBD-II status)
updates it, a ``clear`` closes it. The webhook's idempotency key is the ticket id and the
status (and, for updates, the event's place), so a redelivered event never makes a second
ticket or a second update. Events from agents that predate episodes are named
``<device>:<code>:<seq>`` after ``opened_seq`` (or their own envelope), as those agents did.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Literal

from canvoy.bridge.records import Record
from canvoy.bridge.verify import Verified
from canvoy.errors import ConfigError
from canvoy.wire.events import DtcEvent, EpisodeEvent, TriggerEvent

Severity = Literal["low", "medium", "high", "critical"]
STATUS = {"set": "open", "update": "updated", "clear": "closed"}

# SAE J2012 descriptions of the codes the demo vehicle and common OBD-II cars report.
DESCRIPTIONS = {
    "P0113": "Intake air temperature sensor 1 circuit high",
    "P0117": "Engine coolant temperature sensor 1 circuit low",
    "P0118": "Engine coolant temperature sensor 1 circuit high",
    "P0128": "Coolant thermostat (coolant temperature below thermostat regulating temperature)",
    "P0217": "Engine coolant over temperature condition",
    "P0300": "Random/multiple cylinder misfire detected",
    "P0420": "Catalyst system efficiency below threshold (bank 1)",
    "P0562": "System voltage low",
    "P0563": "System voltage high",
    "P0A80": "Replace hybrid/EV battery pack",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceRule:
    """Which DTCs or triggers (glob over the code or trigger name) become which tickets."""

    match: str
    severity: Severity = "medium"
    title: str = ""
    action: str = ""

    def __post_init__(self) -> None:
        if not self.match:
            raise ConfigError("service_rules: 'match' must not be empty")


def _title(event: EpisodeEvent) -> str:
    if isinstance(event, TriggerEvent):
        return f"Trigger {event.name}: {event.condition}" if event.condition else event.name
    return DESCRIPTIONS.get(event.code, f"Diagnostic trouble code {event.code}")


def _names(event: EpisodeEvent) -> tuple[str, ...]:
    """What a rule may match: the code or trigger name; on J1939 also ``SPN<n>`` alone."""
    if isinstance(event, DtcEvent) and event.spn is not None:
        return (event.code, f"SPN{event.spn}")
    return (event.code,)


class Ticketing:
    """Turns verified events into ticket records for the ``tickets`` route."""

    def __init__(self, rules: tuple[ServiceRule, ...]) -> None:
        self.rules = rules

    def rule_for(self, *names: str) -> ServiceRule | None:
        """The first rule matching any of ``names``."""
        return next(
            (r for r in self.rules if any(fnmatch.fnmatchcase(n, r.match) for n in names)), None
        )

    def tickets(self, verified: Verified) -> list[Record]:
        """The ticket records of one events envelope (none when no rule matches)."""
        e = verified.signed.envelope
        if e.kind != "events" or not isinstance(verified.parsed, list):
            return []
        out = []
        for i, event in enumerate(verified.parsed):
            if not isinstance(event, DtcEvent | TriggerEvent):
                continue
            rule = self.rule_for(*_names(event))
            if rule is None:
                continue
            if event.episode is not None:
                ticket_id = f"{e.device}:{event.episode}"
            else:
                ticket_id = f"{e.device}:{event.code}:{event.opened_seq or e.seq}"
            status = STATUS[event.state]
            data: dict[str, Any] = {
                "ticket_id": ticket_id,
                "status": status,
                "device": e.device,
                "episode": event.episode,
                "severity": rule.severity,
                "title": rule.title or _title(event),
                "recommended_action": rule.action,
                "dtcs": [{"code": event.code, "description": DESCRIPTIONS.get(event.code, "")}],
                "source": event.source if isinstance(event, DtcEvent) else "trigger",
                "event_time_ms": event.t_ms,
                "odometer_km": event.odometer_km,
                "location": event.location,  # only present when the owner consented
                "freeze_frame": event.freeze_frame,
                "evidence": [
                    {"envelope": e.key, "event_index": i, "digest_sha256": verified.signed.digest}
                ],
            }
            if isinstance(event, DtcEvent):
                for name in ("spn", "fmi", "occurrences", "lamps", "dtc_status"):
                    if getattr(event, name) is not None:
                        data[name] = getattr(event, name)
            if event.note is not None:
                data["note"] = event.note
            key = f"{ticket_id}:{status}" if status != "updated" else f"{ticket_id}:{e.key}:{i}"
            out.append(Record(key, e.device, "tickets", data))
        return out
