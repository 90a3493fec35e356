"""MQTT 5 over mutual TLS: the one small paho-mqtt wrapper that agent, bridge and tail use."""
