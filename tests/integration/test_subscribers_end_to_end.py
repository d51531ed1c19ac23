"""From a real send to a real unsubscribe: the links the sender signs work on our pages, and a
one-click unsubscribe, a bounce or a complaint keeps the address out of the next issue."""

from __future__ import annotations

import base64
import io
import json
import re
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from digest.app import App
from digest.sending.send import send_issue
from digest.web.server import create_app
from subscribers import import_csv
from tests.conftest import DEFAULT_NOW
from tests.support.sending import make_issue, outbox_messages

SLUG = "turkey-unpacked"
CSV = "email,name,newsletters\n" + "".join(
    f"reader{i}@example.com,Reader {i},{SLUG}\n" for i in range(6)
)


def recipients(app: App, issue_id: int) -> list[str]:
    folder = Path(app.settings.delivery.outbox_dir) / SLUG / str(issue_id)
    return sorted(str(m["To"].addresses[0].addr_spec) for m in outbox_messages(folder))


def test_unsubscribed_bounced_and_complained_are_left_out_of_the_next_send(
    any_engine: Engine, make_app: Callable[..., App]
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    public = base64.b64encode(
        key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    ).decode()
    app = make_app(any_engine, env={"SENDGRID_WEBHOOK_PUBLIC_KEY": public})
    with app.session() as session:
        import_csv(session, io.StringIO(CSV), now=DEFAULT_NOW)
    first = make_issue(any_engine, SLUG, period="2026-11-16T05:00:00+00:00")
    assert send_issue(app, first).accepted == 6
    assert recipients(app, first) == [f"reader{i}@example.com" for i in range(6)]

    messages = {
        str(m["To"].addresses[0].addr_spec): m
        for m in outbox_messages(Path(app.settings.delivery.outbox_dir) / SLUG / str(first))
    }
    web = TestClient(create_app(app))
    # reader0 presses Gmail's unsubscribe: a POST to the List-Unsubscribe https URL.
    header = messages["reader0@example.com"]["List-Unsubscribe"]
    assert messages["reader0@example.com"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    link = re.search(r"<https://news\.example\.com(/u/[^>]+)>", header)
    assert link is not None
    answer = web.post(
        link.group(1),
        content=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert answer.status_code == 200
    # reader1 follows the body's preferences link and unticks everything.
    plain = messages["reader1@example.com"].get_body(("plain",))
    assert plain is not None
    text = plain.get_content()
    preferences = re.search(r"https://news\.example\.com(/preferences/\S+)", text)
    assert preferences is not None
    assert web.post(preferences.group(1), data={"action": "save"}).status_code == 200
    # reader2 bounces, reader3 complains (SendGrid's signed webhook).
    events = [
        {
            "email": "reader2@example.com",
            "event": "bounce",
            "type": "bounce",
            "sg_event_id": "b1",
            "timestamp": int(DEFAULT_NOW.timestamp()),
            "digest_newsletter": SLUG,
        },
        {
            "email": "reader3@example.com",
            "event": "spamreport",
            "sg_event_id": "s1",
            "timestamp": int(DEFAULT_NOW.timestamp()),
            "digest_newsletter": SLUG,
        },
    ]
    body = json.dumps(events).encode()
    stamp = str(int(DEFAULT_NOW.timestamp()))
    signature = base64.b64encode(key.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256())))
    hook = web.post(
        "/webhooks/sendgrid",
        content=body,
        headers={
            "X-Twilio-Email-Event-Webhook-Signature": signature.decode(),
            "X-Twilio-Email-Event-Webhook-Timestamp": stamp,
        },
    )
    assert hook.status_code == 200 and hook.json()["applied"] == 2

    second = make_issue(any_engine, SLUG, period="2026-11-23T05:00:00+00:00")
    assert send_issue(app, second).accepted == 2
    assert recipients(app, second) == ["reader4@example.com", "reader5@example.com"]
