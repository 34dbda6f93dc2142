"""A real HTTP proxy on loopback, like squid as far as the gateway can tell.

`CONNECT host:port` opens a tunnel (the TLS inside is the client's and the upstream's);
any other method must carry an absolute-form target (`GET http://host:port/path`) and
is forwarded on a new upstream connection. Every request is recorded with its target and
Proxy-Authorization, and every upstream connection by its local port, so a test can
prove that each request an upstream saw came through here.

With `credentials` set, a request without that exact Proxy-Authorization is answered 407
with a body that echoes what was sent, decoded: a chatty proxy the gateway must scrub.
"""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import dataclass, field
from urllib.parse import urlsplit

_HOP_BY_HOP = (
    "proxy-",
    "connection:",
    "keep-alive:",
    "transfer-encoding:",
    "content-length:",
    "te:",
    "upgrade:",
)


@dataclass(frozen=True)
class Seen:
    method: str
    target: str
    proxy_authorization: str | None
    head: str  # the whole request head, as sent


@dataclass
class FakeProxy:
    credentials: str | None = None  # the Proxy-Authorization value required, if any
    seen: list[Seen] = field(default_factory=list)
    upstream_ports: set[int] = field(default_factory=set)
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    async def start(self) -> FakeProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for writer in list(self._writers):
            writer.close()
        await asyncio.sleep(0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while await self._one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Serve one request; False when the client connection is done."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if line:
                headers[name.strip().lower()] = value.strip()
        auth = headers.get("proxy-authorization")
        self.seen.append(Seen(method, target, auth, head.decode("latin-1")))
        if self.credentials is not None and auth != self.credentials:
            await self._refuse(writer, auth)
            return False
        if method == "CONNECT":
            host, port = target.rsplit(":", 1)
            up_reader, up_writer = await self._open(host, int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            return False
        body = await _read_body(reader, headers)
        url = urlsplit(target)
        assert url.scheme == "http" and url.hostname, f"not an absolute-form target: {target}"
        up_reader, up_writer = await self._open(url.hostname, url.port or 80)
        kept = [line for line in lines[1:] if line and not line.lower().startswith(_HOP_BY_HOP)]
        path = url.path + (f"?{url.query}" if url.query else "")
        request = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{line}\r\n" for line in kept)
        request += f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        up_writer.write(request.encode("latin-1") + body)
        answer = await up_reader.read()  # the upstream closes after one answer
        up_writer.close()
        writer.write(answer)
        await writer.drain()
        return True

    async def _open(
        self, host: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        up_reader, up_writer = await asyncio.open_connection(host, port)
        self.upstream_ports.add(int(up_writer.get_extra_info("sockname")[1]))
        self._writers.add(up_writer)
        return up_reader, up_writer

    async def _refuse(self, writer: asyncio.StreamWriter, auth: str | None) -> None:
        decoded = base64.b64decode(auth.split(" ", 1)[-1]).decode() if auth else "nothing"
        message = f"proxy credentials {auth} ({decoded}) refused"
        body = json.dumps({"error": {"message": message, "code": "proxy_auth"}}).encode()
        writer.write(
            b"HTTP/1.1 407 Proxy Authentication Required\r\n"
            b'Proxy-Authenticate: Basic realm="test"\r\nContent-Type: application/json\r\n'
            b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        await writer.drain()


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        parts: list[bytes] = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass  # trailers
                return b"".join(parts)
            parts.append((await reader.readexactly(size + 2))[:-2])
    return await reader.readexactly(int(headers.get("content-length", "0")))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(64 * 1024):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()
