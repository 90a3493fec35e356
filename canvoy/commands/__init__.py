"""The subcommands; each module has ``add_parser(subparsers)`` that sets ``func``."""

from canvoy.commands import agent, bridge, broker, certs, dbc, decode, demo, sim, tail

COMMANDS = (certs, broker, dbc, decode, agent, bridge, tail, sim, demo)
