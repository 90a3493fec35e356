"""``canvoy certs``: make, renew and inspect the fleet PKI."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

from rich.table import Table

from canvoy.certs import enrol, health, pki
from canvoy.commands.console import CommandConsole
from canvoy.errors import PKIError


def add_parser(sub: Any) -> None:
    """Register ``canvoy certs`` and its actions."""
    parser = sub.add_parser(
        "certs",
        help="make, renew and inspect the fleet PKI (ECDSA P-256)",
        description="The fleet PKI: a root CA, a key and certificate per identity, a CRL.",
        epilog="example:\n  canvoy certs init --certs fleet\n"
        "  canvoy certs issue broker --certs fleet --host mq.example.com\n"
        "  canvoy certs issue device car-1 --certs fleet",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    _add_making(actions)
    _add_enrolment(actions)
    _add_inspection(actions)


def _add_making(actions: Any) -> None:
    init = actions.add_parser(
        "init",
        help="create the fleet root CA",
        epilog="example:\n  canvoy certs init --certs fleet",
    )
    _dir(init)
    init.add_argument("--days", type=int, default=pki.CA_DAYS, help="validity (default 10 years)")
    init.add_argument("--force", action="store_true", help="replace an existing CA")
    init.set_defaults(func=_init)

    issue = actions.add_parser(
        "issue",
        help="make a key and certificate for a broker, device, bridge or operator",
        epilog="examples:\n  canvoy certs issue device car-1 --certs fleet\n"
        "  canvoy certs issue broker --certs fleet --host mq.example.com --host 127.0.0.1",
    )
    issue.add_argument("kind", choices=pki.KINDS, help="what the identity is")
    issue.add_argument("name", nargs="?", help="identity name (CN); the broker's is 'broker'")
    _dir(issue)
    _hosts(issue)
    _validity(issue)
    issue.add_argument("--force", action="store_true", help="replace an existing key")
    issue.set_defaults(func=_issue)

    revoke = actions.add_parser(
        "revoke",
        help="revoke an identity and rewrite the CRL",
        epilog="example:\n  canvoy certs revoke car-7 --certs fleet",
    )
    revoke.add_argument("name", help="the identity to revoke")
    revoke.add_argument("--kind", choices=pki.KINDS, help="when the name exists under two kinds")
    revoke.add_argument(
        "--previous",
        action="store_true",
        help="revoke only the certificates before the current one (after renew --new-key)",
    )
    _dir(revoke)
    revoke.set_defaults(func=_revoke)

    crl = actions.add_parser(
        "crl",
        help="re-sign the CRL with a new next update",
        epilog="example:\n  canvoy certs crl --certs fleet --days 30",
    )
    _dir(crl)
    crl.add_argument(
        "--days", type=int, default=pki.CRL_DAYS, help=f"until next update (default {pki.CRL_DAYS})"
    )
    crl.set_defaults(func=_crl)


def _add_enrolment(actions: Any) -> None:
    request = actions.add_parser(
        "request",
        help="where the key lives: make a certificate request (and the key if absent)",
        epilog="example:\n"
        "  canvoy certs request device car-1 --key /etc/canvoy/key.pem -o car-1.csr",
    )
    request.add_argument("kind", choices=pki.KINDS, help="what the identity is")
    request.add_argument("name", help="identity name (the certificate's CN)")
    request.add_argument(
        "--key", type=Path, required=True, help="the private key (made here, mode 0600, if absent)"
    )
    request.add_argument("-o", "--output", type=Path, required=True, help="the request (.csr)")
    request.set_defaults(func=_request)

    sign = actions.add_parser(
        "sign",
        help="on the CA host: issue the certificate a request asks",
        epilog="example:\n  canvoy certs sign car-1.csr --certs fleet -o car-1.pem",
    )
    sign.add_argument("csr", type=Path, help="the certificate request (.csr) to sign")
    _dir(sign)
    _hosts(sign)
    _validity(sign)
    sign.add_argument("-o", "--output", type=Path, help="also write the certificate here")
    sign.add_argument("--force", action="store_true", help="replace an identity's certificate")
    sign.set_defaults(func=_sign)

    renew = actions.add_parser(
        "renew",
        help="a new certificate for an identity, same key",
        epilog="example:\n  canvoy certs renew device car-1 --certs fleet",
    )
    renew.add_argument("kind", choices=pki.KINDS, help="what the identity is")
    renew.add_argument("name", nargs="?", help="identity name; the broker's is 'broker'")
    _dir(renew)
    _validity(renew)
    renew.add_argument(
        "--new-key", action="store_true", help="make a new key too (only for keys made here)"
    )
    renew.set_defaults(func=_renew)


def _add_inspection(actions: Any) -> None:
    listing = actions.add_parser(
        "list",
        help="show the CA, the CRL and every identity",
        epilog="example:\n  canvoy certs list --certs fleet --json",
    )
    _dir(listing)
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=_list)

    check = actions.add_parser(
        "check",
        help="exit 1 and list what has expired or expires soon (for monitoring)",
        epilog="example:\n  canvoy certs check --certs fleet --within 14 || mail -s 'renew' ops",
    )
    _dir(check)
    check.add_argument("--within", type=int, default=30, metavar="DAYS", help="default 30")
    check.add_argument("--json", action="store_true", help="print JSON")
    check.set_defaults(func=_check)


def _dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--certs",
        "--dir",
        dest="certs",
        type=Path,
        required=True,
        metavar="DIR",
        help="the fleet PKI directory (--dir is the same option)",
    )


def _hosts(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host", action="append", default=[], help="broker host name or IP (repeatable)"
    )


def _validity(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--days", type=int, help="validity in days (default depends on kind)")
    group.add_argument("--hours", type=int, help="validity in hours, for short-lived certificates")


def _name(kind: str, name: str | None, action: str) -> str:
    if name is not None:
        return name
    if kind == "broker":
        return "broker"
    raise PKIError(f"'certs {action} {kind}' needs a NAME")


def _issued(ident: pki.Identity) -> str:
    return (
        f"{ident.kind} {ident.name}: {ident.cert_path}, serial {ident.serial:x}, "
        f"valid until {ident.not_after:%Y-%m-%d %H:%M} UTC"
    )


def _init(args: argparse.Namespace) -> int:
    path = pki.init_ca(args.certs, force=args.force, days=args.days)
    print(f"fleet CA written to {path} (key in {pki.ca_key_path(args.certs)}, keep it safe)")
    return 0


def _issue(args: argparse.Namespace) -> int:
    name = _name(args.kind, args.name, "issue")
    ident = pki.issue(
        args.certs,
        args.kind,
        name,
        hosts=args.host,
        days=args.days,
        hours=args.hours,
        force=args.force,
    )
    print(f"{_issued(ident)} (key {ident.key_path})")
    if ident.kind != "broker":
        print("a running broker learns new identities on SIGHUP (or restart)")
    return 0


def _request(args: argparse.Namespace) -> int:
    made = not args.key.exists()
    enrol.request(args.kind, args.name, enrol.FileKey(args.key), args.output)
    print(
        f"{'made key ' + str(args.key) + ' (mode 0600); ' if made else ''}request for "
        f"{args.kind} {args.name} written to {args.output}: sign it on the CA host with "
        f"'canvoy certs sign {args.output.name} --certs PKI'"
    )
    return 0


def _sign(args: argparse.Namespace) -> int:
    ident = enrol.sign(
        args.certs, args.csr, hosts=args.host, days=args.days, hours=args.hours, force=args.force
    )
    if args.output is not None:
        pki.write_public(args.output, ident.cert_path.read_bytes())
    where = args.output or ident.cert_path
    print(f"{_issued(ident)}; copy {where} to where the key lives")
    if ident.kind != "broker":
        print("a running broker learns new identities on SIGHUP (or restart)")
    return 0


def _renew(args: argparse.Namespace) -> int:
    name = _name(args.kind, args.name, "renew")
    ident = enrol.renew(
        args.certs, args.kind, name, new_key=args.new_key, days=args.days, hours=args.hours
    )
    key = f"new key {ident.key_path}" if args.new_key else "same key"
    print(f"renewed {_issued(ident)} ({key}); copy the certificate to where it is used")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    ident = pki.revoke(args.certs, args.name, args.kind, previous=args.previous)
    which = "the earlier certificates of" if args.previous else "every certificate of"
    print(
        f"revoked {which} {ident.kind} {ident.name}; CRL rewritten at "
        f"{pki.crl_path(args.certs)}; copy it to the brokers and bridges and send the broker SIGHUP"
    )
    return 0


def _crl(args: argparse.Namespace) -> int:
    crl = pki.resign_crl(args.certs, days=args.days)
    print(
        f"CRL {pki.crl_path(args.certs)} re-signed ({len(list(crl))} revoked), next update "
        f"{crl.next_update_utc:%Y-%m-%d %H:%M} UTC; copy it to the brokers and bridges and "
        "send the broker SIGHUP"
    )
    return 0


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _days_left(until: dt.datetime | None, now: dt.datetime) -> float | None:
    return round((until - now).total_seconds() / 86400, 1) if until is not None else None


def _list(args: argparse.Namespace) -> int:
    _key, ca = pki.load_ca(args.certs)
    crl = pki.load_crl(args.certs)
    now = dt.datetime.now(dt.UTC)
    idents = pki.identities(args.certs)
    if args.json:
        doc = {
            "ca": {
                "path": str(pki.ca_cert_path(args.certs)),
                "not_before": _iso(ca.not_valid_before_utc),
                "not_after": _iso(ca.not_valid_after_utc),
                "days_left": _days_left(ca.not_valid_after_utc, now),
            },
            "crl": None
            if crl is None
            else {
                "path": str(pki.crl_path(args.certs)),
                "last_update": _iso(crl.last_update_utc),
                "next_update": _iso(crl.next_update_utc),
                "days_left": _days_left(crl.next_update_utc, now),
                "revoked": len(list(crl)),
            },
            "identities": [
                {
                    "kind": i.kind,
                    "name": i.name,
                    "subject": i.subject,
                    "serial": f"{i.serial:x}",
                    "not_before": _iso(i.not_before),
                    "not_after": _iso(i.not_after),
                    "days_left": _days_left(i.not_after, now),
                    "revoked": i.revoked,
                    "key_at_ca": i.key_at_ca,
                    "cert": str(i.cert_path),
                }
                for i in idents
            ],
        }
        json.dump(doc, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    console = CommandConsole(width=160)
    console.print(
        f"fleet CA {pki.ca_cert_path(args.certs)}: valid until "
        f"{ca.not_valid_after_utc:%Y-%m-%d} ({_days_left(ca.not_valid_after_utc, now):.0f} days)"
    )
    if crl is None or crl.next_update_utc is None:
        console.print(f"CRL {pki.crl_path(args.certs)}: none, or without a next update")
    else:
        left = _days_left(crl.next_update_utc, now)
        lapsed = " [bold red]LAPSED: re-sign with 'canvoy certs crl'[/]" if (left or 0) <= 0 else ""
        console.print(
            f"CRL {pki.crl_path(args.certs)}: last update {crl.last_update_utc:%Y-%m-%d %H:%M}, "
            f"next update {crl.next_update_utc:%Y-%m-%d %H:%M} UTC ({left:.1f} days left), "
            f"{len(list(crl))} revoked{lapsed}"
        )
    table = Table(
        "name", "kind", "serial", "not before", "not after", "days left", "revoked", "key"
    )
    for i in idents:
        left = _days_left(i.not_after, now) or 0.0
        table.add_row(
            i.name,
            i.kind,
            f"{i.serial:x}",
            f"{i.not_before:%Y-%m-%d %H:%M}" if i.not_before else "",
            f"{i.not_after:%Y-%m-%d %H:%M}",
            f"{left:.1f}" if left > 0 else "[red]expired[/]",
            "yes" if i.revoked else "no",
            "here" if i.key_at_ca else "elsewhere",
        )
    console.print(table)
    return 0


def _check(args: argparse.Namespace) -> int:
    within = health.require_positive_days(args.within)
    now = dt.datetime.now(dt.UTC)
    findings = health.check(args.certs, within, now)
    if args.json:
        json.dump([f.as_json() for f in findings], sys.stdout, indent=1)
        sys.stdout.write("\n")
    elif findings:
        for finding in findings:
            print(finding.line(now))
    else:
        print(f"nothing in {args.certs} expires within {args.within} days")
    return 1 if findings else 0
