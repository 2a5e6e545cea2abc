"""bench/gpu_check.py, the one command for a GPU machine, run end to end in its CPU dry run (every size
shrunk): both files written, in the format docs/performance.md describes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))

import gpu_check


@pytest.mark.slow
def test_the_gpu_check_runs_end_to_end_as_a_cpu_dry_run(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "bench/gpu_check.py", "--cpu-dry-run", "--out", str(tmp_path)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["format"] == gpu_check.FORMAT and report["dry_run"] and report["machine"]["gpu"] is None
    parts = report["parts"]
    assert list(parts) == list(gpu_check.PARTS)
    assert {name: part["status"] for name, part in parts.items()} == dict.fromkeys(gpu_check.PARTS, "ok")

    tests = parts["tests"]
    assert "tests/test_cuda.py" in tests["files"] and tests["failed"] == []
    assert tests["skipped"] >= 4 and tests["passed"] == 0  # no CUDA here: every CUDA-only test skips

    train = parts["train"]
    eager, compiled = train["runs"]
    assert eager["status"] == "ok" and eager["images_per_s"] > 0 and math.isfinite(eager["final_loss"])
    assert eager["mfu"] is None  # no peak for a CPU
    assert compiled["status"] == "skipped" and "--compile" in compiled["flags"]
    assert train["forward_gflops_per_image"] > 0 and train["parameters"] > 0

    sampling = parts["sampling"]
    assert sampling["weights"] == "trained by the train part"
    assert [row["variant"] for row in sampling["rows"]] == ["eager fp32"] and sampling["rows"][0]["images_per_s"] > 0

    server = parts["server"]
    sizes = gpu_check.CPU_DRY_RUN
    assert (server["clients"], server["requests"], server["refused"]) == (sizes.clients, sizes.clients, 0)
    assert server["images_per_s"] > 0 and server["first_frame_p50_s"] > 0

    markdown = (tmp_path / "gpu_check.md").read_text()
    assert markdown.startswith("# GPU check (CPU dry run")
    for heading in ("## Training: ddpm-cifar10", "## Sampling: DDIM-5, batch 4", "## Server: 4 WebSocket clients"):
        assert heading in markdown


def test_a_failed_part_is_reported_with_its_error_and_the_others_still_run():
    failed = gpu_check.run_part(lambda: 1 / 0)
    assert failed["status"] == "failed" and failed["error"] == "ZeroDivisionError: division by zero"
    report = {
        "command": "python bench/gpu_check.py --out x", "dry_run": False, "started": "now", "seconds": 1,
        "machine": {"gpu": "NVIDIA H100 80GB HBM3", "cuda": "12.8", "gpu_memory_gib": 79.1, "cpu": "x",
                    "cores": 16, "torch": "2", "python": "3", "peak_bf16_tflops": 989.4},
        "parts": {"tests": failed, "sampling": gpu_check.run_part(lambda: {"rows": []})},
    }  # fmt: skip
    markdown = gpu_check.markdown(report)
    assert "| tests    | failed |" in markdown and "## tests failed" in markdown and "division by zero" in markdown


@pytest.mark.parametrize(
    ("name", "peak"),
    [("NVIDIA H100 80GB HBM3", 989.4), ("NVIDIA H100 PCIe", 756.5), ("NVIDIA H200", 989.4),
     ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA L40S", 362.1), ("NVIDIA L4", 121.0), ("Tesla T4", None)],
)  # fmt: skip
def test_the_bf16_peak_is_looked_up_by_the_gpu_name(name, peak):
    assert gpu_check.peak_bf16_tflops(name) == peak
