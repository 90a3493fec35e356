"""The ``canvoy`` command line: one entry point, one module per subcommand."""

__version__ = "0.1.0"
