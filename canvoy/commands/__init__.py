"""The subcommands; each module has ``add_parser(subparsers)`` that sets ``func``."""

from canvoy.commands import agent, bridge, broker, certs, dbc, decode, demo, fleet, sim, tail

COMMANDS = (certs, broker, dbc, decode, agent, bridge, fleet, tail, sim, demo)
