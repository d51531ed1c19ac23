"""DKIM: a message sent by the SMTP transport with [dkim] set verifies with dkimpy, against
the public key a stub DNS lookup returns; an edited List-Unsubscribe-Post does not."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import make_settings
from tests.integration.test_smtp import Handler, _batch, _transport, smtp_server  # noqa: F401


def test_a_signed_message_verifies_and_an_edit_breaks_it(
    tmp_path: Path,
    smtp_server: Callable[..., tuple[Handler, int]],  # noqa: F811
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    asked: list[bytes] = []

    def dns(name: bytes, timeout: int = 5) -> bytes:
        asked.append(name)
        return b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)

    handler, port = smtp_server()
    settings = make_settings(
        tmp_path,
        "sqlite://",
        {
            "delivery": {"transport": "smtp"},
            "smtp": {"host": "127.0.0.1", "port": port, "security": "none", "timeout": 5},
            "dkim": {"selector": "news2026", "domain": "example.com"},
        },
        env={"DIGEST_DKIM_PRIVATE_KEY": pem},
    )
    transport = _transport(settings)
    assert all(r.accepted for r in transport.send(_batch(settings, 2)))
    transport.close()
    for _, _, raw in handler.messages:
        message = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        assert message.startswith(b"DKIM-Signature:")
        assert b"list-unsubscribe-post" in message.split(b"\r\n\r\n")[0]
        assert dkim.verify(message, dnsfunc=dns)
        edited = message.replace(b"List-Unsubscribe-Post: List-Unsubscribe=One-Click",
                                 b"List-Unsubscribe-Post: List-Unsubscribe=Two-Click")  # fmt: skip
        assert edited != message and not dkim.verify(edited, dnsfunc=dns)
    assert set(asked) == {b"news2026._domainkey.example.com."}
