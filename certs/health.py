"""What in a fleet PKI expires, has expired or is not valid yet: for `certs list`, `certs check`,
and the CRL warnings of the broker and the bridge."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509

from canvoy.certs import pki
from canvoy.errors import PKIError

# Within this long of its next update the CRL is reported: the brokers need a fresh one in time.
CRL_WARN = dt.timedelta(days=7)

State = Literal["expired", "expires", "not yet valid", "lapsed", "lapses", "missing"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Finding:
    """One thing that needs attention before (or since) ``date``."""

    what: str
    path: Path
    state: State
    date: dt.datetime | None
    fix: str

    def line(self, now: dt.datetime) -> str:
        """One line for a person: what, when, and what to do."""
        if self.date is None:
            return f"{self.what}: {self.state} ({self.path}): {self.fix}"
        seconds = (self.date - now).total_seconds()
        span = abs(seconds)
        amount = f"{span / 3600:.0f} hours" if span < 2 * 86400 else f"{span / 86400:.0f} days"
        when = f"in {amount}" if seconds >= 0 else f"{amount} ago"
        return (
            f"{self.what}: {self.state} {self.date:%Y-%m-%d %H:%M} UTC ({when}) "
            f"({self.path}): {self.fix}"
        )

    def as_json(self) -> dict[str, str | None]:
        """The finding for ``--json``."""
        return {
            "what": self.what,
            "path": str(self.path),
            "state": self.state,
            "date": self.date.isoformat() if self.date else None,
            "fix": self.fix,
        }


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def crl_finding(
    crl: x509.CertificateRevocationList | None,
    path: Path,
    *,
    within: dt.timedelta,
    certs: str,
    now: dt.datetime | None = None,
) -> Finding | None:
    """The CRL's problem, if its next update is past or within ``within`` of ``now``."""
    now = now or _now()
    fix = (
        f"re-sign it on the CA host with 'canvoy certs crl --certs {certs}', copy crl.pem to "
        "every broker and bridge and send the broker SIGHUP"
    )
    if crl is None:
        return Finding(what="CRL", path=path, state="missing", date=None, fix=fix)
    next_update = crl.next_update_utc
    if next_update is None:
        return None
    if next_update <= now:
        return Finding(
            what="CRL",
            path=path,
            state="lapsed",
            date=next_update,
            fix="the broker refuses every client until it is re-signed: " + fix,
        )
    if next_update - now <= within:
        return Finding(what="CRL", path=path, state="lapses", date=next_update, fix=fix)
    return None


def check(root: Path, within: dt.timedelta, now: dt.datetime | None = None) -> list[Finding]:
    """Everything in the PKI at ``root`` that is past or ends within ``within``: the CA, the
    CRL's next update and every identity that is not revoked.

    Raises:
        PKIError: there is no CA, or a file in the PKI cannot be read.
    """
    now = now or _now()
    _key, ca = pki.load_ca(root)
    found: list[Finding] = []
    if ca.not_valid_after_utc - now <= within:
        found.append(
            Finding(
                what="fleet CA",
                path=pki.ca_cert_path(root),
                state="expired" if ca.not_valid_after_utc <= now else "expires",
                date=ca.not_valid_after_utc,
                fix="plan a new CA and re-issue the fleet before then (see certs/README.md)",
            )
        )
    crl = crl_finding(
        pki.load_crl(root), pki.crl_path(root), within=within, certs=str(root), now=now
    )
    if crl is not None:
        found.append(crl)
    for ident in pki.identities(root):
        if ident.revoked:
            continue
        what = f"{ident.kind} {ident.name}"
        renew = f"renew it with 'canvoy certs renew {ident.kind} {ident.name} --certs {root}'"
        if ident.not_before is not None and ident.not_before > now:
            found.append(
                Finding(
                    what=what,
                    path=ident.cert_path,
                    state="not yet valid",
                    date=ident.not_before,
                    fix="check the CA host's clock, then " + renew,
                )
            )
        elif ident.not_after - now <= within:
            state: State = "expired" if ident.not_after <= now else "expires"
            found.append(
                Finding(
                    what=what, path=ident.cert_path, state=state, date=ident.not_after, fix=renew
                )
            )
    return found


def log_crl_freshness(path: Path, logger: logging.Logger, certs: str = "PKI") -> None:
    """Log a warning when the CRL at ``path`` is within 7 days of its next update, an error
    when it is past it (or unreadable); nothing when it is fresh. Never raises."""
    try:
        crl = x509.load_pem_x509_crl(path.read_bytes()) if path.is_file() else None
    except (OSError, ValueError) as exc:
        logger.error("CRL %s cannot be read (%s): copy a good crl.pem from the CA host", path, exc)
        return
    finding = crl_finding(crl, path, within=CRL_WARN, certs=certs)
    if finding is None:
        return
    level = logging.WARNING if finding.state == "lapses" else logging.ERROR
    logger.log(level, "%s", finding.line(_now()))


def require_positive_days(days: int) -> dt.timedelta:
    """``--within`` as a duration.

    Raises:
        PKIError: ``days`` is negative.
    """
    if days < 0:
        raise PKIError(f"--within {days} is invalid: use a number of days >= 0")
    return dt.timedelta(days=days)
