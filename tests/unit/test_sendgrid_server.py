"""The SendGrid test server, exercised through the real ``sendgrid`` library over HTTP.

The server is the peer every transport test trusts, so it must accept what SendGrid accepts and
refuse, with SendGrid's error shape and the right ``field``, what SendGrid refuses.

Measured validation time of one 1000-personalization body (each with List-Unsubscribe and
List-Unsubscribe-Post headers, one substitution and one custom_arg; 318 KB of JSON), best of
5 runs on the shared dev box (see ``test_validation_time``; run it with ``-s``):
    validate="full"  (jsonschema over everything) ..... 98-102 ms (up to ~170 ms under load)
    validate="rules" (hand-checked personalizations) .. ~7 ms
"""

from __future__ import annotations

import copy
import gzip
import json
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from python_http_client.exceptions import (
    BadRequestsError,
    HTTPError,
    InternalServerError,
    TooManyRequestsError,
    UnauthorizedError,
)
from sendgrid import SendGridAPIClient

from tests.support.sendgrid_server import (
    FORBIDDEN_HEADERS,
    SendGridServer,
    ValidateMode,
    rate_limit_headers,
)

Payload = dict[str, Any]
MODES: tuple[ValidateMode, ...] = ("full", "rules")
REPO = Path(__file__).resolve().parents[2]


def make_payload(n: int = 3, *, start: int = 0) -> Payload:
    """A digest-like send: one personalization per subscriber with its own unsubscribe header."""
    return {
        "from": {"email": "news@example.com", "name": "The Digest"},
        "subject": "Your weekly digest",
        "content": [
            {"type": "text/plain", "value": "Hello. Unsubscribe: -unsub_url-"},
            {"type": "text/html", "value": '<p>Hello.</p><a href="-unsub_url-">Unsubscribe</a>'},
        ],
        "personalizations": [
            {
                "to": [{"email": f"reader{i}@example.org", "name": f"Reader {i}"}],
                "headers": {
                    "List-Unsubscribe": f"<https://example.com/u/{i}>, <mailto:u+{i}@example.com>",
                    "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
                },
                "substitutions": {"-unsub_url-": f"https://example.com/u/{i}"},
                "custom_args": {"subscriber_id": str(i)},
            }
            for i in range(start, start + n)
        ],
        "custom_args": {"issue": "2024-07"},
        "categories": ["digest"],
        "tracking_settings": {"click_tracking": {"enable": False, "enable_text": False}},
    }


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, SendGridServer]]:
    with SendGridServer() as full, SendGridServer(validate="rules") as rules:
        yield {"full": full, "rules": rules}


@pytest.fixture
def sg(servers: dict[str, SendGridServer]) -> SendGridServer:
    servers["full"].reset()
    return servers["full"]


@pytest.fixture(params=MODES)
def sg_mode(request: pytest.FixtureRequest, servers: dict[str, SendGridServer]) -> SendGridServer:
    server = servers[request.param]
    server.reset()
    return server


def client_for(server: SendGridServer, api_key: str = "SG.test") -> SendGridAPIClient:
    client = SendGridAPIClient(api_key=api_key, host=server.url)
    client.client.timeout = 10
    return client


def error_fields(exc: HTTPError) -> list[str | None]:
    return [e["field"] for e in json.loads(exc.body)["errors"]]


