"""server/transport.py subclasses uvicorn's internal protocol classes: these fail loudly, naming what
changed, when the installed uvicorn is not one the subclasses were tested with or lacks a hook they use."""

from __future__ import annotations

import asyncio
import inspect

import pytest
import uvicorn
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState

from server.transport import TESTED_UVICORN, BoundedCloseWebSocketProtocol, DeadlineHttpProtocol

PAIRS = [(DeadlineHttpProtocol, HttpToolsProtocol), (BoundedCloseWebSocketProtocol, WebSocketsSansIOProtocol)]
# what the subclasses read of an instance, besides the methods they override
ATTRIBUTES = {
    HttpToolsProtocol: ["loop", "logger", "transport", "connections", "client"],
    WebSocketsSansIOProtocol: ["loop", "transport", "connections", "client", "writable", "close_sent", "disconnected"],
}


def test_uvicorn_is_a_release_the_transport_was_tested_with():
    series = ".".join(uvicorn.__version__.split(".")[:2])
    assert series in TESTED_UVICORN, (
        f"uvicorn {uvicorn.__version__} is installed; server/transport.py extends its internals and was tested "
        f"with {TESTED_UVICORN}: run tests/test_hardening*.py and tests/test_server_hardening.py with it, then "
        "add it to TESTED_UVICORN and to the pin in pyproject.toml"
    )


@pytest.mark.parametrize(("ours", "base"), PAIRS, ids=lambda c: c.__name__)
def test_every_overridden_hook_exists_in_uvicorn_with_the_same_parameters(ours, base):
    for name, value in vars(ours).items():
        if not inspect.isfunction(value) or name.startswith("_"):
            continue
        assert hasattr(base, name), f"{base.__name__}.{name} is gone: server/transport.py overrides it"
        assert list(inspect.signature(value).parameters) == list(inspect.signature(getattr(base, name)).parameters)


@pytest.mark.parametrize("base", list(ATTRIBUTES), ids=lambda c: c.__name__)
def test_the_attributes_the_subclasses_read_are_uvicorns(base):
    async def app(scope, receive, send):
        pass

    config = Config(app, lifespan="off")
    loop = asyncio.new_event_loop()  # its own: an earlier test may have left no current loop behind
    try:
        protocol = base(config=config, server_state=ServerState(), app_state={}, _loop=loop)
    finally:
        loop.close()
    missing = [name for name in ATTRIBUTES[base] if not hasattr(protocol, name)]
    assert not missing, f"{base.__name__} no longer has {missing}: server/transport.py reads them"
