"""The Ray Serve deployment: the plain server's FastAPI app (server.app.create_app) as the ingress of
every replica, and one replica = one process holding the models and one sampling loop on one device.

A replica is configured the way the plain server is, by DDPM_* environment variables, which the
deployment's runtime_env gives it (`python -m server.ray` sets them from its flags; a config file
for `serve run` / `serve deploy` lists them, see deploy/ray/serve.yaml). The app is unchanged (its
routes, its REST and WebSocket contract, the page), with two additions:
- every answer (a WebSocket: its handshake response) carries the replica's id in the X-Serve-Replica
  header, so a client, a test or a log line can tell the replicas apart;
- the replica's /metrics are copied into Ray's every few seconds: each node's Ray metrics endpoint shows
  every replica's ddpm_* series as ray_ddpm_* gauges tagged with its id, beside Ray's serve_* ones.
  Through the HTTP proxy, /metrics is answered by whichever replica the request reaches (see the header).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from ray import serve
from ray.serve.metrics import Gauge

from server.app import create_app
from server.metrics import Metrics
from server.middleware import AddHeaders
from server.settings import Settings

APP_NAME = "ddpm"
DEPLOYMENT_NAME = "Sampler"
REPLICA_HEADER = "X-Serve-Replica"
METRICS_COPY_INTERVAL_S = 2.0
# room above max_jobs for the requests that hold no sampling place (the page, /config, /metrics,
# /healthz): at max_ongoing_requests Ray queues requests instead of sending them to the replica
MAX_ONGOING_PER_JOB = 2
PROXY_SETTINGS = {"host", "port"}  # where Ray's HTTP proxies listen: nothing a replica uses


def build_asgi_app() -> FastAPI:
    """Called once in each replica: the app, with the settings of the replica's environment only (a
    .env file where the replica happens to run would be a surprise)."""
    settings = Settings(_env_file=None)
    # the server's own log lines (models loaded, jobs failed) go to the replica's log, streamed to the driver
    logging.basicConfig(level=settings.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    app = create_app(settings)
    replica = serve.get_replica_context().replica_tag
    app.add_middleware(AddHeaders, headers={REPLICA_HEADER: replica}, at=("http.response.start", "websocket.accept"))
    serving = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with serving(app):  # models loaded, the sampling loop running
            copying = asyncio.create_task(copy_metrics_to_ray(app.state.server.metrics))
            try:
                yield
            finally:
                copying.cancel()

    app.router.lifespan_context = lifespan
    return app


@serve.deployment(
    name=DEPLOYMENT_NAME,
    max_ongoing_requests=MAX_ONGOING_PER_JOB * Settings.model_fields["max_jobs"].default,
)
@serve.ingress(build_asgi_app)
class Sampler:
    """One replica. Its options (replicas or autoscaling, CPUs or a GPU, the DDPM_* environment) come
    from deployment_options() or from the deployments section of a Serve config file."""


app = Sampler.bind()  # import path server.ray.deployment:app, for `serve run` and config files


def deployment_options(settings: Settings, replicas: tuple[int, int], gpu: bool, threads: int) -> dict:
    """Sampler's options for `replicas` = (min, max) replicas, each on one GPU or on `threads` CPUs."""
    env = {**settings_env(settings), "DDPM_DEVICE": "cuda" if gpu else "cpu"}
    if not gpu:
        env["DDPM_TORCH_THREADS"] = str(threads)
    options = {
        "max_ongoing_requests": MAX_ONGOING_PER_JOB * settings.max_jobs,
        # a replica being removed (scaled down, upgraded) gets to finish the runs it holds
        "graceful_shutdown_timeout_s": settings.request_timeout_s + 10,
        "ray_actor_options": {
            "num_cpus": 1 if gpu else threads,
            "num_gpus": 1 if gpu else 0,
            "runtime_env": {"env_vars": env},
        },
    }
    low, high = replicas
    if low == high:
        options["num_replicas"] = low
        return options
    # Ray's autoscaler adds replicas while the ongoing requests per replica (a WebSocket session is one for
    # its whole run) stay above the target: half the sampling places, so a burst finds room
    options["autoscaling_config"] = {
        "min_replicas": low,
        "max_replicas": high,
        "target_ongoing_requests": max(1, settings.max_jobs // 2),
        "upscale_delay_s": 10,  # a burst of users is a burst: Ray's default waits 30 s
        "downscale_delay_s": 300,
    }
    return options


def settings_env(settings: Settings) -> dict[str, str]:
    """The DDPM_* variables that give a replica these settings: each one set (by a flag, the environment
    or an env file), in the form Settings reads back. Paths are as given: on a cluster of several
    machines each must exist on every node (an image with the checkpoints at the same place)."""
    env = {}
    for name in sorted(settings.model_fields_set - PROXY_SETTINGS):
        value = getattr(settings, name)
        if value is not None:
            env[f"DDPM_{name.upper()}"] = ",".join(value) if isinstance(value, list) else str(value)
    return env


async def copy_metrics_to_ray(metrics: Metrics, interval_s: float = METRICS_COPY_INTERVAL_S) -> None:
    """Every `interval_s`, set a Ray gauge to each sample of the replica's /metrics (Ray names it
    ray_<name> and tags it with the replica, deployment and application)."""
    gauges: dict[str, Gauge] = {}
    while True:
        for family in text_string_to_metric_families(metrics.render().decode()):
            for sample in family.samples:
                gauge = gauges.get(sample.name)
                if gauge is None:
                    gauge = gauges[sample.name] = Gauge(
                        sample.name, description=family.documentation, tag_keys=tuple(sorted(sample.labels))
                    )
                gauge.set(sample.value, tags=sample.labels)
        await asyncio.sleep(interval_s)
