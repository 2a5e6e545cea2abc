"""`python -m server.ray`: the sampling server on Ray Serve, with the plain server's flags (and its
DDPM_* environment and env file) plus --replicas. Without RAY_ADDRESS it starts a Ray cluster on this
machine and stops it on Ctrl-C; with RAY_ADDRESS (a node of a running cluster, e.g. head-host:6379) it
deploys onto that cluster and removes the application on Ctrl-C. The page and the API are served by
Ray's HTTP proxy at --host:--port, with the same contract as `python -m server`.

    python -m server.ray --replicas 2 --host 127.0.0.1 --port 8000 --device cpu --checkpoints checkpoints/
    RAY_ADDRESS=head-host:6379 python -m server.ray --replicas 1-8 --device cuda --host 0.0.0.0
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import socket
import sys
import time

import ray
from ray import serve

from server.__main__ import add_arguments, browsable_host, settings_from_args
from server.ray.deployment import APP_NAME, Sampler, deployment_options

PROXY_CALLBACK = ("RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH", "server.ray.proxy:middlewares")
# on a busy machine a new proxy can miss Serve's 5 s readiness check three times, and Serve kills it
PROXY_READY_TIMEOUT = ("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "30")

log = logging.getLogger("server.ray")


def replica_range(text: str) -> tuple[int, int]:
    """'N' → (N, N); 'MIN-MAX' → (MIN, MAX), autoscaled."""
    match = re.fullmatch(r"(\d+)(?:-(\d+))?", text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of replicas, or MIN-MAX")
    low, high = int(match.group(1)), int(match.group(2) or match.group(1))
    if not 1 <= low <= high:
        raise argparse.ArgumentTypeError(f"{text!r}: need 1 ≤ MIN ≤ MAX")
    return low, high


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m server.ray", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    parser.add_argument(
        "--replicas",
        type=replica_range,
        default=(1, 1),
        help="N replicas, or MIN-MAX: autoscaled between them on ongoing requests (default 1). Each holds one "
        "GPU (--device cuda, or auto where the cluster has GPUs) or --threads CPUs (default: the CPUs / MAX), "
        "and --max-jobs places",
    )
    dashboard = "Ray's dashboard (http://127.0.0.1:8265), on a cluster started here"
    parser.add_argument("--dashboard", action=argparse.BooleanOptionalAction, default=True, help=dashboard)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    settings = settings_from_args(args)
    # the replicas may run elsewhere: a folder given relative to here, as on this machine's command line
    settings = settings.model_copy(update={"checkpoint_dir": settings.checkpoint_dir.resolve()})
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started_here = not os.environ.get("RAY_ADDRESS")
    if started_here:  # the cluster's processes inherit these: its proxies load server.ray.proxy
        os.environ.setdefault(*PROXY_CALLBACK)
        os.environ.setdefault(*PROXY_READY_TIMEOUT)
    start_ray(args.dashboard, started_here)
    try:
        run(settings, args.replicas, started_here)
    except KeyboardInterrupt:
        pass
    except (ValueError, RuntimeError) as e:  # no room for the replicas, or they could not start
        sys.exit(f"python -m server.ray: {e}")
    finally:
        stop(started_here)


def start_ray(dashboard: bool, started_here: bool) -> None:
    """Start a local cluster, or join RAY_ADDRESS's. On a machine so busy that the node's dashboard agent
    takes more than the 15 s its raylet waits for it (ray-project/ray#65983), the local cluster fails to
    start with a generic timeout: once more, then give up."""
    options = {"include_dashboard": dashboard} if started_here else {}
    try:
        ray.init(logging_level=logging.WARNING, **options)
    except Exception as e:  # Ray raises a bare Exception for it
        if not started_here or "timed out during startup" not in str(e):
            raise
        log.warning("the Ray node did not start (%s); starting it once more", e)
        ray.shutdown()
        ray.init(logging_level=logging.WARNING, **options)


def run(settings, replicas: tuple[int, int], started_here: bool) -> None:
    resources = ray.cluster_resources()
    gpu = replicas_use_gpus(settings.device, resources.get("GPU", 0))
    cpus = int(resources.get("CPU", 1))
    threads = settings.torch_threads or max(1, cpus // replicas[1])
    needed, have = (replicas[0], resources.get("GPU", 0)) if gpu else (replicas[0] * threads, cpus)
    if needed > have:
        message = f"{replicas[0]} replicas need {needed:g} {'GPUs' if gpu else 'CPUs'}; the cluster has {have:g}"
        if started_here:  # nothing will ever add them: Serve would wait for ever
            raise ValueError(message)
        log.warning("%s: waiting for the cluster to grow", message)
    port = settings.port or free_port(settings.host)
    options = deployment_options(settings, replicas, gpu, threads)
    serve.start(http_options={"host": settings.host, "port": port})
    serve.run(Sampler.options(**options).bind(), name=APP_NAME, route_prefix="/")

    how = "started here, stopped on Ctrl-C" if started_here else "joined; the application is removed on Ctrl-C"
    each = "1 GPU" if gpu else f"{threads} CPU thread{'s' * (threads > 1)}"
    count = f"{replicas[0]}" if replicas[0] == replicas[1] else f"{replicas[0]} to {replicas[1]} (autoscaled)"
    print(f"Ray cluster {ray.get_runtime_context().gcs_address} ({how}); {count} replicas of {each} each", flush=True)
    for node in ray.nodes():
        if node["Alive"]:
            address = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
            print(f"Ray metrics (Ray's own, and each replica's as ray_ddpm_*): {address}", flush=True)
    print(f"Open http://{browsable_host(settings.host)}:{port} in your browser", flush=True)
    for stopping in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C or `kill`, also when started in the background
        signal.signal(stopping, signal.default_int_handler)
    while True:
        time.sleep(3600)


def replicas_use_gpus(device: str, cluster_gpus: float) -> bool:
    """One GPU per replica (Ray gives each its own through CUDA_VISIBLE_DEVICES, so it uses "cuda")."""
    if device.startswith("cuda:"):
        raise ValueError(f"--device {device}: Ray gives each replica its own GPU; use --device cuda (or auto)")
    if device == "cuda" and not cluster_gpus:
        raise ValueError("--device cuda: the Ray cluster has no GPU")
    return device == "cuda" or (device == "auto" and cluster_gpus > 0)


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def stop(started_here: bool) -> None:
    if ray.is_initialized():
        if started_here:
            serve.shutdown()
        else:
            serve.delete(APP_NAME)
        ray.shutdown()


if __name__ == "__main__":
    main()
