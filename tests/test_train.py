"""The training CLI on tiny synthetic data: it learns, it resumes exactly after a kill, it runs under torchrun."""

import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torch.optim.swa_utils import AveragedModel

from conftest import REPO
from model.checkpoint import EpsilonFromV, load_checkpoint
from model.distill import parse_args as distill_args
from model.train import EpochBatches, bias_corrected_ema, lr_factor, main, parse_args

TINY_MODEL = ["--base-channels", "8", "--channel-mults", "1", "2", "--attention-resolutions", "4", "--dropout", "0"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    """16 8×8 images: coloured squares and bars, a fixed dataset small enough to learn in seconds."""
    root = tmp_path_factory.mktemp("shapes")
    for i in range(16):
        img = Image.new("RGB", (8, 8), (20, 20, 20))
        color = (255, 60 + 12 * i, 30) if i % 2 else (30, 200, 255 - 10 * i)
        for p in range(2 + i % 4, 6):
            img.putpixel((p, p if i % 2 else 4), color)
            img.putpixel((p, 3), color)
        img.save(root / f"{i:02d}.png")
    return root


def args_for(shapes: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--dataset", "folder", "--data-root", str(shapes), "--image-size", "8", *TINY_MODEL,
        "--batch-size", "8", "--lr", "1e-3", "--warmup", "10", "--sample-every", "0", "--no-progress",
        "--out", str(out), *extra,
    ]  # fmt: skip


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_short_run_writes_a_loadable_checkpoint_and_its_files(shapes, tmp_path):
    main(
        args_for(
            shapes, tmp_path / "run", "--steps", "6", "--log-every", "2", "--ckpt-every", "3", "--sample-every", "6"
        )
    )
    run = tmp_path / "run"
    ckpt = load_checkpoint(run / "model.safetensors")
    assert (ckpt.dataset, ckpt.step, ckpt.ema, ckpt.config.in_channels, ckpt.config.image_size) == (
        "folder",
        6,
        True,
        3,
        8,
    )
    assert ckpt.config.num_classes == 0  # the folder has no labels
    assert [m["step"] for m in metrics(run)] == [2, 4, 6]
    assert {"loss", "lr", "images_per_s", "grad_norm"} <= set(metrics(run)[0])
    assert list(run.glob("events.out.tfevents.*")), "no TensorBoard log"
    assert (run / "samples" / "grid_0000006.png").stat().st_size > 0
    assert (run / "samples" / "strip_0000006.png").stat().st_size > 0
    assert json.loads((run / "config.json").read_text())["steps"] == 6
    assert not list(run.glob(".*.tmp")), "a temporary file was left behind"


def test_an_unconditional_run_on_labeled_data_names_no_classes(tmp_path):
    argv = ["--dataset", "synthetic", "--no-conditional", "--image-size", "8", *TINY_MODEL, "--batch-size", "4",
            "--steps", "1", "--sample-every", "0", "--no-progress", "--out", str(tmp_path / "run")]  # fmt: skip
    main(argv)
    ckpt = load_checkpoint(tmp_path / "run" / "model.safetensors")
    assert (ckpt.config.num_classes, ckpt.class_names) == (0, [])


def test_a_colour_run_on_class_folders_keeps_their_names_and_its_objective(tmp_path):
    """Class folders → a conditional RGB model naming its classes, trained on v with Min-SNR weighting."""
    root = tmp_path / "pets"
    for c, colour in (("dog", (200, 90, 20)), ("cat", (20, 90, 200))):
        (root / "train" / c).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (8, 8), tuple(v + 10 * i for v in colour)).save(root / "train" / c / f"{i}.png")
    argv = ["--dataset", "imagefolder", "--data-root", str(root), "--image-size", "8", *TINY_MODEL,
            "--batch-size", "4", "--steps", "2", "--prediction", "v", "--min-snr-gamma", "5",
            "--sample-every", "2", "--no-progress", "--out", str(tmp_path / "run")]  # fmt: skip
    main(argv)
    ckpt = load_checkpoint(tmp_path / "run" / "model.safetensors")
    assert ckpt.class_names == ["cat", "dog"] and ckpt.dataset == "imagefolder"
    assert (ckpt.config.in_channels, ckpt.config.num_classes, ckpt.config.prediction) == (3, 2, "v")
    assert isinstance(ckpt.unet, EpsilonFromV)  # served and sampled as an ε-model
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (saved["prediction"], saved["min_snr_gamma"]) == ("v", 5.0)
    assert (tmp_path / "run" / "samples" / "grid_0000002.png").stat().st_size > 0


