"""``type: webhook``: signed HTTP POSTs of JSON to a CRM or service-order system.

Each record is one POST signed by the Standard Webhooks scheme (standardwebhooks.com), so a
receiver verifies it with that project's libraries: ``webhook-id`` (the record key, the same on
every retry; also sent as ``Idempotency-Key``), ``webhook-timestamp`` (Unix seconds of this
attempt) and ``webhook-signature: v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`` with
the shared secret, which the secret file holds as ``whsec_<base64>``. Failures are retried with
exponential back-off and jitter for up to ``max_elapsed_s``; then the request goes to the
dead-letter directory, from which ``canvoy bridge redeliver`` sends it again (signed anew). A
dead letter on disk counts as accepted.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from standardwebhooks import Webhook
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential,
    wait_random,
)

from canvoy.bridge.records import Record
from canvoy.bridge.sinks.base import SinkContext, register
from canvoy.config import build
from canvoy.errors import ConfigError, SinkError

log = logging.getLogger(__name__)
SECRET_PREFIX = "whsec_"


@dataclass(frozen=True, slots=True, kw_only=True)
class WebhookConfig:
    """Where to POST, the shared secret, and how long to keep trying."""

    url: str
    secret_file: Path
    dead_letter: Path
    timeout_s: float = 10.0
    max_elapsed_s: float = 300.0
    retry_min_s: float = 0.5
    retry_max_s: float = 30.0

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"url {self.url!r} must start with http:// or https://")
        if self.timeout_s <= 0:
            raise ConfigError(f"timeout_s: {self.timeout_s} must be > 0")
        if self.max_elapsed_s < 0 or self.retry_min_s <= 0:
            raise ConfigError("max_elapsed_s must be >= 0 and retry_min_s > 0")


def read_secret(path: Path, name: str) -> Webhook:
    """The signer for the ``whsec_<base64>`` secret in ``path``.

    Raises:
        ConfigError: the file is missing, empty or not a Standard Webhooks secret.
    """
    try:
        text = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"sinks.{name}.secret_file: cannot read {path}: {exc}") from exc
    problem = (
        f"sinks.{name}.secret_file {path} does not hold a Standard Webhooks secret: it must "
        "read whsec_<base64 of 24 to 64 random bytes>; 'canvoy bridge init --webhook-secret-file' "
        "writes one"
    )
    if not text.startswith(SECRET_PREFIX):
        raise ConfigError(problem)
    try:
        key = base64.b64decode(text[len(SECRET_PREFIX) :], validate=True)
    except ValueError as exc:
        raise ConfigError(problem) from exc
    if not 24 <= len(key) <= 64:
        raise ConfigError(problem)
    return Webhook(key)


def new_secret() -> str:
    """A fresh ``whsec_`` secret (24 random bytes)."""
    return SECRET_PREFIX + base64.b64encode(os.urandom(24)).decode()


def signed_headers(signer: Webhook, key: str, body: bytes, now: float) -> dict[str, str]:
    """The headers of one delivery attempt of ``body``: Standard Webhooks, signed at ``now``."""
    timestamp = datetime.fromtimestamp(int(now), UTC)
    return {
        "Content-Type": "application/json",
        "Idempotency-Key": key,
        "webhook-id": key,
        "webhook-timestamp": str(int(now)),
        "webhook-signature": signer.sign(key, timestamp, body.decode()),
    }


class _RetryableError(Exception):
    """A failure worth another attempt (connection error, 5xx, 408, 429)."""


class WebhookSink:
    """POSTs records one by one; each either reaches a 2xx or lands in the dead-letter dir."""

    def __init__(self, name: str, config: WebhookConfig) -> None:
        """Read the secret and prepare the client.

        Raises:
            ConfigError: the secret file is missing or empty.
        """
        self.name = name
        self.config = config
        self._signer = read_secret(config.secret_file, name)
        self._client = httpx.Client(timeout=config.timeout_s)
        self.delivered = 0
        self.dead_lettered = 0

    def post(self, key: str, body: bytes) -> httpx.Response:
        """One signed POST (no retries).

        Raises:
            httpx.HTTPError: the request failed on the network.
        """
        headers = signed_headers(self._signer, key, body, time.time())
        return self._client.post(self.config.url, content=body, headers=headers)

    def _attempt(self, key: str, body: bytes) -> None:
        try:
            response = self.post(key, body)
        except httpx.HTTPError as exc:
            raise _RetryableError(f"{type(exc).__name__}: {exc}") from exc
        if response.is_success:
            return
        if response.status_code >= 500 or response.status_code in (408, 429):
            raise _RetryableError(f"HTTP {response.status_code}")
        raise SinkError(f"HTTP {response.status_code}: {response.text[:200]}")

    def deliver(self, records: Sequence[Record]) -> None:
        """POST each record; dead-letter what does not get through in ``max_elapsed_s``.

        Raises:
            SinkError: a dead letter could not be written either.
        """
        c = self.config
        for record in records:
            body = record.json().encode()
            retrying = Retrying(
                retry=retry_if_exception_type(_RetryableError),
                stop=stop_after_delay(c.max_elapsed_s),
                wait=wait_exponential(
                    multiplier=c.retry_min_s, min=c.retry_min_s, max=c.retry_max_s
                )
                + wait_random(0, c.retry_min_s),
                before_sleep=lambda s: log.warning(
                    "sink %s: POST %s failed (%s); retrying",
                    self.name,
                    c.url,
                    s.outcome.exception() if s.outcome else "?",
                ),
            )
            try:
                retrying(self._attempt, record.key, body)
                self.delivered += 1
            except RetryError as exc:
                last = exc.last_attempt.exception()
                self._dead_letter(record.key, body, f"gave up after {c.max_elapsed_s} s: {last}")
            except SinkError as exc:
                self._dead_letter(record.key, body, f"refused: {exc}")

    def _dead_letter(self, key: str, body: bytes, reason: str) -> None:
        folder = self.config.dead_letter
        path = folder / f"{time.time_ns()}-{key.replace(':', '_')}.json"
        letter = {"url": self.config.url, "key": key, "reason": reason, "body": json.loads(body)}
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            with tmp.open("w") as out:
                json.dump(letter, out)
                out.flush()
                os.fsync(out.fileno())
            tmp.replace(path)
        except OSError as exc:
            raise SinkError(f"sink {self.name}: cannot write dead letter {path}: {exc}") from exc
        self.dead_lettered += 1
        log.error("sink %s: %s %s; dead letter %s", self.name, key, reason, path)

    def redeliver(self) -> tuple[int, int]:
        """POST every dead letter once more; return (delivered, still failing)."""
        done = failed = 0
        for path in sorted(self.config.dead_letter.glob("*.json")):
            letter = json.loads(path.read_text())
            body = json.dumps(letter["body"], separators=(",", ":"), default=str).encode()
            try:
                self._attempt(letter["key"], body)
            except (_RetryableError, SinkError) as exc:
                failed += 1
                log.error("redeliver %s: %s", path.name, exc)
                continue
            path.unlink()
            done += 1
        return done, failed

    def close(self) -> None:
        """Close the HTTP client."""
        self._client.close()


@register("webhook")
def _make(name: str, options: Mapping[str, Any], _context: SinkContext) -> WebhookSink:
    return WebhookSink(name, build(WebhookConfig, options, f"sinks.{name}"))
