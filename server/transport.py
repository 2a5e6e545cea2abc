"""uvicorn's HTTP and WebSocket protocols, with the limits uvicorn does not have.

- A request must arrive whole (request line, headers and body) within `read_timeout_s` of its first
  byte, and a new connection must start one within that time, or the connection is dropped: uvicorn
  only times out idle keep-alive connections, so a client that sends half its headers, or nothing at
  all, would hold a connection (and a file descriptor) for ever.
- A request head (request line and headers) larger than `max_head_bytes` is answered 431 as soon as it
  passes that size, before the parser has buffered it: httptools (llhttp) has no such limit, and
  uvicorn none for it (h11's `h11_max_incomplete_event_size` is for h11, which would need these
  deadlines written again for its own callbacks).
- One client address may hold at most `max_connections_per_client` connections; one more drops its
  oldest idle one (no whole request head yet, or a WebSocket that has sent no message), or itself if
  none is idle: a client's idle sockets cannot pile up to the process's file limit, and its own next
  request still gets through. Connections from `trusted_proxies` carry many clients: not counted.
- A WebSocket the application is done with is closed within `linger_s`, and at once if the client has
  stopped reading: asyncio's transport.close() waits for the write buffer to drain, for such a client never.

These extend uvicorn's internal classes, whose hooks (the parser's callbacks, run_asgi) are not a public
API: TESTED_UVICORN names the uvicorn releases they are tested with, and pyproject.toml pins it.
`protocols(settings)` gives the two classes to pass to uvicorn.Config(http=..., ws=...).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from server.settings import Settings

TESTED_UVICORN = ("0.55",)  # release series (major.minor) the subclasses below are tested against
HEAD_END = b"\r\n\r\n"


class ClientLimit:
    """The per-address connection cap, shared by the HTTP and WebSocket protocols of one server. It
    reads uvicorn's own set of open connections (each protocol's `client`), so it keeps no count."""

    def __init__(self, per_client: int, trusted: list[str]):
        self.per_client = per_client
        self.anyone = "*" in trusted
        self.trusted = []
        for item in trusted:
            with contextlib.suppress(ValueError):  # not a network: "*", or a name
                self.trusted.append(ipaddress.ip_network(item, strict=False))

    def admit(self, protocol) -> bool:
        """Whether the connection `protocol` just made may stay; it may first drop an idle one."""
        host = protocol.client[0] if protocol.client else None
        if host is None or self.anyone or self._trusted(host):
            return True
        same = [c for c in protocol.connections if c is not protocol and c.client and c.client[0] == host]
        if len(same) < self.per_client:
            return True
        idle = [c for c in same if getattr(c, "idle_since", None) is not None]
        if not idle:
            protocol.logger.info("refusing a connection from %s: it has %d open already", host, len(same))
            return False
        min(idle, key=lambda c: c.idle_since).transport.abort()
        return True

    def _trusted(self, host: str) -> bool:
        with contextlib.suppress(ValueError):
            address = ipaddress.ip_address(host)
            return any(address in network for network in self.trusted)
        return False


class DeadlineHttpProtocol(HttpToolsProtocol):
    read_timeout_s = 10.0
    max_head_bytes = 32_768
    client_limit: ClientLimit | None = None

    _deadline: asyncio.TimerHandle | None = None
    _head_bytes: int | None = 0  # of the request head being received; None once the parser has it whole
    _tail = b""  # the last bytes of the head so far: its end may straddle two reads
    _refused = False
    idle_since: float | None = None  # while no request head has arrived whole (ClientLimit may drop it)

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.idle_since = time.monotonic()
        if self.client_limit is not None and not self.client_limit.admit(self):
            transport.abort()
            return
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # read and dropped: the client gets its 431 whole, not a reset
        if self._head_bytes is not None:
            seen = self._tail + data
            end = seen.find(HEAD_END)
            self._head_bytes += len(data) if end < 0 else end + len(HEAD_END) - len(self._tail)
            self._tail = seen[-(len(HEAD_END) - 1) :]
            if self._head_bytes > self.max_head_bytes:
                self._refuse_head()
                return
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._head_bytes, self.idle_since = None, None
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        self._head_bytes, self._tail = 0, b""
        super().on_message_complete()

    def handle_websocket_upgrade(self) -> None:
        self._disarm()  # the WebSocket protocol takes over the connection
        super().handle_websocket_upgrade()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _refuse_head(self) -> None:
        self._refused = True
        self.logger.info("refusing a request whose head is larger than %d bytes", self.max_head_bytes)
        text = f"the request line and headers are larger than {self.max_head_bytes} bytes".encode()
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(text), text)
        )
        if self.transport.can_write_eof():
            # the answer, then our end closed; what the client still sends is dropped until it closes,
            # or the read deadline: closing now would reset the connection and lose the answer
            self.transport.write_eof()
            self._arm()
        else:
            self.transport.close()

    def _arm(self) -> None:
        if self._deadline is None:
            self._deadline = self.loop.call_later(self.read_timeout_s, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if self._refused:
            self.transport.abort()  # the 431 has had its time to be read
        elif not self.transport.is_closing():
            self.logger.info("dropping a connection whose request did not arrive within %g s", self.read_timeout_s)
            self.transport.abort()  # the application, if it was reading the body, sees a disconnect


class BoundedCloseWebSocketProtocol(WebSocketsSansIOProtocol):
    linger_s = 10.0

    idle_since: float | None = None  # until the client sends anything after its handshake
    _handshake_fed = False

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.idle_since = time.monotonic()  # the HTTP protocol admitted it already (ClientLimit)

    def data_received(self, data: bytes) -> None:
        if self._handshake_fed:
            self.idle_since = None
        self._handshake_fed = True  # the first bytes are the handshake, passed on by the HTTP protocol
        super().data_received(data)

    async def run_asgi(self) -> None:
        await super().run_asgi()
        if self.transport.is_closing() and not self.writable.is_set():
            self.transport.abort()  # the client reads nothing: what is buffered will never leave
        else:
            self.loop.call_later(self.linger_s, self._abort_if_open)

    def pause_writing(self) -> None:
        super().pause_writing()
        if self.close_sent or self.transport.is_closing():
            self.transport.abort()  # closing, and the client has stopped reading

    def _abort_if_open(self) -> None:
        if not self.disconnected:
            self.transport.abort()


def protocols(settings: Settings) -> tuple[type, type]:
    """The HTTP and WebSocket protocol classes, with the settings' deadlines and limits."""
    http_options = {"read_timeout_s": settings.request_read_timeout_s, "max_head_bytes": settings.max_header_bytes}
    http_options["client_limit"] = ClientLimit(settings.max_connections_per_client, settings.trusted_proxies)
    http = type("HttpProtocol", (DeadlineHttpProtocol,), http_options)
    ws = type("WebSocketProtocol", (BoundedCloseWebSocketProtocol,), {"linger_s": settings.ws_send_timeout_s})
    return http, ws
