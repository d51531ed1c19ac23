"""Fetching sources: many at once (bounded), politely, with hard limits on time and size.

HTTP(S) goes through httpx with conditional GET (ETag / Last-Modified), redirects and gzip;
anything else is a file path relative to the current directory. A failure is a `FetchResult`
with `error` set, never an exception: one bad source must not stop the others.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx

from digest.config import IngestConfig, Settings

ACCEPT = (
    "application/rss+xml, application/atom+xml, application/feed+json, application/xml;q=0.9, "
    "text/xml;q=0.9, application/json;q=0.8, text/csv;q=0.8, */*;q=0.5"
)


def default_user_agent(settings: Settings) -> str:
    """'digest/0.1.0 (+https://news.example.com)': names the project and whom to contact."""
    if settings.ingest.user_agent:
        return settings.ingest.user_agent
    try:
        version = metadata.version("digest")
    except metadata.PackageNotFoundError:
        version = "dev"
    return f"digest/{version} (newsletter digest; +{settings.site.base_url})"


@cache
def tls_context() -> ssl.SSLContext:
    """httpx's own verifying context, built once per process: loading the CA bundle costs
    about 50 ms, and forked worker processes inherit it instead of each loading it again."""
    return httpx.create_ssl_context()


@dataclass(frozen=True)
class FetchRequest:
    name: str
    url: str  # http(s) URL, file:// URL or a file path
    etag: str | None = None
    last_modified: str | None = None


@dataclass
class FetchResult:
    name: str
    url: str
    content: bytes | None = None
    content_type: str | None = None
    status: int | None = None  # HTTP status; None for files and transport errors
    etag: str | None = None
    last_modified: str | None = None
    not_modified: bool = False  # a 304: nothing to parse
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def is_http(url: str) -> bool:
    return urlsplit(url).scheme.lower() in ("http", "https")


class Fetcher:
    """One HTTP client shared by all fetches of a run; use as an async context manager."""

    def __init__(
        self,
        config: IngestConfig,
        user_agent: str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = config
        self._client = httpx.AsyncClient(
            follow_redirects=True,
            max_redirects=config.max_redirects,
            timeout=httpx.Timeout(config.timeout),
            limits=httpx.Limits(max_connections=config.concurrency),
            headers={"User-Agent": user_agent, "Accept": ACCEPT},
            verify=tls_context(),
            transport=transport,
        )

    async def __aenter__(self) -> Fetcher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.aclose()

    async def fetch_all(self, requests: Sequence[FetchRequest]) -> AsyncIterator[FetchResult]:
        """Every request's result, in the order they finish, at most `concurrency` at a time."""
        gate = asyncio.Semaphore(self.config.concurrency)

        async def bounded(request: FetchRequest) -> FetchResult:
            async with gate:
                return await self.fetch(request)

        tasks = [asyncio.create_task(bounded(r)) for r in requests]
        try:
            for next_done in asyncio.as_completed(tasks):
                yield await next_done
        finally:
            for task in tasks:
                task.cancel()

    async def fetch(self, request: FetchRequest) -> FetchResult:
        if not is_http(request.url):
            return await asyncio.to_thread(read_file, request, self.config.max_bytes)
        try:
            async with asyncio.timeout(self.config.total_timeout):
                return await self._get(request)
        except TimeoutError:
            return _failed(request, f"timed out after {self.config.total_timeout:g}s")
        except httpx.TimeoutException:
            return _failed(request, f"timed out (no data for {self.config.timeout:g}s)")
        except httpx.TooManyRedirects:
            return _failed(request, f"more than {self.config.max_redirects} redirects")
        except httpx.DecodingError as exc:
            return _failed(request, f"could not decompress the response: {exc}")
        except (httpx.ConnectError, httpx.NetworkError) as exc:
            return _failed(request, f"cannot connect: {exc or type(exc).__name__}")
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            return _failed(request, f"{type(exc).__name__}: {exc}")

    async def _get(self, request: FetchRequest) -> FetchResult:
        headers = {}
        if request.etag:
            headers["If-None-Match"] = request.etag
        if request.last_modified:
            headers["If-Modified-Since"] = request.last_modified
        limit = self.config.max_bytes
        async with self._client.stream("GET", request.url, headers=headers) as response:
            result = FetchResult(
                request.name,
                request.url,
                status=response.status_code,
                content_type=response.headers.get("content-type"),
                etag=response.headers.get("etag"),
                last_modified=response.headers.get("last-modified"),
            )
            if response.status_code == 304:
                result.not_modified = True
                result.etag = result.etag or request.etag
                result.last_modified = result.last_modified or request.last_modified
                return result
            if response.status_code >= 400 or response.status_code < 200:
                result.error = f"HTTP {response.status_code} {response.reason_phrase}".strip()
                return result
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit:
                result.error = f"response too large: {int(declared)} bytes (limit {limit})"
                return result
            body = bytearray()
            async for chunk in response.aiter_bytes():  # decompressed: limits gzip bombs too
                body += chunk
                if len(body) > limit:
                    result.error = f"response too large: more than {limit} bytes"
                    return result
            result.content = bytes(body)
            return result


def _failed(request: FetchRequest, message: str) -> FetchResult:
    return FetchResult(request.name, request.url, error=message)


def file_path(url: str) -> Path:
    """A source's file: 'file:///abs/path', or a path relative to the current directory."""
    if url.lower().startswith("file://"):
        return Path(unquote(urlsplit(url).path))
    return Path(url)


def read_file(request: FetchRequest, max_bytes: int) -> FetchResult:
    path = file_path(request.url)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            return _failed(request, f"file too large: {size} bytes (limit {max_bytes})")
        return FetchResult(request.name, request.url, content=path.read_bytes())
    except FileNotFoundError:
        return _failed(request, f"file not found: {path}")
    except OSError as exc:
        return _failed(request, f"cannot read {path}: {exc.strerror or exc}")
