"""The protocol's own errors: identities and envelopes (the rest of the tree is ``canvoy.errors``).

    CanvoyError (canvoy.errors)
     +-- UsageError (canvoy.errors)
     |    +-- InvalidIdentityError (ValueError)  a device/identity name is not allowed
     +-- EnvelopeError (ValueError)          a payload is not a valid, authentic envelope
          +-- OversizeError                  larger than the 128 KiB payload limit
          +-- MalformedError                 not the msgpack structure the protocol defines
          +-- UnsupportedVersionError        a protocol version this code does not speak
          +-- SignatureError                 the signature does not verify
          +-- IdentityMismatchError          topic, envelope and certificate disagree
          +-- UnknownDeviceError             no trusted certificate (unknown or revoked)
          +-- ReplayError                    a sequence number far behind the replay window
          +-- DuplicateError                 an exact redelivery (counted, not an error)

``reason`` on an EnvelopeError is the stable tag the bridge counts and quarantines under.
"""

from __future__ import annotations

from canvoy.errors import CanvoyError, UsageError


class InvalidIdentityError(UsageError, ValueError):
    """A device or identity name does not match the allowed form."""


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
