"""The subcommands; each module has ``add_parser(subparsers)`` that sets ``func``."""

from canvoy.commands import agent, bridge, broker, certs, decode, demo, sim, tail

COMMANDS = (certs, broker, decode, agent, bridge, tail, sim, demo)
