"""Webhook deliveries follow Standard Webhooks: a receiver using the package verifies them."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from standardwebhooks import Webhook

from canvoy.bridge.records import Record
from canvoy.bridge.sinks.webhook import WebhookConfig, WebhookSink, signed_headers
from canvoy.errors import ConfigError
from tests.agentkit import REPO
from tests.bridgekit import WEBHOOK_SECRET, WebhookReceiver
from tests.conftest import free_port
from tests.waiting import wait_for


def _sink(tmp_path: Path, url: str, secret: str = WEBHOOK_SECRET) -> WebhookSink:
    secret_file = tmp_path / "secret"
    secret_file.write_text(secret + "\n")
    config = WebhookConfig(
        url=url, secret_file=secret_file, dead_letter=tmp_path / "dead", max_elapsed_s=0
    )
    return WebhookSink("desk", config)


def test_the_receiver_accepts_deliveries_and_rejects_a_tampered_one(
    tmp_path: Path, webhook: WebhookReceiver
) -> None:
    sink = _sink(tmp_path, webhook.url)
    records = [
        Record(f"car-1:ab:{i}", "car-1", "events", {"code": "P0217", "i": i}) for i in range(3)
    ]
    sink.deliver(records)
    sink.close()
    assert sink.delivered == 3 and sink.dead_lettered == 0
    assert [r.verified for r in webhook.requests] == [True, True, True]
    first = webhook.requests[0]
    assert first.headers["webhook-id"] == first.headers["Idempotency-Key"] == "car-1:ab:0"
    assert first.headers["webhook-signature"].startswith("v1,")
    # The same headers on a changed body, and the body with another id: both refused.
    headers = {k: v for k, v in first.headers.items() if k.lower().startswith("webhook-")}
    tampered = first.body.replace(b"P0217", b"P0000")
    assert httpx.post(webhook.url, content=tampered, headers=headers).status_code == 401
    other = {**headers, "webhook-id": "car-1:ab:9"}
    assert httpx.post(webhook.url, content=first.body, headers=other).status_code == 401
    assert [r.verified for r in webhook.requests[3:]] == [False, False]


def test_a_delivery_signed_with_another_secret_is_refused_and_dead_lettered(
    tmp_path: Path, webhook: WebhookReceiver
) -> None:
    other = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY"  # base64 of 24 other bytes
    sink = _sink(tmp_path, webhook.url, other)
    sink.deliver([Record("car-1:ab:1", "car-1", "events", {"x": 1})])
    sink.close()
    assert [r.verified for r in webhook.requests] == [False]
    assert sink.dead_lettered == 1  # a 401 is not retried: it goes to the dead letters


@pytest.mark.parametrize("secret", ["s3cret", "whsec_not base64!", "whsec_AAAA", ""])
def test_a_secret_that_is_not_a_standard_webhooks_secret_is_refused(
    tmp_path: Path, secret: str
) -> None:
    with pytest.raises(ConfigError, match=r"sinks.desk.secret_file .* whsec_<base64"):
        _sink(tmp_path, "http://127.0.0.1:9/", secret)


def test_the_receiver_in_security_md_accepts_deliveries_and_rejects_tampered_ones(
    tmp_path: Path,
) -> None:
    text = (REPO / "docs" / "SECURITY.md").read_text()
    block = text.split("<!-- example:webhook-receiver -->\n```python\n", 1)[1].split("```", 1)[0]
    port = free_port()
    (tmp_path / "receiver.py").write_text(block.replace("8080", str(port)))
    (tmp_path / "webhook-secret").write_text(WEBHOOK_SECRET + "\n")
    receiver = subprocess.Popen(
        [sys.executable, "receiver.py"], cwd=tmp_path, stdout=subprocess.PIPE, text=True
    )
    try:
        url = f"http://127.0.0.1:{port}/"

        def listening() -> bool:
            try:
                httpx.post(url, content=b"{}")
            except httpx.TransportError:
                return False
            return True

        wait_for(listening, timeout_s=15, what="the receiver listening")
        sink = _sink(tmp_path, url)
        ticket = {"ticket_id": "car-1:0123456789abcdef", "status": "open"}
        sink.deliver([Record("car-1:0123456789abcdef:open", "car-1", "tickets", ticket)])
        sink.deliver([Record("car-1:0123456789abcdef:open", "car-1", "tickets", ticket)])
        sink.close()
        assert (sink.delivered, sink.dead_lettered) == (2, 0)
        # A tampered delivery: refused.
        body = b'{"ticket_id":"car-1:0123456789abcdef","status":"closed"}'
        headers = signed_headers(Webhook(WEBHOOK_SECRET), "k", body, time.time())
        assert httpx.post(url, content=body, headers=headers).status_code == 204
        tampered = body.replace(b"closed", b"open!!")
        assert httpx.post(url, content=tampered, headers=headers).status_code == 401
        stale = signed_headers(Webhook(WEBHOOK_SECRET), "k2", body, time.time() - 600)
        assert httpx.post(url, content=body, headers=stale).status_code == 401
    finally:
        receiver.terminate()
        out, _ = receiver.communicate(timeout=10)
    # Printed once each: the redelivery of the same webhook-id is recognised.
    assert out.splitlines() == ["car-1:0123456789abcdef open", "car-1:0123456789abcdef closed"]
