"""Browser fixtures: Debian's chromium driven by playwright, and the web app served by uvicorn.

No browser is ever downloaded: playwright launches `/usr/bin/chromium` (or $DIGEST_CHROMIUM).
On CI a missing chromium fails the test; on a workstation without it the test is skipped.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from digest.app import App
from digest.web.server import create_app

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
STARTUP_SECONDS = 15


def chromium_executable() -> str:
    """The chromium binary, or fail (CI) / skip (elsewhere) saying how to get it."""
    candidate = os.environ.get("DIGEST_CHROMIUM") or "/usr/bin/chromium"
    found = candidate if Path(candidate).is_file() else shutil.which("chromium")
    if found:
        return found
    message = (
        f"chromium not found at {candidate} (install Debian's package: apt-get install chromium)"
    )
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@dataclass
class LiveServer:
    url: str
    app: App


@pytest.fixture
def serve() -> Iterator[Any]:
    """serve(app) → a LiveServer: uvicorn in a thread on a free 127.0.0.1 port."""
    servers: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(app: App) -> LiveServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))  # the kernel picks a free port: safe under pytest-xdist
        port = sock.getsockname()[1]
        config = uvicorn.Config(
            create_app(app),
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=2,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        servers.append((server, thread))
        deadline = time.monotonic() + STARTUP_SECONDS
        while not server.started:  # readiness, not a timing assumption
            if not thread.is_alive() or time.monotonic() > deadline:
                pytest.fail("uvicorn did not start")
            time.sleep(0.02)
        return LiveServer(url=f"http://127.0.0.1:{port}", app=app)

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """One headless chromium per test module (each test gets its own context)."""
    executable = chromium_executable()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def browser_page(chromium: Any) -> Iterator[Any]:
    """A chromium page that can only reach 127.0.0.1; script errors and CSP refusals are
    collected in `page.problems` (blocked remote images are expected and not collected)."""
    context = chromium.new_context(viewport={"width": 1600, "height": 1000})
    page = context.new_page()
    problems: list[str] = []
    page.problems = problems  # type: ignore[attr-defined]
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on(
        "console",
        lambda m: (
            problems.append(m.text)
            if m.type == "error" and "Content Security Policy" in m.text
            else None
        ),
    )
    page.route(
        "**/*",
        lambda route: (
            route.continue_()
            if route.request.url.startswith("http://127.0.0.1:")
            else route.abort()
        ),
    )
    try:
        yield page
    finally:
        context.close()
