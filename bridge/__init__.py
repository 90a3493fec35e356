"""The cloud bridge: subscribe, verify, and forward to downstream sinks."""
