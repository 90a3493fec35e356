"""One MQTT 5 connection over mutual TLS, with futures for acknowledgements.

A ``Connection`` lives for one network connection: when it drops, every publish still waiting
for its PUBACK fails with ConnectionLostError and ``closed`` resolves. The owner reconnects by
making a new Connection (with back-off), so paho never re-sends anything on its own and the
caller's store stays the single source of truth for what was acknowledged.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from canvoy.errors import (
    ConnectionLostError,
    ConnectRefusedError,
    PublishRefusedError,
    TransportError,
)

log = logging.getLogger(__name__)

FAILURE = 0x80
Message = paho.MQTTMessage


@dataclass(frozen=True, slots=True, kw_only=True)
class Will:
    """The last will: published by the broker when the connection dies uncleanly."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class Connack:
    """What the broker granted at connect."""

    session_present: bool
    receive_maximum: int
    maximum_packet_size: int = 0  # 0: the broker stated none


PACKET_OVERHEAD_BYTES = 64  # fixed header, packet id, property lengths: more than any of ours
DEFAULT_MAX_PACKET_BYTES = 128 * 1024 + 4096
PACKET_TOO_LARGE = 0x95  # the MQTT 5 reason code


def _reason_value(code: ReasonCode | int) -> int:
    return code.value if isinstance(code, ReasonCode) else int(code)


def _hint(reason: str, tls_error: str) -> str:
    text = f"{reason} ({tls_error})" if tls_error else reason
    lowered = text.lower()
    if "session taken over" in lowered:
        return (
            f"{text}: another connection with this same identity (certificate) took over the "
            "session; give each process and each person an identity of their own "
            "('canvoy certs issue operator NAME')"
        )
    if "revoked" in lowered:
        return f"{text}: this certificate is revoked; issue a new identity"
    if "expired" in lowered:
        return (
            f"{text}: the broker found an expired certificate or CRL: renew this certificate "
            "with 'canvoy certs renew', or, if it is valid, re-sign the broker's CRL with "
            "'canvoy certs crl' and send the broker SIGHUP"
        )
    if "unknown ca" in lowered or "certificate verify failed" in lowered:
        return f"{text}: the certificate is not from this fleet's CA (or the CA file is wrong)"
    if "not authorized" in lowered or "bad user" in lowered:
        return f"{text}: the broker does not know this identity; reload its ACL (SIGHUP)"
    if "eof occurred" in lowered:
        return (
            f"{text}: the broker closed the TLS connection: it refused this client's "
            "certificate (it needs a valid, unrevoked one from this fleet's CA), or its CRL is "
            "past its next update (run 'canvoy certs check' on the CA host)"
        )
    if "certificate" in lowered or "alert" in lowered:
        return f"{text}: the broker refused this certificate"
    return text


