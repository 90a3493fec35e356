"""``canvoy certs``: make and inspect the fleet PKI."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from canvoy.certs import pki
from canvoy.errors import PKIError


def add_parser(sub: Any) -> None:
    """Register ``canvoy certs`` and its actions."""
    parser = sub.add_parser("certs", help="make and inspect the fleet PKI (ECDSA P-256)")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    init = actions.add_parser("init", help="create the fleet root CA")
    _dir(init)
    init.add_argument("--days", type=int, default=pki.CA_DAYS, help="validity (default 10 years)")
    init.add_argument("--force", action="store_true", help="replace an existing CA")
    init.set_defaults(func=_init)

    issue = actions.add_parser("issue", help="issue a broker, device, bridge or operator identity")
    issue.add_argument("kind", choices=pki.KINDS)
    issue.add_argument("name", nargs="?", help="identity name (CN); the broker's is 'broker'")
    _dir(issue)
    issue.add_argument(
        "--host", action="append", default=[], help="broker host name or IP (repeatable)"
    )
    issue.add_argument("--days", type=int, help="validity in days (default depends on kind)")
    issue.add_argument("--force", action="store_true", help="replace an existing key")
    issue.set_defaults(func=_issue)

    revoke = actions.add_parser("revoke", help="revoke an identity and rewrite the CRL")
    revoke.add_argument("name")
    revoke.add_argument("--kind", choices=pki.KINDS, help="when the name exists under two kinds")
    _dir(revoke)
    revoke.set_defaults(func=_revoke)

    listing = actions.add_parser("list", help="show every identity")
    _dir(listing)
    listing.set_defaults(func=_list)


def _dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", type=Path, required=True, help="the PKI directory")


def _init(args: argparse.Namespace) -> int:
    path = pki.init_ca(args.dir, force=args.force, days=args.days)
    print(f"fleet CA written to {path} (key in {pki.ca_key_path(args.dir)}, keep it safe)")
    return 0


def _issue(args: argparse.Namespace) -> int:
    name = args.name or ("broker" if args.kind == "broker" else None)
    if name is None:
        raise PKIError(f"'certs issue {args.kind}' needs a NAME")
    ident = pki.issue(args.dir, args.kind, name, hosts=args.host, days=args.days, force=args.force)
    print(
        f"{ident.kind} {ident.name}: {ident.cert_path} (key {ident.key_path}), "
        f"serial {ident.serial:x}, valid until {ident.not_after:%Y-%m-%d}"
    )
    if ident.kind != "broker":
        print("a running broker learns new identities on SIGHUP (or restart)")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    ident = pki.revoke(args.dir, args.name, args.kind)
    print(
        f"revoked {ident.kind} {ident.name} (serial {ident.serial:x}); CRL rewritten at "
        f"{pki.crl_path(args.dir)}; send SIGHUP to the broker to apply it"
    )
    return 0


def _list(args: argparse.Namespace) -> int:
    pki.load_ca(args.dir)
    table = Table("name", "kind", "serial", "not after", "revoked")
    for ident in pki.identities(args.dir):
        table.add_row(
            ident.name,
            ident.kind,
            f"{ident.serial:x}",
            f"{ident.not_after:%Y-%m-%d}",
            "yes" if ident.revoked else "no",
        )
    Console(width=140).print(table)
    return 0