def test_a_new_run_can_start_from_an_earlier_runs_weights(shapes, tmp_path):
    main(args_for(shapes, tmp_path / "first", "--steps", "3", "--ckpt-every", "3"))
    first = load_file(tmp_path / "first" / "model.safetensors")
    main(args_for(shapes, tmp_path / "second", "--steps", "1", "--lr", "0", "--init-from",
                  str(tmp_path / "first" / "model.safetensors")))  # fmt: skip
    second = load_file(tmp_path / "second" / "model.safetensors")
    assert all(torch.equal(first[k], second[k]) for k in first)  # lr 0: the warm start is all there is
    with pytest.raises(SystemExit, match="is not this run's"):
        main(args_for(shapes, tmp_path / "third", "--steps", "1", "--base-channels", "4", "--init-from",
                      str(tmp_path / "first" / "model.safetensors")))  # fmt: skip


@pytest.mark.slow
def test_a_few_hundred_steps_drive_the_loss_down(shapes, tmp_path):
    main(args_for(shapes, tmp_path / "run", "--steps", "300", "--log-every", "10", "--ckpt-every", "300"))
    losses = [m["loss"] for m in metrics(tmp_path / "run")]
    first, last = sum(losses[:3]) / 3, sum(losses[-5:]) / 5
    assert last < 0.5 * first, f"loss went from {first:.3f} to {last:.3f}"


def _train_cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "model.train", *args], cwd=REPO, env=env)


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_same_weights(shapes, tmp_path):
    common = ["--steps", "100", "--ckpt-every", "25", "--log-every", "25", "--threads", "1", "--seed", "3"]
    straight = _train_cli(*args_for(shapes, tmp_path / "straight", *common))

    killed = _train_cli(*args_for(shapes, tmp_path / "killed", *common))
    state = tmp_path / "killed" / "state.pt"
    deadline = time.monotonic() + 120
    while not state.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    stopped_at = int(torch.load(state, weights_only=True)["step"])
    assert stopped_at < 100, "the run finished before it could be killed"

    resumed = _train_cli(*args_for(shapes, tmp_path / "killed", *common, "--resume"))
    assert resumed.wait(timeout=300) == 0 and straight.wait(timeout=300) == 0
    a = load_file(tmp_path / "straight" / "model.safetensors")
    b = load_file(tmp_path / "killed" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), f"weights differ after resuming from step {stopped_at}"
    assert [m["step"] for m in metrics(tmp_path / "killed")] == list(range(25, 101, 25))


@pytest.mark.slow
def test_torchrun_trains_with_two_gloo_processes(shapes, tmp_path):
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "model.train", *args_for(shapes, run, "--steps", "4", "--ckpt-every", "2", "--log-every", "2")]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in run.glob("*.safetensors")) == ["model.safetensors"]
    assert load_checkpoint(run / "model.safetensors").step == 4
    assert len(torch.load(run / "state.pt", weights_only=True)["rng_cpu"]) == 2  # both processes' RNG states


def test_resume_and_fresh_runs_guard_the_run_folder(shapes, tmp_path):
    with pytest.raises(SystemExit, match=r"no .*state\.pt"):
        main(args_for(shapes, tmp_path / "none", "--steps", "1", "--resume"))
    main(args_for(shapes, tmp_path / "run", "--steps", "1"))
    with pytest.raises(SystemExit, match="already holds a run"):
        main(args_for(shapes, tmp_path / "run", "--steps", "1"))


def test_a_missing_dataset_stops_with_one_clear_line(tmp_path):
    with pytest.raises(SystemExit, match=r"error: mnist not found under .*MNIST/raw/"):
        main(["--dataset", "mnist", "--data-root", str(tmp_path), "--out", str(tmp_path / "run")])


