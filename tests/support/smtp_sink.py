"""A minimal SMTP sink: accepts every message, keeps what tests ask for, offers PIPELINING
and CHUNKING (BDAT, RFC 3030).

aiosmtpd does not advertise PIPELINING and parses each message; this answers a whole
pipelined group with one write and only looks for the end of DATA, so that in benchmarks the
sink is not the bottleneck. In a thread for tests (`SmtpSink`), or a process for benchmarks:
`python -m tests.support.smtp_sink PORT` (prints `ready` and, on stdin EOF, the count).
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from dataclasses import dataclass, field

_EHLO = b"250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 104857600\r\n"
_EHLO_CHUNKING = _EHLO.replace(b"250-8BITMIME", b"250-CHUNKING\r\n250-8BITMIME")
_END = b"\r\n.\r\n"


@dataclass
class SinkState:
    keep: bool = False  # keep each message's envelope and bytes (tests)
    answer_delay: float = 0.0  # seconds before answering the end of DATA
    chunking: bool = True  # offer CHUNKING (BDAT)
    refuse: dict[bytes, bytes] = field(default_factory=dict)  # RCPT address → reply line
    messages: int = 0
    chunked: int = 0  # of which came by BDAT
    connections: int = 0
    pipelined_groups: int = 0  # reads that held MAIL, RCPT and DATA (or BDAT) together
    kept: list[tuple[bytes, list[bytes], bytes]] = field(default_factory=list)
    sessions: list[_Session] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Session(asyncio.Protocol):
    def __init__(self, state: SinkState) -> None:
        self.state = state
        self.buffer = b""
        self.in_data = False
        self.scanned = 0  # how much of a message's bytes were searched for its end already
        self.chunk_left: int | None = None  # bytes of the current BDAT chunk still to come
        self.chunk_last = False
        self.chunks: list[bytes] = []
        self.sender = b""
        self.recipients: list[bytes] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.state.connections += 1
        self.state.sessions.append(self)
        transport.write(b"220 sink ESMTP\r\n")

    def data_received(self, data: bytes) -> None:
        commands = not self.in_data and self.chunk_left is None
        if (
            commands
            and b"MAIL" in data
            and b"RCPT" in data
            and (b"DATA" in data or b"BDAT" in data)
        ):
            self.state.pipelined_groups += 1
        self.buffer += data
        self._process()

    def _process(self) -> None:
        replies: list[bytes] = []
        while True:
            if self.chunk_left is not None:
                done = self._chunk(replies)
                if done is None:
                    break
                replies = done
                continue
            if self.in_data:
                empty = self.buffer.startswith(b".\r\n")
                end = 0 if empty else self.buffer.find(_END, max(0, self.scanned - 4))
                if end < 0:
                    self.scanned = len(self.buffer)  # look only at what arrives next
                    break
                self.scanned = 0
                size = 3 if end == 0 else end + len(_END)
                message, self.buffer = self.buffer[: max(0, end) + 2], self.buffer[size:]
                self.in_data = False
                self._flush(replies)
                replies = []
                self._accepted(message if end else b"")
                continue
            line, found, rest = self.buffer.partition(b"\r\n")
            if not found:
                break
            self.buffer = rest
            reply = self._command(line)
            if reply is None:
                self._flush(replies)
                assert self.transport is not None
                self.transport.write(b"221 bye\r\n")
                self.transport.close()
                return
            if reply:
                replies.append(reply)
        self._flush(replies)

    def _chunk(self, replies: list[bytes]) -> list[bytes] | None:
        """Take BDAT bytes; None while the chunk is incomplete, else the replies still due."""
        assert self.chunk_left is not None
        taken = self.buffer[: self.chunk_left]
        self.buffer = self.buffer[len(taken) :]
        self.chunks.append(taken)
        self.chunk_left -= len(taken)
        if self.chunk_left:
            return None
        self.chunk_left = None
        if not self.chunk_last:
            return [*replies, b"250 chunk ok\r\n"]
        message, self.chunks = b"".join(self.chunks), []
        if not self.recipients:
            return [*replies, b"554 no valid recipients\r\n"]
        self._flush(replies)
        self.state.chunked += 1
        self._accepted(message)
        return []

    def _command(self, line: bytes) -> bytes | None:
        verb = line[:4].upper()
        if verb == b"EHLO":
            return _EHLO_CHUNKING if self.state.chunking else _EHLO
        if verb == b"MAIL":
            self.sender, self.recipients = line[10:].strip(), []
            return b"250 ok\r\n"
        if verb == b"RCPT":
            address = line[8:].strip()
            refusal = self.state.refuse.get(address.strip(b"<>"))
            if refusal:
                return refusal + b"\r\n"
            self.recipients.append(address)
            return b"250 ok\r\n"
        if verb == b"BDAT":
            size, _, last = line[5:].strip().partition(b" ")
            self.chunk_left, self.chunk_last = int(size), last.upper() == b"LAST"
            return b""  # answered once the chunk is in
        if verb == b"DATA":
            if not self.recipients:
                return b"554 no valid recipients\r\n"
            self.in_data = True
            return b"354 go on\r\n"
        if verb == b"QUIT":
            return None
        return b"250 ok\r\n"  # HELO, RSET, NOOP

    def _accepted(self, message: bytes) -> None:
        state = self.state
        with state.lock:
            state.messages += 1
            number = state.messages
            if state.keep:
                state.kept.append((self.sender, self.recipients, message))
        reply = b"250 2.0.0 queued as %d\r\n" % number
        if state.answer_delay:
            asyncio.get_running_loop().call_later(state.answer_delay, self._write, reply)
        else:
            self._write(reply)

    def _write(self, reply: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(reply)

    def _flush(self, replies: list[bytes]) -> None:
        if replies:
            self._write(b"".join(replies))


class SmtpSink:
    """The sink in a background thread of this process, on 127.0.0.1 and a free port."""

    def __init__(self, **state: object) -> None:
        self.state = SinkState(**state)  # type: ignore[arg-type]
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> SmtpSink:
        async def serve() -> asyncio.Server:
            return await self._loop.create_server(lambda: _Session(self.state), "127.0.0.1", 0)

        self._thread.start()
        server = asyncio.run_coroutine_threadsafe(serve(), self._loop).result(5)
        self.port = int(server.sockets[0].getsockname()[1])
        self._server = server
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def drop_connections(self) -> None:
        """Close every client connection, as a server does with idle ones."""

        def drop() -> None:
            for session in list(self.state.sessions):
                if session.transport is not None:
                    session.transport.close()

        self._loop.call_soon_threadsafe(drop)
        time.sleep(0.2)

    def recipients(self) -> list[str]:
        with self.state.lock:
            return [r.strip(b"<>").decode() for _, rcpts, _ in self.state.kept for r in rcpts]


def _main(port: int) -> None:
    """Serve on `port` until stdin closes, then print how many messages arrived."""

    async def run() -> None:
        state = SinkState()
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Session(state), "127.0.0.1", port)
        print("ready", flush=True)
        await loop.run_in_executor(None, sys.stdin.read)
        server.close()
        print(state.messages, flush=True)

    asyncio.run(run())


if __name__ == "__main__":
    _main(int(sys.argv[1]))