def raw_post(server: SendGridServer, data: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    """Bypass the library for what it cannot send (bad JSON, no Authorization header)."""
    req = urllib.request.Request(
        server.url + "/v3/mail/send", data=data, headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


# ---- accepted ------------------------------------------------------------------------------


def test_valid_payload_is_accepted_and_recorded(sg_mode: SendGridServer) -> None:
    sg = sg_mode
    response = client_for(sg).send(make_payload(3))

    assert response.status_code == 202
    assert response.body == b""
    message_id = response.headers["X-Message-Id"]
    assert len(message_id) == 22
    assert sg.accepted_requests == 1
    assert sg.accepted_recipients == 3
    assert sg.recipients() == [f"reader{i}@example.org" for i in range(3)]
    (record,) = sg.requests
    assert record.message_id == message_id
    assert record.status == 202
    assert record.headers["authorization"] == "Bearer SG.test"
    assert record.headers["user-agent"].startswith("sendgrid/")
    assert record.body is not None
    assert record.body["personalizations"][1]["headers"]["List-Unsubscribe"].startswith(
        "<https://example.com/u/1>"
    )
    sg.assert_all_valid()


def test_message_ids_are_unique(sg: SendGridServer) -> None:
    client = client_for(sg)
    ids = {client.send(make_payload(1, start=i)).headers["X-Message-Id"] for i in range(20)}
    assert len(ids) == 20
    assert sorted(sg.message_ids()) == sorted(ids)


def test_sandbox_mode_answers_200(sg: SendGridServer) -> None:
    payload = make_payload(2)
    payload["mail_settings"] = {"sandbox_mode": {"enable": True}}
    response = client_for(sg).send(payload)
    assert response.status_code == 200
    assert response.headers["X-Message-Id"]
    assert sg.requests[0].sandbox


def test_template_without_content_is_accepted(sg: SendGridServer) -> None:
    payload = make_payload(1)
    del payload["content"]
    payload["template_id"] = "d-0123456789abcdef"
    assert client_for(sg).send(payload).status_code == 202


@pytest.mark.parametrize("where", ["to", "cc"])
def test_1000_recipients_accepted_1001_rejected(sg_mode: SendGridServer, where: str) -> None:
    sg = sg_mode
    client = client_for(sg)
    if where == "to":
        ok, too_many = make_payload(1000), make_payload(1001)
    else:  # one personalization, the rest as cc: the limit counts to + cc + bcc
        ok, too_many = make_payload(1), make_payload(1)
        ok["personalizations"][0]["cc"] = [{"email": f"cc{i}@example.org"} for i in range(999)]
        too_many["personalizations"][0]["cc"] = [
            {"email": f"cc{i}@example.org"} for i in range(1000)
        ]

    assert client.send(ok).status_code == 202
    with pytest.raises(BadRequestsError) as info:
        client.send(too_many)

    assert "personalizations" in error_fields(info.value)
    assert sg.accepted_requests == 1
    assert sg.accepted_recipients == 1000
    assert len(sg.rejected) == 1


# ---- rejected by schema or documented rules ------------------------------------------------


def _set(path: str, value: Any) -> Callable[[Payload], None]:
    def mutate(p: Payload) -> None:
        *parents, last = path.split(".")
        node: Any = p
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return mutate


def _del(path: str) -> Callable[[Payload], None]:
    def mutate(p: Payload) -> None:
        *parents, last = path.split(".")
        node: Any = p
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        del node[last]

    return mutate


def _html_first(p: Payload) -> None:
    p["content"].reverse()


def _big_substitutions(p: Payload) -> None:
    p["personalizations"][0]["substitutions"] = {f"-k{i}-": "x" * 100 for i in range(100)}


INVALID: dict[str, tuple[Callable[[Payload], None], str]] = {
    # documented rules the schema does not encode
    "duplicate address, other case": (
        _set("personalizations.2.to.0.email", "READER0@Example.org"),
        "personalizations.2.to.0.email",
    ),
    "duplicate address as bcc": (
        _set("personalizations.1.bcc", [{"email": "reader0@example.org"}]),
        "personalizations.1.bcc.0.email",
    ),
    "header value not a string": (
        _set("personalizations.1.headers.X-Issue", 42),
        "personalizations.1.headers.X-Issue",
    ),
    "message-level header value not a string": (
        _set("headers", {"X-Issue": 42}),
        "headers.X-Issue",
    ),
    "custom_args value not a string": (
        _set("personalizations.0.custom_args.subscriber_id", 7),
        "personalizations.0.custom_args.subscriber_id",
    ),
    "message-level custom_args value not a string": (
        _set("custom_args.issue", 2024),
        "custom_args.issue",
    ),
    "substitutions over 10,000 bytes": (_big_substitutions, "personalizations.0.substitutions"),
    "html before plain": (_html_first, "content.1.type"),
    "no personalizations": (_set("personalizations", []), "personalizations"),
    "reply_to and reply_to_list": (
        lambda p: p.update(
            reply_to={"email": "a@example.com"}, reply_to_list=[{"email": "b@example.com"}]
        ),
        "reply_to_list",
    ),
    "comma in display name": (
        _set("personalizations.0.to.0.name", "Doe, Jane"),
        "personalizations.0.to.0.name",
    ),
    "send_at beyond 72 hours": (_set("send_at", int(time.time()) + 73 * 3600), "send_at"),
    "no content and no template": (_del("content"), "content"),
    # the schema itself
    "missing from": (_del("from"), "from"),
    "missing to": (_del("personalizations.1.to"), "personalizations.1.to"),
    "address without @": (
        _set("personalizations.0.to.0.email", "nobody"),
        "personalizations.0.to.0.email",
    ),
    "empty subject": (_set("personalizations.0.subject", ""), "personalizations.0.subject"),
    "substitution value not a string": (
        _set("personalizations.0.substitutions.-unsub_url-", 1),
        "personalizations.0.substitutions.-unsub_url-",
    ),
    "custom_args as string (patched spec bug)": (_set("custom_args", "issue=1"), "custom_args"),
    "eleven categories": (_set("categories", [f"c{i}" for i in range(11)]), "categories"),
    "send_at not an integer": (
        _set("personalizations.0.send_at", "tomorrow"),
        "personalizations.0.send_at",
    ),
    "to not a list": (_set("personalizations.0.to", {"email": "x@y.z"}), "personalizations.0.to"),
}


@pytest.mark.parametrize("case", list(INVALID), ids=list(INVALID))
def test_invalid_payload_rejected_with_field(sg_mode: SendGridServer, case: str) -> None:
    sg = sg_mode
    mutate, field = INVALID[case]
    payload = make_payload(3)
    mutate(payload)

    with pytest.raises(BadRequestsError) as info:
        client_for(sg).send(payload)

    assert info.value.status_code == 400
    errors = json.loads(info.value.body)["errors"]
    assert field in [e["field"] for e in errors], errors
    assert all(set(e) == {"message", "field", "help"} for e in errors)
    assert sg.accepted_requests == 0
    assert sg.accepted_recipients == 0
    (rejection,) = sg.rejected
    assert field in [v.field for v in rejection.violations]
    with pytest.raises(AssertionError, match=field.split(".")[0]):
        sg.assert_all_valid()


@pytest.mark.parametrize("name", sorted(FORBIDDEN_HEADERS))
@pytest.mark.parametrize("level", ["personalization", "message"])
def test_forbidden_header_rejected(sg: SendGridServer, name: str, level: str) -> None:
    spelled = name.title()  # the check is case-insensitive
    payload = make_payload(2)
    if level == "message":
        payload["headers"] = {spelled: "x"}
        field = f"headers.{spelled}"
    else:
        payload["personalizations"][1]["headers"][spelled] = "x"
        field = f"personalizations.1.headers.{spelled}"

    with pytest.raises(BadRequestsError) as info:
        client_for(sg).send(payload)
    assert field in error_fields(info.value)


@pytest.mark.parametrize("case", list(INVALID), ids=list(INVALID))
def test_both_modes_agree_on_invalid_bodies(servers: dict[str, SendGridServer], case: str) -> None:
    """``rules`` hand-writes the personalization schema; it must refuse the same fields."""
    payload = make_payload(3)
    INVALID[case][0](payload)
    full = {v.field for v in servers["full"].violations(payload)}
    rules = {v.field for v in servers["rules"].violations(payload)}
    assert full == rules


STRUCTURAL: list[Any] = [
    "not a dict",
    {"to": "x@y.z"},
    {"to": [{"name": "no email"}]},
    {"to": [{"email": 5}]},
    {"to": [{"email": "a@b.c", "name": 5}]},
    {"to": [{"email": "a@b.c"}], "cc": [{"email": "c@d.e"}] * 1 + [{"email": "nope"}]},
    {"to": [{"email": "a@b.c"}], "from": {"email": "f"}},
    {"to": [{"email": "a@b.c"}], "subject": 3},
    {"to": [{"email": "a@b.c"}], "headers": ["List-Unsubscribe"]},
    {"to": [{"email": "a@b.c"}], "custom_args": "x"},
    {"to": [{"email": "a@b.c"}], "dynamic_template_data": []},
    {"to": [{"email": "a@b.c"}], "send_at": True},
    {"to": [{"email": "a@b.c"}], "send_at": 1.5},
    {"to": [{"email": "a@b.c"}], "bcc": "x"},
]


@pytest.mark.parametrize("item", STRUCTURAL)
def test_both_modes_agree_on_malformed_personalizations(
    servers: dict[str, SendGridServer], item: Any
) -> None:
    payload = make_payload(1)
    payload["personalizations"].append(copy.deepcopy(item))
    full = {v.field for v in servers["full"].violations(payload)}
    rules = {v.field for v in servers["rules"].violations(payload)}
    assert full, item
    assert full == rules


def test_both_modes_accept_integral_float_send_at(servers: dict[str, SendGridServer]) -> None:
    payload = make_payload(1)
    payload["personalizations"][0]["send_at"] = float(int(time.time()))
    assert servers["full"].violations(payload) == []
    assert servers["rules"].violations(payload) == []


def test_bad_json_is_400(sg: SendGridServer) -> None:
    status, body = raw_post(
        sg,
        b'{"personalizations": [',
        {"Authorization": "Bearer k", "Content-Type": "application/json"},
    )
    assert status == 400
    assert json.loads(body)["errors"][0]["field"] is None
    assert sg.accepted_requests == 0
    assert len(sg.rejected) == 1


def test_gzip_body_is_accepted(sg: SendGridServer) -> None:
    status, _ = raw_post(
        sg,
        gzip.compress(json.dumps(make_payload(2)).encode()),
        {
            "Authorization": "Bearer k",
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
        },
    )
    assert status == 202
    assert sg.accepted_recipients == 2


# ---- requests cut off mid-body (a sender killed while sending) -----------------------------


def _request_head(server: SendGridServer, content_length: int, *extra: str) -> bytes:
    lines = [
        "POST /v3/mail/send HTTP/1.1",
        f"Host: 127.0.0.1:{server.port}",
        "Authorization: Bearer SG.test",
        "Content-Type: application/json",
        f"Content-Length: {content_length}",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.mark.parametrize("sent", [0, 40], ids=["headers only", "part of the body"])
def test_body_cut_off_by_close_is_aborted_not_invalid(sg: SendGridServer, sent: int) -> None:
    """Headers promise more bytes than arrive before the connection closes (FIN)."""
    body = json.dumps(make_payload(2)).encode()
    sg.fail_next(1, status=503)  # an aborted request must not use up a fault: nobody hears it
    with socket.create_connection(("127.0.0.1", sg.port), timeout=5) as sock:
        sock.sendall(_request_head(sg, len(body)) + body[:sent])
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(1024) == b""  # no answer: the server just closes

    assert _eventually(lambda: sg.aborted_requests == 1), sg.rejected
    (aborted,) = sg.aborted
    assert (aborted.expected, aborted.received, aborted.reason) == (len(body), sent, "eof")
    assert aborted.headers["authorization"] == "Bearer SG.test"
    assert sg.rejected == []
    assert (sg.accepted_requests, sg.accepted_recipients, sg.attempts) == (0, 0, 1)
    sg.assert_all_valid()  # a cut-off request is the client's fault, not a schema failure

    client = client_for(sg)  # the server carries on, and the fault is still pending
    with pytest.raises(HTTPError) as info:
        client.send(make_payload(1))
    assert info.value.status_code == 503
    assert client.send(make_payload(1)).status_code == 202
    assert (sg.aborted_requests, sg.accepted_requests) == (1, 1)


def test_body_cut_off_by_reset_is_aborted_not_invalid(sg: SendGridServer) -> None:
    """The connection is reset (RST) while the server waits for the rest of the body."""
    body = json.dumps(make_payload(2)).encode()
    sock = socket.create_connection(("127.0.0.1", sg.port), timeout=5)
    try:
        sock.sendall(_request_head(sg, len(body), "Expect: 100-continue"))
        # 100 Continue: the server has parsed the headers and is about to read the body.
        assert sock.recv(1024).startswith(b"HTTP/1.1 100")
        sock.sendall(body[:40])
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        sock.close()  # with a zero linger time: RST instead of FIN

    assert _eventually(lambda: sg.aborted_requests == 1), sg.rejected
    (aborted,) = sg.aborted
    assert aborted.expected == len(body) and aborted.received <= 40
    assert sg.rejected == []
    assert sg.accepted_requests == 0
    sg.assert_all_valid()


@pytest.mark.parametrize("body", [b'{"personalizations": [', b""], ids=["truncated JSON", "empty"])
def test_complete_but_malformed_body_is_still_invalid(sg: SendGridServer, body: bytes) -> None:
    """All Content-Length bytes arrived: bad JSON is the payload's fault, not an abort."""
    with socket.create_connection(("127.0.0.1", sg.port), timeout=5) as sock:
        sock.sendall(_request_head(sg, len(body), "Connection: close") + body)
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk

    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b"not valid JSON" in answer
    assert sg.aborted_requests == 0
    assert len(sg.rejected) == 1
    assert sg.accepted_requests == 0
    with pytest.raises(AssertionError, match="not valid JSON"):
        sg.assert_all_valid()


# ---- authentication ------------------------------------------------------------------------


def test_missing_authorization_is_401(sg: SendGridServer) -> None:
    status, body = raw_post(
        sg, json.dumps(make_payload(1)).encode(), {"Content-Type": "application/json"}
    )
    assert status == 401
    assert json.loads(body)["errors"][0]["message"]
    assert sg.accepted_requests == 0
    assert sg.rejected[0].status == 401


def test_library_without_key_is_401(sg: SendGridServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no key the library sends "Bearer None"; the real API refuses it and so do we."""
    monkeypatch.delenv("SENDGRID_API_KEY", raising=False)
    client = SendGridAPIClient(api_key=None, host=sg.url)
    with pytest.raises(UnauthorizedError):
        client.send(make_payload(1))


def test_configured_key_is_enforced() -> None:
    with SendGridServer(api_key="SG.right") as sg:
        with pytest.raises(UnauthorizedError) as info:
            client_for(sg, api_key="SG.wrong").send(make_payload(1))
        assert info.value.status_code == 401
        assert client_for(sg, api_key="SG.right").send(make_payload(1)).status_code == 202


# ---- fault injection ------------------------------------------------------------------------


def test_fail_next_429_exposes_rate_limit_reset(sg: SendGridServer) -> None:
    headers = rate_limit_headers(reset_in=2)
    sg.fail_next(1, status=429, headers=headers)
    client = client_for(sg)

    with pytest.raises(TooManyRequestsError) as info:
        client.send(make_payload(2))
    assert info.value.status_code == 429
    assert info.value.headers["X-RateLimit-Reset"] == headers["X-RateLimit-Reset"]
    assert int(info.value.headers["X-RateLimit-Reset"]) >= time.time()
    assert json.loads(info.value.body) == {
        "errors": [{"field": None, "message": "too many requests"}]
    }
    assert sg.accepted_requests == 0

    assert client.send(make_payload(2)).status_code == 202  # the retry goes through
    assert (sg.attempts, sg.accepted_requests, sg.injected_failures) == (2, 1, 1)
    sg.assert_all_valid()


def test_fail_next_retry_after_and_count(sg: SendGridServer) -> None:
    sg.fail_next(2, status=429, headers={"Retry-After": "1"})
    client = client_for(sg)
    for _ in range(2):
        with pytest.raises(TooManyRequestsError) as info:
            client.send(make_payload(1))
        assert info.value.headers["Retry-After"] == "1"
    assert client.send(make_payload(1)).status_code == 202


def test_fail_next_500(sg: SendGridServer) -> None:
    sg.fail_next(1, status=500)
    with pytest.raises(InternalServerError) as info:
        client_for(sg).send(make_payload(1))
    assert info.value.status_code == 500
    assert json.loads(info.value.body)["errors"][0]["field"] is None
    assert sg.accepted_requests == 0


def test_injected_failure_still_validates_body(sg: SendGridServer) -> None:
    sg.fail_next(1, status=503)
    payload = make_payload(1)
    payload["custom_args"] = {"n": 1}
    with pytest.raises(HTTPError) as info:
        client_for(sg).send(payload)
    assert info.value.status_code == 503
    assert sg.rejected[0].violations[0].field == "custom_args.n"


def test_delay_next_causes_client_timeout(sg: SendGridServer) -> None:
    sg.delay_next(1, seconds=1.0)
    client = client_for(sg)
    client.client.timeout = 0.2
    started = time.monotonic()
    with pytest.raises((TimeoutError, urllib.error.URLError)):
        client.send(make_payload(1))
    assert time.monotonic() - started < 0.9

    # Like the real API, the abandoned request is still processed: the duplicate-send hazard.
    deadline = time.monotonic() + 5
    while sg.accepted_requests == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sg.accepted_requests == 1
    client.client.timeout = 10
    assert client.send(make_payload(1, start=5)).status_code == 202


def test_delay_next_with_status_is_not_accepted(sg: SendGridServer) -> None:
    sg.delay_next(1, seconds=0.1, status=504)
    with pytest.raises(HTTPError) as info:
        client_for(sg).send(make_payload(1))
    assert info.value.status_code == 504
    assert sg.accepted_requests == 0


def test_reject_address_names_the_field(sg: SendGridServer) -> None:
    sg.reject_address("Reader2@example.org", times=1)
    client = client_for(sg)
    with pytest.raises(BadRequestsError) as info:
        client.send(make_payload(4))
    assert error_fields(info.value) == ["personalizations.2.to.0.email"]
    assert sg.accepted_requests == 0
    assert sg.rejected == []  # injected, not an invalid request
    assert client.send(make_payload(4)).status_code == 202  # `times` used up


def test_fail_when_predicate(sg: SendGridServer) -> None:
    sg.fail_when(lambda body: len(body["personalizations"]) > 2, status=413)
    client = client_for(sg)
    with pytest.raises(HTTPError) as info:
        client.send(make_payload(3))
    assert info.value.status_code == 413
    assert client.send(make_payload(2)).status_code == 202
    sg.clear_faults()
    assert client.send(make_payload(3, start=10)).status_code == 202


# ---- bookkeeping ------------------------------------------------------------------------------


def test_keep_bodies_false_keeps_counts_only() -> None:
    with SendGridServer(keep_bodies=False, validate="rules") as sg:
        client = client_for(sg)
        for batch in range(3):
            client.send(make_payload(10, start=batch * 10))
        assert (sg.accepted_requests, sg.accepted_recipients) == (3, 30)
        assert all(r.body is None for r in sg.requests)
        with pytest.raises(RuntimeError):
            sg.recipients()


def test_concurrent_senders_are_all_counted(sg: SendGridServer) -> None:
    errors: list[BaseException] = []

    def send(batch: int) -> None:
        try:
            client_for(sg).send(make_payload(50, start=batch * 50))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(b,)) for b in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert (sg.accepted_requests, sg.accepted_recipients) == (8, 400)
    assert len(set(sg.recipients())) == 400


def test_other_paths_and_methods(sg: SendGridServer) -> None:
    with pytest.raises(HTTPError) as info:
        client_for(sg).client.mail.send.get()
    assert info.value.status_code == 405
    with pytest.raises(HTTPError) as info:
        client_for(sg).client.mail.batch.post(request_body={})
    assert info.value.status_code == 404
    assert sg.attempts == 0


def test_standalone_main_serves() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.sendgrid_server", "--port", "0", "--quiet"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        response = SendGridAPIClient(api_key="SG.test", host=url).send(make_payload(1))
        assert response.status_code == 202
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# ---- cost -------------------------------------------------------------------------------------
