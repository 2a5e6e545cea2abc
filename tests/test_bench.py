"""The benchmarks are scripts, not tests; these only keep them running as the code under them changes:
each one, with the smallest settings, prints its machine line and a full table."""

from __future__ import annotations

import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))

import bench_clients
import bench_sampling
import bench_train


def table_rows(output: str) -> list[list[str]]:
    lines = [line for line in output.splitlines() if line.startswith("|")]
    assert len(lines) >= 3 and set(lines[1]) <= {"|", "-"}, output
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def test_bench_sampling_compares_with_diffusers(capsys):
    pytest.importorskip("diffusers")
    bench_sampling.main(["--runs", "ddim:3,ddpm:2", "--batch", "2", "--repeats", "1", "--checkpoint", "none"])
    output = capsys.readouterr().out
    assert "machine: " in output and "random 'tiny' model" in output
    rows = table_rows(output)
    assert [row[1] for row in rows] == ["ddim (ours)", "ddim (diffusers loop)", "ddpm (ours)"]
    assert float(rows[1][-1]) < 1e-4  # the same images as diffusers' DDIMScheduler, to float32 rounding


def test_bench_sampling_times_the_nchw_weights_beside_ours(capsys):
    args = ["--runs", "ddim:3", "--batch", "2", "--repeats", "2", "--checkpoint", "none", "--no-diffusers"]
    bench_sampling.main([*args, "--nchw", "--guidance", "2"])
    rows = table_rows(capsys.readouterr().out)
    assert [row[1] for row in rows] == ["ddim (ours)", "ddim (ours, NCHW weights)"]
    assert float(rows[1][-1]) < 1e-4  # the same function in another memory layout


def test_bench_train_notes_gpu_options_on_the_cpu(capsys):
    bench_train.main(["--batch", "4", "--steps", "1", "--warmup", "1", "--repeats", "1", "--device", "cpu", "--bf16"])
    captured = capsys.readouterr()
    assert "--bf16: for CUDA devices only; ignored on cpu" in captured.err
    assert [row[1] for row in table_rows(captured.out)] == ["eager fp32"]


def test_bench_train_times_a_distillation_step_beside_training(capsys):
    bench_train.main(["--batch", "2", "--steps", "1", "--warmup", "1", "--repeats", "1", "--device", "cpu",
                      "--objectives", "ddpm,progressive"])  # fmt: skip
    assert [row[0] for row in table_rows(capsys.readouterr().out)] == ["ddpm", "progressive"]


@pytest.mark.slow
def test_bench_clients_against_a_server_it_starts(capsys):
    bench_clients.main(["--clients", "1,2", "--rounds", "1", "--steps", "2", "--n", "1", "--device", "cpu",
                        "--checkpoint", "none"])  # fmt: skip
    rows = table_rows(capsys.readouterr().out)
    assert [(row[1], row[2], row[-1]) for row in rows] == [("1", "1", "0"), ("2", "2", "0")]


@pytest.mark.slow
def test_soak_mixes_every_kind_of_client_and_finds_nothing_broken(capsys):
    import soak

    assert soak.main(["--duration", "4", "--clients", "2", "--checkpoint", "none"]) == 0
    output = capsys.readouterr().out
    assert "answers breaking the contract: 0" in output and "jobs left in the loop: 0" in output
    assert "server memory (RSS)" in output
    actions = {f"{kind} {what}" for kind, what in [("rest", "sample"), ("rest", "abandoned"), ("rest", "malformed"),
               ("ws", "run"), ("ws", "cancelled"), ("ws", "aborted"), ("ws", "malformed")]}  # fmt: skip
    assert {row[0] for row in table_rows(output)} <= actions
