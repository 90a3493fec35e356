"""The subcommands; each module has ``add_parser(subparsers)`` that sets ``func``."""

from canvoy.commands import agent, broker, certs, decode

COMMANDS = (certs, broker, decode, agent)
