"""What the routes share while the app runs: set up by the app's lifespan, found on app.state."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from starlette.requests import HTTPConnection

from server.jobs import JobBridge
from server.loop import SamplingLoop
from server.metrics import Metrics
from server.registry import ModelRegistry
from server.settings import Settings


@dataclass
class ServerState:
    settings: Settings
    registry: ModelRegistry
    loop: SamplingLoop
    jobs: JobBridge  # the way to the loop from the event loop
    metrics: Metrics
    encoder: ThreadPoolExecutor  # PNG encoding: off the event loop and off the sampling thread

    async def encode(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.encoder, fn, *args)


def get_state(connection: HTTPConnection) -> ServerState:
    return connection.app.state.server
