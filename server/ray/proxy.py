"""What Ray's HTTP proxies add in front of the replicas, loaded where the cluster's processes have
RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=server.ray.proxy:middlewares in their environment (`python -m
server.ray` sets it for a cluster it starts; on a cluster of your own, set it where `ray start` runs).
Only Starlette, the message schema and the failure table (server.errors) are imported."""

from __future__ import annotations

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.errors import INTERNAL_ERROR
from server.schemas import ErrorMessage

REPLICA_LOST = "the replica running this job stopped before it ended; start it again"


class EndWebSocketsOfLostReplicas:
    """A WebSocket session lives on one replica for its whole run (the proxy forwards the connection to
    the replica chosen at the handshake). If that replica dies mid-run, the proxy's ASGI call returns
    without a close, and uvicorn would drop the TCP connection (the client sees 1006, no reason). This
    sends the server's own error message and closes with 1011, as for a job that failed."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        accepted = ended = False

        async def watched_send(message: Message) -> None:
            nonlocal accepted, ended
            accepted = accepted or message["type"] == "websocket.accept"
            ended = ended or message["type"] == "websocket.close"
            await send(message)

        async def watched_receive() -> Message:
            nonlocal ended
            message = await receive()
            ended = ended or message["type"] == "websocket.disconnect"
            return message

        await self.app(scope, watched_receive, watched_send)
        if accepted and not ended:
            lost = ErrorMessage(kind="error", detail=REPLICA_LOST)
            await send({"type": "websocket.send", "text": lost.model_dump_json()})
            await send({"type": "websocket.close", "code": INTERNAL_ERROR})


def middlewares() -> list[Middleware]:
    """The proxy callback Ray calls once in each proxy."""
    return [Middleware(EndWebSocketsOfLostReplicas)]
