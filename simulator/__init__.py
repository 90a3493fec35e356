"""Realistic vehicle traffic from a DBC: drive cycles, faults, responders, fleets."""