class Connection:
    """A single MQTT 5 connection; thread-safe publish with PUBACK futures keyed by message id."""

    def __init__(
        self,
        *,
        client_id: str,
        tls: ssl.SSLContext,
        clean_start: bool = True,
        session_expiry_s: int = 0,
        will: Will | None = None,
        manual_ack: bool = False,
        on_message: Callable[[Message], None] | None = None,
        max_inflight: int = 20,
        receive_maximum: int | None = None,
    ) -> None:
        self.client_id = client_id
        self._clean_start = clean_start
        self._session_expiry_s = session_expiry_s
        self._receive_maximum = receive_maximum
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv5,
            manual_ack=manual_ack,
            reconnect_on_failure=False,
        )
        self._client.tls_set_context(tls)
        self._client.max_inflight_messages_set(max_inflight)
        self._client.max_queued_messages_set(0)
        if will is not None:
            self._client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        self._client.on_subscribe = self._on_subscribe
        self._client.on_log = self._on_log
        if on_message is not None:
            user_callback = on_message
            self._client.on_message = lambda _c, _u, msg: user_callback(msg)
        self._lock = threading.Lock()
        self._pending: dict[int, Future[None]] = {}
        self._early: dict[int, int] = {}
        self._subs: dict[int, Future[list[int]]] = {}
        self._early_subs: dict[int, list[int]] = {}
        self._connack: Future[Connack] = Future()
        self.closed: Future[str] = Future()
        self._last_error = ""
        # Until CONNACK says otherwise: what canvoy's broker accepts (AWS IoT Core's payload limit
        # plus room for the topic and properties).
        self.max_packet_bytes = DEFAULT_MAX_PACKET_BYTES

    # -- lifecycle -------------------------------------------------------------------------

    def connect(
        self, host: str, port: int, *, timeout_s: float = 10.0, keepalive_s: int = 30
    ) -> Connack:
        """Open the connection and wait for CONNACK.

        Raises:
            ConnectRefusedError: the broker refused (bad certificate, not authorized, ...).
            TransportError: the broker cannot be reached in time.
        """
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        if self._session_expiry_s:
            props.SessionExpiryInterval = self._session_expiry_s
        if self._receive_maximum:
            props.ReceiveMaximum = self._receive_maximum
        try:
            self._client.connect(
                host, port, keepalive_s, clean_start=self._clean_start, properties=props
            )
        except ssl.SSLError as exc:
            raise ConnectRefusedError(
                f"TLS handshake with {host}:{port} failed: {_hint(str(exc), '')}", str(exc)
            ) from exc
        except OSError as exc:
            raise TransportError(f"cannot reach broker {host}:{port}: {exc}") from exc
        self._client.loop_start()
        try:
            return self._connack.result(timeout_s)
        except TimeoutError as exc:
            self.close()
            raise TransportError(f"no CONNACK from {host}:{port} within {timeout_s} s") from exc

    def close(self, timeout_s: float = 5.0) -> None:
        """Disconnect cleanly (no last will) and stop the network thread."""
        self._client.disconnect()
        try:
            self.closed.result(timeout_s)
        except TimeoutError:
            log.warning(
                "%s: broker did not confirm the disconnect in %s s", self.client_id, timeout_s
            )
        self._client.loop_stop()

    @property
    def connected(self) -> bool:
        """True while the connection is up."""
        return self._connack.done() and not self.closed.done()

    # -- operations ------------------------------------------------------------------------

    def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> Future[None]:
        """Send one message; the future resolves on PUBACK < 0x80 (at once for QoS 0).

        The future fails with PublishRefusedError for a reason code >= 0x80 and with
        ConnectionLostError when the connection drops first.
        """
        fut: Future[None] = Future()
        size = len(payload) + len(topic.encode()) + PACKET_OVERHEAD_BYTES
        if size > self.max_packet_bytes:
            # Sent, the broker would close the connection: refuse here, the link stays up.
            fut.set_exception(
                PublishRefusedError(
                    f"a {size}-byte packet to {topic!r} is larger than the broker's limit of "
                    f"{self.max_packet_bytes} bytes",
                    PACKET_TOO_LARGE,
                )
            )
            return fut
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            fut.set_exception(
                ConnectionLostError(f"publish to {topic!r} not sent: {paho.error_string(info.rc)}")
            )
            return fut
        if qos == 0:
            fut.set_result(None)
            return fut
        with self._lock:
            # on_publish may have fired before paho's publish() returned.
            early = self._early.pop(info.mid, None)
            if early is None:
                self._pending[info.mid] = fut
        if early is not None:
            self._settle(fut, topic, early)
        return fut

    def subscribe(self, topics: list[tuple[str, int]], *, timeout_s: float = 10.0) -> list[int]:
        """Subscribe and wait for SUBACK; return the granted reason codes.

        Raises:
            TransportError: a subscription was refused (reason >= 0x80) or timed out.
        """
        fut: Future[list[int]] = Future()
        rc, mid = self._client.subscribe(topics)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise TransportError(f"subscribe {topics} not sent: {paho.error_string(rc)}")
        with self._lock:
            early = self._early_subs.pop(mid, None)
            if early is None:
                self._subs[mid] = fut
            else:
                fut.set_result(early)
        try:
            codes = fut.result(timeout_s)
        except TimeoutError as exc:  # a dead link after CONNACK: retried like any lost link
            with self._lock:
                self._subs.pop(mid, None)
            raise ConnectionLostError(f"no SUBACK for {topics} within {timeout_s} s") from exc
        refused = [t for (t, _q), c in zip(topics, codes, strict=False) if c >= FAILURE]
        if refused:
            raise TransportError(f"broker refused subscription to {refused}: check the ACL")
        return codes

    def ack(self, mid: int, qos: int) -> None:
        """Acknowledge a received message (manual-ack mode)."""
        self._client.ack(mid, qos)

    # -- paho callbacks (network thread) ---------------------------------------------------

    def _settle(self, fut: Future[None], topic: str, code: int) -> None:
        if code < FAILURE:
            fut.set_result(None)
        else:
            reason = ReasonCode(PacketTypes.PUBACK, identifier=code).getName()
            fut.set_exception(
                PublishRefusedError(f"broker refused publish to {topic!r}: {reason}", code)
            )

    def _on_connect(
        self, _c: Any, _u: Any, flags: Any, reason: ReasonCode, props: Properties | None
    ) -> None:
        if reason.is_failure:
            self._connack.set_exception(
                ConnectRefusedError(
                    f"broker refused {self.client_id!r}: {_hint(str(reason), self._last_error)}",
                    str(reason),
                )
            )
            return
        receive_max = getattr(props, "ReceiveMaximum", 65535) if props is not None else 65535
        packet_max = int(getattr(props, "MaximumPacketSize", 0) or 0) if props is not None else 0
        if packet_max:
            self.max_packet_bytes = packet_max
        self._connack.set_result(
            Connack(
                session_present=bool(flags.session_present),
                receive_maximum=receive_max,
                maximum_packet_size=packet_max,
            )
        )

    def _on_disconnect(
        self, _c: Any, _u: Any, _flags: Any, reason: ReasonCode, _props: Properties | None
    ) -> None:
        if self._connack.done() and not self._connack.exception():
            # Connected before: the certificate was fine; say what else closes a session.
            text = (
                f"{reason}: the broker closed the connection (its log says why: another "
                "connection with this identity, a packet over its size limit, or a restart)"
            )
            if self._last_error:
                text = f"{text}; {self._last_error}"
        else:
            text = _hint(str(reason), self._last_error)
        if not self._connack.done():
            self._connack.set_exception(
                ConnectRefusedError(
                    f"connection of {self.client_id!r} closed before CONNACK: {text}", text
                )
            )
        with self._lock:
            pending, self._pending = self._pending, {}
            subs, self._subs = self._subs, {}
        for fut in pending.values():
            fut.set_exception(ConnectionLostError(f"connection lost before PUBACK: {text}"))
        for sub in subs.values():
            sub.set_exception(ConnectionLostError(f"connection lost before SUBACK: {text}"))
        if not self.closed.done():
            self.closed.set_result(text)
        # Stop paho's thread from reconnecting: the owner decides when and how.
        self._client.disconnect()

    def _on_publish(
        self, _c: Any, _u: Any, mid: int, reason: ReasonCode, _props: Properties | None
    ) -> None:
        code = _reason_value(reason)
        with self._lock:
            fut = self._pending.pop(mid, None)
            if fut is None:
                self._early[mid] = code
        if fut is not None:
            self._settle(fut, "", code)

    def _on_subscribe(
        self, _c: Any, _u: Any, mid: int, reasons: list[ReasonCode], _props: Properties | None
    ) -> None:
        codes = [_reason_value(r) for r in reasons]
        with self._lock:
            fut = self._subs.pop(mid, None)
            if fut is None:
                self._early_subs[mid] = codes
        if fut is not None:
            fut.set_result(codes)

    def _on_log(self, _c: Any, _u: Any, level: int, text: str) -> None:
        if level == paho.MQTT_LOG_ERR:
            self._last_error = text
            log.debug("%s: %s", self.client_id, text)
