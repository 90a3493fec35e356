"""``canvoy dbc``: list the databases, policies and scenarios canvoy ships, or copy them out."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from canvoy import dbc as shipped


def add_parser(sub: Any) -> None:
    """Register ``canvoy dbc`` and its subcommands."""
    parser = sub.add_parser(
        "dbc",
        help="the databases and policies canvoy ships: list, copy",
        description="The demo vehicle's databases and collection policy ship inside canvoy. "
        "Copy them out to name them where a path is taken (--dbc, --policy) or to edit them.",
        epilog="example:\n  canvoy dbc copy -o . && canvoy decode --dbc demo_vehicle.dbc drive.blf",
    )
    dbc_sub = parser.add_subparsers(dest="dbc_command", required=True, metavar="ACTION")
    listing = dbc_sub.add_parser(
        "list", help="name the shipped files and scenarios", epilog="example:\n  canvoy dbc list"
    )
    listing.set_defaults(func=_list)
    copy = dbc_sub.add_parser(
        "copy",
        help="write copies of shipped files into a folder",
        epilog="example:\n  canvoy dbc copy demo_vehicle.dbc -o mycar/",
    )
    copy.add_argument("names", nargs="*", metavar="NAME", help="files to copy (default: all)")
    copy.add_argument("-o", "--output", type=Path, default=Path("."), help="folder (default: .)")
    copy.add_argument("--force", action="store_true", help="overwrite existing copies")
    copy.set_defaults(func=_copy)


def _list(_args: argparse.Namespace) -> int:
    for name in shipped.names():
        print(name)
    print(f"scenarios: {', '.join(shipped.scenarios())}")
    return 0


def _copy(args: argparse.Namespace) -> int:
    for name in args.names or shipped.names():
        target = shipped.copy(name, args.output, force=args.force)
        print(f"wrote {target}")
    return 0
