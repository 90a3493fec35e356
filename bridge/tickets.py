"""Service tickets from diagnostic events: one ticket per fault episode, the same on every bridge.

A ``dtc`` event with state ``set`` opens an episode; ``clear`` closes it. The ticket id is
``<device>:<code>:<seq>`` where ``seq`` is the sequence number of the envelope that opened the
episode (a clear event carries it as ``opened_seq``), so whichever bridge instance sees an event,
before or after a restart, derives the same id; the webhook's ``Idempotency-Key`` is the id and
the status, so a redelivered event never makes a second ticket.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Literal

from canvoy.bridge.records import Record
from canvoy.bridge.verify import Verified
from canvoy.errors import ConfigError

Severity = Literal["low", "medium", "high", "critical"]

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


def _title(code: str, event: dict[str, Any]) -> str:
    if event.get("type") == "trigger":
        return f"Trigger {code}: {event.get('condition', '')}"
    return DESCRIPTIONS.get(code, f"Diagnostic trouble code {code}")


class Ticketing:
    """Turns verified events into ticket records for the ``tickets`` route."""

    def __init__(self, rules: tuple[ServiceRule, ...]) -> None:
        self.rules = rules

    def rule_for(self, code: str) -> ServiceRule | None:
        """The first rule matching ``code``."""
        return next((r for r in self.rules if fnmatch.fnmatchcase(code, r.match)), None)

    def tickets(self, verified: Verified) -> list[Record]:
        """The ticket records of one events envelope (none when no rule matches)."""
        e = verified.signed.envelope
        if e.kind != "events" or not isinstance(verified.parsed, list):
            return []
        out = []
        for i, event in enumerate(verified.parsed):
            code = str(event.get("code") or event.get("name") or "")
            rule = self.rule_for(code) if code else None
            if rule is None:
                continue
            opened = event.get("opened_seq", e.seq)
            ticket_id = f"{e.device}:{code}:{opened}"
            state = event.get("state", "set")
            status = {"set": "open", "clear": "closed"}.get(str(state), "updated")
            data: dict[str, Any] = {
                "ticket_id": ticket_id,
                "status": status,
                "device": e.device,
                "severity": rule.severity,
                "title": rule.title or _title(code, event),
                "recommended_action": rule.action,
                "dtcs": [{"code": code, "description": DESCRIPTIONS.get(code, "")}],
                "event_time_ms": event.get("t_ms"),
                "odometer_km": event.get("odometer_km"),
                "location": event.get("location"),  # only present when the owner consented
                "freeze_frame": event.get("freeze_frame"),
                "evidence": [
                    {"envelope": e.key, "event_index": i, "digest_sha256": verified.signed.digest}
                ],
            }
            out.append(Record(f"{ticket_id}:{status}", e.device, "tickets", data))
        return out
