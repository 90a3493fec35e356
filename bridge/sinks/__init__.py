"""Downstream sinks, one module each, registered by their ``type:`` in ``bridge.yaml``."""
