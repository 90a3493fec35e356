"""The one exception tree of canvoy; every package raises from here or from ``canvoy.wire.errors``.

    CanvoyError                             exit 1: a runtime failure (unless a subclass below)
     +-- UsageError                          exit 2: fix the command line, a config or a file named
     |    +-- ConfigError (ValueError)       a config file or option is invalid
     |    +-- PKIError                       the fleet PKI cannot do what was asked
     |    +-- DecodeError                    a CAN database or log cannot be used
     |    +-- InvalidIdentityError           (canvoy.wire.errors) a name is not allowed
     +-- BrokerError                         Mosquitto cannot be started or stopped
     +-- TransportError                      talking to the MQTT broker failed
     |    +-- ConnectRefusedError            the broker refused the connection (reason code)
     |    +-- PublishRefusedError            the broker refused a publish (reason >= 0x80)
     |    +-- ConnectionLostError            the connection dropped with publishes in flight
     +-- SinkError                           a downstream sink did not accept a delivery
     |    +-- RecordRefusedError             a sink can never take this record (dead letter)
     +-- StoreError                          the local outbox cannot be used
     +-- EnvelopeError (ValueError)          (canvoy.wire.errors) not a valid, authentic envelope
          +-- OversizeError, MalformedError, UnsupportedVersionError, SignatureError,
              IdentityMismatchError, UnknownDeviceError, ReplayError, DuplicateError

Every message names the bad value and says what to do about it. The command line exits 2 for a
``UsageError`` (the same run fails again until the user changes something they gave) and 1 for
every other ``CanvoyError`` (something failed while running: a broker, a disk, a sink).
"""

from __future__ import annotations


class CanvoyError(Exception):
    """Root of every error canvoy raises on purpose."""


class UsageError(CanvoyError):
    """What was asked cannot be done as asked: an option, a config file or a file it names."""


class ConfigError(UsageError, ValueError):
    """A configuration file, option or value is invalid.

    ``key`` names the field a dataclass check rejected, so that the config reader can put the
    whole path in front of the message (``policy.rules[3].heartbeat_s: must be >= 0``).
    """

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key
        self.problem = message


class PKIError(UsageError):
    """The fleet PKI cannot do what was asked (missing CA, existing key, unknown name)."""


class BrokerError(CanvoyError):
    """Mosquitto cannot be started, or stopped, as configured."""


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


class DecodeError(UsageError):
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