@pytest.mark.parametrize("tool", ["train", "distill", "dmd", "evaluate", "classifier", "visualize grid"])
def test_every_tool_refuses_a_device_it_cannot_run_on_as_a_usage_error(tool, capsys):
    """One --device (model.device.add_device_argument): a wrong name stops the command line with one clear
    line and exit status 2, before anything loads; CUDA asked for where there is none, likewise."""
    module, *command = tool.split()
    main_of_tool = importlib.import_module(f"model.{module}").main
    for name in ["gpu"] if torch.cuda.is_available() else ["gpu", "cuda"]:
        with pytest.raises(SystemExit) as stopped:
            main_of_tool([*command, "--device", name])
        assert stopped.value.code == 2
        assert "error: argument --device:" in capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize("native", [True, False])
def test_bf16_runs_only_where_the_cpu_computes_it_natively(shapes, tmp_path, monkeypatch, capsys, native):
    """A config asking for bf16 autocast (cifar10.json does) trains in float32 on a CPU without AVX512-BF16
    or AMX, where emulated bf16 made a step 12× slower, says so once, and its config.json records it."""
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, probe, lambda native=native: native)
    main(args_for(shapes, tmp_path / "run", "--steps", "1", "--device", "cpu", "--bf16"))
    assert json.loads((tmp_path / "run" / "config.json").read_text())["bf16"] is native
    said = "no native bf16" in capsys.readouterr().err
    assert said is not native


def test_config_file_values_are_defaults_that_flags_override(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"dataset": "fashion-mnist", "steps": 7, "lr": 0.01}))
    args = parse_args(["--config", str(cfg), "--steps", "9"])
    assert (args.dataset, args.steps, args.lr) == ("fashion-mnist", 9, 0.01)
    cfg.write_text(json.dumps({"stepz": 1}))
    with pytest.raises(SystemExit):
        parse_args(["--config", str(cfg)])


def test_the_shipped_configs_are_valid_options():
    """Each shipped config is a training run's or, naming a teacher, a distillation's."""
    configs = sorted((REPO / "checkpoints" / "configs").glob("*.json"))
    for cfg in configs:
        if "teacher" in json.loads(cfg.read_text()):
            args = distill_args(["--config", str(cfg), "--out", "runs/x"])
            assert (REPO / args.teacher).exists() and args.teacher.stem in cfg.name
        else:
            assert parse_args(["--config", str(cfg)]).dataset in cfg.name
    assert len(configs) == 6


def test_batches_are_a_function_of_the_step_and_split_across_processes():
    straight = iter(EpochBatches(10, 4, seed=1, start_step=0))
    first_five = [next(straight) for _ in range(5)]
    assert first_five[3] == next(iter(EpochBatches(10, 4, seed=1, start_step=3)))
    assert first_five[0] != first_five[2]  # a new permutation each epoch (2 batches an epoch)
    halves = [next(iter(EpochBatches(10, 4, 1, 0, rank, 2))) for rank in (0, 1)]
    assert sorted(halves[0] + halves[1]) == sorted(first_five[0])


def test_learning_rate_warms_up_then_decays_by_cosine():
    assert lr_factor(0, 10, 100, 0.1) == pytest.approx(0.1)
    assert lr_factor(9, 10, 100, 0.1) == pytest.approx(1.0)
    assert lr_factor(55, 10, 100, 0.1) == pytest.approx(0.55)
    assert lr_factor(100, 10, 100, 0.1) == pytest.approx(0.1)


def test_the_ema_is_the_normalised_average_of_the_iterates():
    """No share of the initial weights survives, however few the steps."""
    model = torch.nn.Linear(1, 1, bias=False)
    ema = AveragedModel(model, avg_fn=bias_corrected_ema(0.9))
    thetas = [3.0, -1.0, 2.0, 5.0]
    for theta in thetas:
        model.weight.data.fill_(theta)
        ema.update_parameters(model)
    weights = [0.9 ** (len(thetas) - 1 - k) for k in range(len(thetas))]
    expected = sum(w * th for w, th in zip(weights, thetas, strict=True)) / sum(weights)
    assert ema.module.weight.item() == pytest.approx(expected, rel=1e-6)
    for _ in range(200):  # a constant model: the average is that constant
        ema.update_parameters(model)
    assert ema.module.weight.item() == pytest.approx(5.0, rel=1e-6)
