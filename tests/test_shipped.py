"""The diffusion checkpoints that ship with the project: they load without pickle, are the CPU demo's
size, and the shipped classifier reads their class-conditional samples (DDIM-50, clipped x0, guidance
3; and what the server answers a request that names only the model, n, label and seed) as the class
they were asked for. A small-N guard of the bars that checkpoints/README.md states; the full figures,
with N=1000 and more, are in docs/results.md."""

import base64
import io
import json

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from conftest import REPO
from model.checkpoint import load_checkpoint, read_metadata
from model.classifier import classify, default_classifier_path, load_classifier
from model.data import DATASETS as DATASET_INFO
from model.evaluate import generate
from model.unet import PRESETS, UNetConfig
from server.app import create_app
from server.settings import Settings

CHECKPOINTS = REPO / "checkpoints"
DATASETS = ["mnist", "fashion-mnist"]
CIFAR10_CLASSES = DATASET_INFO["cifar10"].class_names
# the distilled students that ship, by name: (their dataset, their steps), from their metadata
STUDENTS = {
    path.stem: (meta["dataset"], meta["sampling"]["steps"])
    for path in sorted(CHECKPOINTS.glob("*.safetensors"))
    if "sampling" in (meta := read_metadata(path))
}


@pytest.mark.parametrize("dataset", DATASETS)
def test_a_shipped_checkpoint_is_small_and_was_made_by_its_config(dataset):
    path = CHECKPOINTS / f"{dataset}.safetensors"
    ckpt = load_checkpoint(path)
    config = json.loads((CHECKPOINTS / "configs" / f"{dataset}.json").read_text())
    assert ckpt.dataset == dataset and ckpt.ema and ckpt.config.num_classes == 10
    assert ckpt.step == config["steps"]
    assert ckpt.config == UNetConfig(**{**PRESETS[config["preset"]], "num_classes": 10})
    assert sum(p.numel() for p in ckpt.unet.parameters()) < 1_000_000
    assert path.stat().st_size < 5_000_000


def test_the_colour_checkpoint_is_a_snapshot_of_its_config_and_names_its_classes():
    """The CIFAR-10 model: a step of the run its config describes (training goes on from it: a later session
    warm-starts from this file), small enough to ship, its classes named from their folders."""
    path = CHECKPOINTS / "cifar10.safetensors"
    ckpt = load_checkpoint(path)
    config = json.loads((CHECKPOINTS / "configs" / "cifar10.json").read_text())
    assert ckpt.dataset == "cifar10" and ckpt.ema and 0 < ckpt.step <= config["steps"]
    assert ckpt.config == UNetConfig(
        **{**PRESETS[config["preset"]], "in_channels": 3, "image_size": 32, "num_classes": 10},
        prediction=config["prediction"],
    )
    assert ckpt.class_names == [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    assert path.stat().st_size < 20_000_000


@pytest.mark.slow
@pytest.mark.parametrize("dataset", DATASETS)
def test_the_classifier_reads_guided_samples_as_the_class_they_were_asked_for(dataset):
    ckpt = load_checkpoint(CHECKPOINTS / f"{dataset}.safetensors")
    classifier = load_classifier(default_classifier_path(dataset))
    samples = generate(ckpt, "ddim", 50, 50, 50, guidance=3.0, progress=False)  # x0 clipped, by default
    preds, _ = classify(classifier.model, samples.images)
    measured = (preds == samples.labels).double().mean().item()
    # the bars: MNIST 97%, Fashion-MNIST 90% of the classifier's accuracy on real test images;
    # 50 samples read a true 97% as under 92% with probability 2%
    bar = 0.97 if dataset == "mnist" else 0.9 * classifier.test_accuracy
    assert measured >= bar - 0.05, f"{dataset}: {measured:.1%} of 50 guided samples read as their class"


@pytest.mark.slow
@pytest.mark.parametrize("name", [*DATASETS, "cifar10", *STUDENTS])
def test_the_servers_defaults_give_the_class_asked_for(name, tmp_path):
    """POST /sample with only {"model", "n": 16, "label": k, "seed": s}: the server's default sampler,
    steps and guidance (a distilled student: its own 1 or 2 steps), for each of the ten classes, read back
    by the classifier."""
    dataset, steps = STUDENTS.get(name, (name, None))
    (tmp_path / f"{name}.safetensors").symlink_to(CHECKPOINTS / f"{name}.safetensors")
    settings = Settings(_env_file=None, checkpoint_dir=tmp_path, web_dir=None)
    images, labels = [], []
    with TestClient(create_app(settings), base_url="http://localhost") as client:
        for k in range(10):
            body = client.post("/sample", json={"model": name, "n": 16, "label": k, "seed": 100 + k}).json()
            assert name == dataset or (body["sampler"], body["steps"]) == ("ddim", steps)
            for png in body["images"]:
                images.append(np.asarray(Image.open(io.BytesIO(base64.b64decode(png)))))
            labels += [k] * len(body["images"])
    classifier = load_classifier(default_classifier_path(dataset))
    pixels = torch.from_numpy(np.stack(images))
    preds, _ = classify(classifier.model, pixels[:, None] if pixels.ndim == 3 else pixels.permute(0, 3, 1, 2))
    measured = (preds == torch.tensor(labels)).double().mean().item()
    # the bars of issues 13 and 23; 160 samples read a true 97% as under 94% with probability about 2%
    cifar10 = (0.5 if name in STUDENTS else 0.6) * classifier.test_accuracy  # issue 23: a student at least 50%
    bar = {"mnist": 0.97, "fashion-mnist": 0.9 * classifier.test_accuracy, "cifar10": cifar10}[dataset]
    assert measured >= bar - 0.03, f"{dataset}: {measured:.1%} of 160 served samples read as their class"


@pytest.mark.parametrize("name", STUDENTS)
def test_a_students_w_input_moves_its_samples_as_the_teachers_guidance_does(name):
    """For w ≥ 1 (what the students learnt: checkpoints/README.md), a larger w makes the same noise into
    heavier, more class-typical images, for the student (w an input) as for its teacher (ε_u + w(ε_c - ε_u)):
    the mean brightness of 50 images (the "ink") at each w; the teacher by DDIM-8 (its ink within 0.003 of
    DDIM-16's at each w, for every shipped teacher, at half the time), the student by its own steps."""
    from model.distill import sample_student

    student = load_checkpoint(CHECKPOINTS / f"{name}.safetensors")
    teacher = load_checkpoint(CHECKPOINTS / f"{student.teacher}.safetensors")
    weights = (1.0, 3.0, 6.0)
    ink = {
        name: [sample_student(ckpt, steps, 50, w).add(1).div(2).mean().item() for w in weights]
        for name, ckpt, steps in (("teacher", teacher, 8), ("student", student, student.sampling["steps"]))
    }
    assert ink["student"] == sorted(ink["student"]) and ink["teacher"] == sorted(ink["teacher"]), ink
    spread = ink["teacher"][-1] - ink["teacher"][0]
    assert all(abs(s - t) < 0.5 * spread for s, t in zip(ink["student"], ink["teacher"], strict=True)), ink
