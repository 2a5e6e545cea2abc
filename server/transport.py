"""uvicorn's HTTP and WebSocket protocols, with the two deadlines uvicorn does not have.

- A request must arrive whole (request line, headers and body) within `read_timeout_s` of its first
  byte, and a new connection must start one within that time: otherwise the connection is dropped.
  uvicorn itself only times out idle keep-alive connections, so a client that sends half its
  headers, or nothing at all, would hold a connection (and a file descriptor) for ever.
- Once the application is done with a WebSocket, its connection is closed within `linger_s`, and
  at once if the client has stopped reading: asyncio's transport.close() waits until the write
  buffer has drained, which for a client that reads nothing is never.

`protocols(settings)` gives the two classes to pass to uvicorn.Config(http=..., ws=...).
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from server.settings import Settings


class DeadlineHttpProtocol(HttpToolsProtocol):
    read_timeout_s = 10.0

    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def handle_websocket_upgrade(self) -> None:
        self._disarm()  # the WebSocket protocol takes over the connection
        super().handle_websocket_upgrade()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._deadline is None:
            self._deadline = self.loop.call_later(self.read_timeout_s, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.logger.info("dropping a connection whose request did not arrive within %g s", self.read_timeout_s)
            self.transport.abort()  # the application, if it was reading the body, sees a disconnect


class BoundedCloseWebSocketProtocol(WebSocketsSansIOProtocol):
    linger_s = 10.0

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
    """The HTTP and WebSocket protocol classes, with the settings' deadlines."""
    http = type("HttpProtocol", (DeadlineHttpProtocol,), {"read_timeout_s": settings.request_read_timeout_s})
    ws = type("WebSocketProtocol", (BoundedCloseWebSocketProtocol,), {"linger_s": settings.ws_send_timeout_s})
    return http, ws
