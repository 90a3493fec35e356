"""Mosquitto for canvoy: config and ACL written from the fleet PKI, run in the foreground."""
