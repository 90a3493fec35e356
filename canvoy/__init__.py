"""canvoy: vehicle telemetry from the CAN bus to the cloud.

The root package holds what every part shares: the version, the error tree (``canvoy.errors``) and
the YAML-to-dataclass config reader (``canvoy.config``). The parts live in subpackages:
``canvoy.agent``, ``canvoy.bridge``, ``canvoy.wire``, ``canvoy.transport``, ``canvoy.broker``,
``canvoy.certs``, ``canvoy.simulator`` and ``canvoy.dbc`` (the shipped databases); the command line
is ``canvoy.cli`` and ``canvoy.commands``, and nothing outside them imports them.
"""

__version__ = "0.2.0"
