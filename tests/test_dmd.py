"""Distribution matching (model/dmd.py) on tiny models: G moves exactly when the teacher's score and the
fake score of G's outputs disagree, a killed run resumes to the same weights, and the result is a student
that samples as its start did. What it does to the shipped students' FID: docs/results.md."""

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_unet
from model.checkpoint import save_checkpoint
from model.dmd import DistributionMatching, main, parse_args
from model.formats import load_model
from model.schedule import NoiseSchedule
from model.unet import UNet, UNetConfig

SAMPLING = {"sampler": "ddim", "steps": 2, "spacing": "trailing", "eta": 0.0}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny class-conditional ε-teacher and a v-predicting student of it that takes w, with its sampler."""
    folder = tmp_path_factory.mktemp("dmd")
    schedule, classes = NoiseSchedule.from_name("linear"), list("0123456789")
    teacher = tiny_unet(num_classes=10, image_size=16)
    save_checkpoint(folder / "teacher.safetensors", teacher, schedule, "mnist", classes)
    student = UNet(UNetConfig.from_dict({**teacher.config.to_dict(), "guidance_input": True, "prediction": "v"}))
    student.load_state_dict(tiny_unet(num_classes=10, image_size=16, seed=1).state_dict(), strict=False)
    distillation = {"method": "progressive distillation", "teacher": "teacher.safetensors"}
    save_checkpoint(folder / "student.safetensors", student, schedule, "mnist", classes, 100,
                    sampling=SAMPLING, distillation=distillation)  # fmt: skip
    return folder


def flags(models, out, *more):
    return ["--teacher", str(models / "teacher.safetensors"), "--student", str(models / "student.safetensors"),
            "--out", str(out), "--batch-size", "4", "--threads", "1", *more]  # fmt: skip


def test_the_generator_moves_only_where_the_two_scores_differ(models, tmp_path):
    """At w = 1 the real score is the teacher's conditional ε, and the fake score starts as a copy of the
    teacher: the distribution-matching gradient is exactly 0 and G's weights stay. At w = 3 they differ."""
    for w, moves in ((1.0, False), (3.0, True)):
        torch.manual_seed(0)
        dmd = DistributionMatching(parse_args(flags(models, tmp_path, "--guidance", str(w), str(w))))
        before = [p.detach().clone() for p in dmd.gen.parameters()]
        losses = dmd.step()
        changed = any(not torch.equal(a, b) for a, b in zip(before, dmd.gen.parameters(), strict=True))
        assert changed == moves and (losses["loss_g"] > 0) == moves, (w, losses)
        assert losses["loss_fake"] > 0  # the fake score learns G's outputs either way


def test_a_killed_run_resumes_to_the_same_weights(models, tmp_path):
    main(flags(models, tmp_path / "straight", "--iters", "4", "--ckpt-every", "2"))
    main(flags(models, tmp_path / "resumed", "--iters", "2", "--ckpt-every", "2", "--log-every", "1"))
    with pytest.raises(SystemExit, match="pass --resume"):
        main(flags(models, tmp_path / "resumed", "--iters", "4"))
    log = tmp_path / "resumed" / "metrics.jsonl"
    log.write_text(log.read_text() + '{"step": 3, "loss_g": 0, "loss_fake": 0, "s": 0}\n')  # logged, then killed
    main(flags(models, tmp_path / "resumed", "--iters", "4", "--ckpt-every", "2", "--log-every", "1", "--resume"))
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2, 3, 4]
    assert json.loads(log.read_text().splitlines()[2])["loss_g"] > 0  # step 3 as the resumed run took it
    straight = load_file(tmp_path / "straight" / "model.safetensors")
    resumed = load_file(tmp_path / "resumed" / "model.safetensors")
    assert straight.keys() == resumed.keys() and all(torch.equal(straight[k], resumed[k]) for k in straight)
    start = load_file(models / "student.safetensors")
    assert any(not torch.equal(start[k], straight[k]) for k in start)


def test_the_result_is_a_student_with_its_sampler_and_provenance(models, tmp_path):
    main(flags(models, tmp_path, "--iters", "2", "--snapshot-every", "2"))
    student = load_model(tmp_path / "model.safetensors")
    assert student.sampling == SAMPLING and student.config.guidance_input and student.step == 2
    assert student.distillation["teacher"] == "teacher.safetensors"
    assert student.distillation["method"].endswith("distribution matching (DMD2)")
    assert student.distillation["dmd"]["iters"] == 2
    assert (tmp_path / "ema-2.safetensors").is_file()


def test_a_model_that_is_not_a_student_is_refused(models, tmp_path):
    args = flags(models, tmp_path, "--iters", "1")
    args[args.index("--student") + 1] = str(models / "teacher.safetensors")
    with pytest.raises(SystemExit, match="not a student"):
        main(args)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_run_on_the_gpu_resumes_and_writes_a_student_that_loads_on_the_cpu(models, tmp_path):
    main(flags(models, tmp_path, "--iters", "2", "--ckpt-every", "2", "--device", "cuda"))
    assert "rng_cuda" in torch.load(tmp_path / "state.pt", map_location="cpu", weights_only=True)
    main(flags(models, tmp_path, "--iters", "4", "--ckpt-every", "2", "--device", "cuda", "--resume"))
    student = load_model(tmp_path / "model.safetensors")
    assert student.step == 4 and student.distillation["dmd"]["device"] == "cuda"
    start = load_file(models / "student.safetensors")
    moved = load_file(tmp_path / "model.safetensors")
    assert any(not torch.equal(start[k], moved[k]) for k in start)
