"""The one exception tree of canvoy; every package raises from here or from ``canvoy.wire.errors``.

    CanvoyError
     +-- ConfigError (ValueError)            a config file or option is invalid
     +-- PKIError                            the fleet PKI cannot do what was asked
     +-- BrokerError                         Mosquitto cannot be configured or started
     +-- TransportError                      talking to the MQTT broker failed
     |    +-- ConnectRefusedError            the broker refused the connection (reason code)
     |    +-- PublishRefusedError            the broker refused a publish (reason >= 0x80)
     |    +-- ConnectionLostError            the connection dropped with publishes in flight
     +-- DecodeError                         a CAN database or log cannot be used
     +-- SinkError                           a downstream sink did not accept a delivery
     |    +-- RecordRefusedError             a sink can never take this record (dead letter)
     +-- StoreError                          the local outbox cannot be used
     +-- (canvoy.wire.errors, the protocol's own errors)
          InvalidIdentityError (ValueError)  a device/identity name is not allowed
          EnvelopeError (ValueError)         a payload is not a valid, authentic envelope
           +-- OversizeError, MalformedError, UnsupportedVersionError, SignatureError,
               IdentityMismatchError, UnknownDeviceError, ReplayError, DuplicateError

Every message names the bad value and says what to do about it.
"""

from __future__ import annotations


class CanvoyError(Exception):
    """Root of every error canvoy raises on purpose."""


class ConfigError(CanvoyError, ValueError):
    """A configuration file, option or value is invalid.

    ``key`` names the field a dataclass check rejected, so that the config reader can put the
    whole path in front of the message (``policy.rules[3].heartbeat_s: must be >= 0``).
    """

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key
        self.problem = message


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


class DecodeError(CanvoyError):
    """A CAN database or log file cannot be used."""


class SinkError(CanvoyError):
    """A downstream sink (file, webhook, MQTT, NATS) did not durably accept a delivery."""


class RecordRefusedError(SinkError):
    """A sink can never take this record (too large, refused with a 4xx, unencodable).

    ``keys`` names the refused records when the sink knows them; empty means all it was given.
    """

    def __init__(self, message: str, keys: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.keys = keys


class StoreError(CanvoyError):
    """The local outbox cannot be used."""
