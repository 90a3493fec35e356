"""The one exception tree of canvoy; every package raises from here.

    CanvoyError
     +-- ConfigError (ValueError)            a config file or option is invalid
     +-- InvalidIdentityError (ValueError)   a device/identity name is not allowed
     +-- PKIError                            the fleet PKI cannot do what was asked
     +-- BrokerError                         Mosquitto cannot be configured or started
     +-- TransportError                      talking to the MQTT broker failed
     |    +-- ConnectRefusedError            the broker refused the connection (reason code)
     |    +-- PublishRefusedError            the broker refused a publish (reason >= 0x80)
     |    +-- ConnectionLostError            the connection dropped with publishes in flight
     +-- EnvelopeError (ValueError)          a payload is not a valid, authentic envelope
     |    +-- OversizeError                  larger than the 128 KiB payload limit
     |    +-- MalformedError                 not the msgpack structure the protocol defines
     |    +-- UnsupportedVersionError        a protocol version this code does not speak
     |    +-- SignatureError                 the signature does not verify
     |    +-- IdentityMismatchError          topic, envelope and certificate disagree
     |    +-- UnknownDeviceError             no trusted certificate (unknown or revoked)
     |    +-- ReplayError                    a sequence number far behind the replay window
     |    +-- DuplicateError                 an exact redelivery (counted, not an error)
     +-- DecodeError                         a CAN database or log cannot be used
     +-- SinkError                           a downstream sink did not accept a delivery
     +-- StoreError                          the local outbox cannot be used

Every message names the bad value and says what to do about it.
"""

from __future__ import annotations


class CanvoyError(Exception):
    """Root of every error canvoy raises on purpose."""


class ConfigError(CanvoyError, ValueError):
    """A configuration file, option or value is invalid."""


class InvalidIdentityError(CanvoyError, ValueError):
    """A device or identity name does not match the allowed form."""


class PKIError(CanvoyError):
    """The fleet PKI cannot do what was asked (missing CA, existing key, unknown name)."""


class BrokerError(CanvoyError):
    """Mosquitto cannot be configured or started."""


class TransportError(CanvoyError):
    """Talking to the MQTT broker failed."""


class ConnectRefusedError(TransportError):
    """The broker refused the connection; ``reason`` is the MQTT 5 reason string."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason


class PublishRefusedError(TransportError):
    """The broker acknowledged a publish with a reason code >= 0x80."""

    def __init__(self, message: str, reason_code: int) -> None:
        super().__init__(message)
        self.reason_code = reason_code


class ConnectionLostError(TransportError):
    """The connection dropped while publishes were waiting for acknowledgement."""


class EnvelopeError(CanvoyError, ValueError):
    """A payload is not a valid, authentic envelope; ``reason`` is a short stable tag."""

    reason = "malformed"


class OversizeError(EnvelopeError):
    """The payload exceeds the protocol's size limit."""

    reason = "oversize"


class MalformedError(EnvelopeError):
    """The payload is not the msgpack structure the protocol defines."""

    reason = "malformed"


class UnsupportedVersionError(EnvelopeError):
    """The envelope's version is not one this code speaks."""

    reason = "unknown_version"


class SignatureError(EnvelopeError):
    """The signature does not verify with the device's key."""

    reason = "bad_signature"


class IdentityMismatchError(EnvelopeError):
    """The topic, the envelope and the certificate name different devices."""

    reason = "identity_mismatch"


class UnknownDeviceError(EnvelopeError):
    """No trusted certificate for the device: never seen, not from the fleet CA, or revoked."""

    def __init__(self, message: str, reason: str = "unknown_device") -> None:
        super().__init__(message)
        self.reason = reason


class ReplayError(EnvelopeError):
    """A sequence number far behind the device's replay window."""

    reason = "replay"


class DuplicateError(EnvelopeError):
    """An envelope already seen (a QoS 1 redelivery): dropped and counted, not quarantined."""

    reason = "duplicate"


class DecodeError(CanvoyError):
    """A CAN database or log file cannot be used."""


class SinkError(CanvoyError):
    """A downstream sink (file, webhook, MQTT, NATS) did not durably accept a delivery."""


class StoreError(CanvoyError):
    """The local outbox cannot be used."""
