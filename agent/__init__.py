"""The in-vehicle agent: ingest, decode, policy, batch, sign, store and publish."""
