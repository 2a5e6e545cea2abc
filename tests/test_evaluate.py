import copy
import csv
import os
import struct
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch

from conftest import REPO, tiny_unet
from model import fid
from model.checkpoint import save_checkpoint
from model.classifier import Classifier, ClassifierConfig, save_classifier
from model.evaluate import (
    FIDJudge,
    RealImages,
    SamplerChoice,
    evaluate,
    main,
    parse_args,
    parse_sampler,
    to_uint8,
    within_class_spread,
)
from model.fid import (
    InceptionFeatures,
    InceptionWeightsMissing,
    Stats,
    build_inception,
    cached_stats,
    frechet_distance,
    load_inception_weights,
)
from model.schedule import NoiseSchedule

WEIGHTS = Path(os.environ.get(fid.WEIGHTS_ENV, REPO.parent / "shared" / "models" / fid.WEIGHTS_FILE))


def sqrtm_psd(a: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(a)
    return vectors @ np.diag(np.sqrt(values.clip(0))) @ vectors.T


def random_spd(d: int, rng: np.random.Generator) -> np.ndarray:
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


# --- the Fréchet distance -------------------------------------------------------------------------


def test_frechet_distance_of_gaussians_with_diagonal_covariances_is_the_closed_form():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    var1, var2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(var1) - np.sqrt(var2)) ** 2).sum()  # 5 + 1 + 1 + 4
    got = frechet_distance(Stats(mu1, np.diag(var1), 0), Stats(mu2, np.diag(var2), 0))
    assert got == pytest.approx(expected) == 11.0


def test_frechet_distance_of_general_gaussians_matches_the_symmetric_formula():
    rng = np.random.default_rng(0)
    s1, s2, mu1, mu2 = random_spd(8, rng), random_spd(8, rng), rng.normal(size=8), rng.normal(size=8)
    r1 = sqrtm_psd(s1)  # Tr((Σ1 Σ2)^½) = Tr((Σ1^½ Σ2 Σ1^½)^½)
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * sqrtm_psd(r1 @ s2 @ r1))
    assert frechet_distance(Stats(mu1, s1, 0), Stats(mu2, s2, 0)) == pytest.approx(expected, rel=1e-6)


def test_frechet_distance_of_a_set_with_itself_is_zero_and_samples_approach_the_closed_form():
    rng = np.random.default_rng(0)
    a = Stats.of(rng.normal(size=(4000, 16)))
    assert abs(frechet_distance(a, a)) < 1e-6
    b = Stats.of(rng.normal(loc=0.5, scale=2.0, size=(4000, 16)))  # exact answer: 16 (0.25 + 1) = 20
    assert frechet_distance(a, b) == pytest.approx(20.0, rel=0.05)


# --- the Inception network ------------------------------------------------------------------------


def test_the_fid_inception_architecture_without_weights_gives_2048_features():
    features = InceptionFeatures(build_inception(None))
    out = features(torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8))
    assert out.shape == (2, features.dims) == (2, 2048) and torch.isfinite(out).all()


@pytest.mark.skipif(not WEIGHTS.is_file(), reason=f"no Inception weights at {WEIGHTS} (set {fid.WEIGHTS_ENV})")
def test_the_real_inception_weights_load_exactly_and_tell_images_apart():
    weights = load_inception_weights(WEIGHTS)
    network = build_inception(weights)
    assert torch.equal(network.blocks[0][0].conv.weight, weights["Conv2d_1a_3x3.conv.weight"])
    images = torch.zeros(3, 1, 28, 28, dtype=torch.uint8)
    images[1, :, 8:20, 12:16] = 255  # a bar, like a "1"
    images[2] = torch.randint(0, 256, (1, 28, 28), generator=torch.Generator().manual_seed(0))
    out = InceptionFeatures(network)(images)
    assert out.shape == (3, 2048) and (out >= 0).all()  # pool3 follows a ReLU
    assert (out[0] - out[1]).norm() > 0.1 * out[0].norm() and (out[0] - out[2]).norm() > 0.1 * out[0].norm()


def test_the_features_are_pytorch_fids_own_network_in_its_own_layout():
    network = build_inception(None)
    images = torch.randint(0, 256, (2, 3, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        plain = copy.deepcopy(network)(images.float() / 255)[0].flatten(1)
    torch.testing.assert_close(InceptionFeatures(network)(images), plain, rtol=1e-4, atol=1e-4)


def test_missing_inception_weights_stop_with_one_message_saying_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.delenv(fid.WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(*args, **kwargs):
        raise URLError("no internet")

    monkeypatch.setattr(fid.pytorch_fid_inception, "load_state_dict_from_url", offline)
    with pytest.raises(InceptionWeightsMissing) as e:
        load_inception_weights()
    message = str(e.value)
    assert str(tmp_path / "hub" / "checkpoints" / fid.WEIGHTS_FILE) in message
    assert "--inception-weights" in message and fid.WEIGHTS_ENV in message
    with pytest.raises(InceptionWeightsMissing, match=r"nowhere\.pth is not a file"):
        load_inception_weights(tmp_path / "nowhere.pth")


def test_reference_statistics_are_computed_once_then_read_from_the_cache(tmp_path):
    calls = []

    def images():
        calls.append(1)
        return torch.randint(0, 256, (50, 1, 8, 8), dtype=torch.uint8)

    def features(x):
        return x.flatten(1).float()[:, :5]

    first = cached_stats("mnist-train-8px-50-test", images, features, tmp_path)
    second = cached_stats("mnist-train-8px-50-test", images, features, tmp_path)
    assert len(calls) == 1 and (tmp_path / "mnist-train-8px-50-test.npz").is_file()
    assert np.array_equal(first.mu, second.mu) and np.array_equal(first.sigma, second.sigma) and second.n == 50


# --- samplers and images --------------------------------------------------------------------------


def test_sampler_names_and_their_parameters():
    assert parse_sampler("ddpm") == SamplerChoice("ddpm")
    assert parse_sampler("ddim:eta=1") == SamplerChoice("ddim", (("eta", 1.0),))
    assert parse_sampler("DDIM:eta=0.5").label == "DDIM eta=0.5" and parse_sampler("ddim:eta=0.5").key == "ddim_eta0.5"
    choice = parse_sampler("unipc:order=3,spacing=karras")
    assert choice.params == {"order": 3, "spacing": "karras", "thresholding": "clip"}
    # a flag sets the parameter for every sampler that takes it; the sampler's own text wins
    args = parse_args(["m.safetensors", "--eta", "0.3", "--thresholding", "none"])
    assert parse_sampler("ddim", args).params == {"eta": 0.3, "spacing": "leading", "thresholding": "none"}
    assert parse_sampler("ddim:eta=1", args).params["eta"] == 1.0
    assert parse_sampler("ddpm", args).params == {"variance": "fixed_large", "thresholding": "none"}
    for bad in ("ddpm:eta=1", "ddim:eta=2", "ddim:eta", "plms"):
        with pytest.raises(ValueError):
            parse_sampler(bad)


def test_images_are_quantized_like_a_png():
    x = torch.tensor([-1.5, -1.0, 0.0, 1 / 255, 1.0, 2.0])
    assert to_uint8(x).tolist() == [0, 0, 128, 128, 255, 255]


# --- end to end, on a tiny model, a tiny fake MNIST and a tiny feature network -------------------------


def write_fake_mnist(root: Path, n_train: int = 80, n_test: int = 40) -> Path:
    """MNIST-format (idx) files of random digits-like images: torchvision reads them as MNIST."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = (torch.rand(n, 28, 28, generator=gen) > 0.8).to(torch.uint8) * 255
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            struct.pack(">IIII", 2051, n, 28, 28) + images.numpy().tobytes()
        )
        labels = torch.arange(n, dtype=torch.uint8) % 10
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels.numpy().tobytes())
    return root


@pytest.fixture
def setup(tmp_path):
    """A tiny class-conditional model, a tiny classifier and a fake MNIST."""
    ckpt = save_checkpoint(
        tmp_path / "m.safetensors", tiny_unet(num_classes=10), NoiseSchedule.from_name("linear"), "mnist",
        [str(i) for i in range(10)],
    )  # fmt: skip
    classifier = save_classifier(
        tmp_path / "c.safetensors", Classifier(ClassifierConfig(width=2)).eval(), "mnist",
        [str(i) for i in range(10)], 0.1, 40,
    )  # fmt: skip
    return ckpt, classifier, write_fake_mnist(tmp_path / "data")


def small_features(images: torch.Tensor) -> torch.Tensor:
    """A fixed random projection of 4×4-pooled images: 8-d features, for the FID plumbing."""
    x = torch.nn.functional.avg_pool2d(images.float() / 255, 7).flatten(1)
    return x @ torch.randn(x.shape[1], 8, generator=torch.Generator().manual_seed(0))


def test_evaluate_sweeps_samplers_and_steps_and_writes_its_tables(setup, tmp_path):
    ckpt, classifier, data = setup
    args = parse_args([
        str(ckpt), "--sweep", "--sampler", "ddpm", "ddim:eta=0", "--steps", "2", "3", "-n", "12", "--batch-size", "5",
        "--metrics", "fid", "classifier", "--classifier", str(classifier), "--data-root", str(data),
        "--out", str(tmp_path / "eval"), "--no-progress",
    ])  # fmt: skip
    rows, floor = evaluate(args, fid_features=small_features)

    assert [(r["sampler"], r["steps"], r["n"]) for r in rows] == [
        ("DDPM", 2, 12), ("DDPM", 3, 12), ("DDIM eta=0", 2, 12), ("DDIM eta=0", 3, 12)
    ]  # fmt: skip
    for r in [*rows, floor]:
        assert {"fid", "cls_acc", "cls_fd", "cls_fd_se", "class_tv", "min_share", "spread"} <= set(r)
        assert 0 <= r["cls_acc"] <= 1 and sum(r[f"share_{k}"] for k in range(10)) == pytest.approx(1)
        assert r["cls_fd_se"] > 0 and r["spread"] > 0
    assert floor["n"] == 12 and all(r["seconds_per_image"] > 0 for r in rows)

    table = (tmp_path / "eval" / "results.md").read_text()
    assert "| sampler | 2 steps | 3 steps |" in table and "| DDIM eta=0 |" in table and "FID" in table
    assert "Real-data floor (12 test images" in table and "N=12 per cell" in table and " ± " in table
    with open(tmp_path / "eval" / "results.csv") as f:
        csv_rows = list(csv.DictReader(f))
    assert [r["sampler"] for r in csv_rows] == ["DDPM", "DDPM", "DDIM eta=0", "DDIM eta=0", "real test images"]
    assert float(csv_rows[0]["fid"]) == pytest.approx(rows[0]["fid"])
    assert (tmp_path / "eval" / "samples_ddim_eta0_3.png").stat().st_size > 0


def test_the_sampler_sweep_runs_every_sampler_at_every_nfe_and_guidance(setup, tmp_path):
    ckpt, classifier, data = setup
    args = parse_args([
        str(ckpt), "--sampler-sweep", "--nfe", "2", "3", "--guidance", "1", "3", "-n", "10", "--batch-size", "10",
        "--metrics", "classifier", "--classifier", str(classifier), "--data-root", str(data),
        "--out", str(tmp_path / "eval"), "--no-progress",
    ])  # fmt: skip
    rows, _ = evaluate(args)
    assert [(r["sampler"], r["nfe"]) for r in rows[:6]] == [
        ("DDIM, w=1", 2), ("DDIM, w=1", 3), ("DPM-Solver++(2M), w=1", 2), ("DPM-Solver++(2M), w=1", 3),
        ("UniPC, w=1", 2), ("UniPC, w=1", 3),
    ]  # fmt: skip
    assert [r["guidance"] for r in rows] == [1.0] * 6 + [3.0] * 6
    assert rows[0]["param_thresholding"] == "clip" and (tmp_path / "eval" / "samples_unipc_3_w3.png").is_file()
    with pytest.raises(ValueError, match="--variance: none of the samplers"):
        evaluate(parse_args([*map(str, (ckpt, "--sampler", "ddim", "--variance", "fixed_small"))]))


def test_a_sweep_resumes_where_it_stopped(setup, tmp_path):
    ckpt, classifier, data = setup
    common = [str(ckpt), "--sampler", "ddim", "unipc", "-n", "6", "--metrics", "classifier", "--classifier",
              str(classifier), "--data-root", str(data), "--out", str(tmp_path / "eval"), "--no-progress"]  # fmt: skip
    first, _ = evaluate(parse_args([*common, "--nfe", "2"]))
    rows, _ = evaluate(parse_args([*common, "--nfe", "2", "3", "--resume"]))
    assert [(r["sampler"], r["steps"]) for r in rows] == [("DDIM", 2), ("UniPC", 2), ("DDIM", 3), ("UniPC", 3)]
    assert rows[0]["cls_fd"] == pytest.approx(first[0]["cls_fd"]) and rows[0]["param_eta"] == 0.0  # read back
    other_n, _ = evaluate(parse_args([*common, "-n", "4", "--nfe", "2", "--resume"]))  # not mixed with N=6
    assert [(r["sampler"], r["n"]) for r in other_n] == [("DDIM", 4), ("UniPC", 4)]


def test_the_same_seed_gives_the_same_scores_and_the_test_set_scores_itself_perfectly(setup, tmp_path):
    ckpt, classifier, data = setup
    common = ["-n", "8", "--steps", "2", "--sampler", "ddim", "--data-root", str(data), "--no-progress"]
    common += ["--metrics", "classifier", "--classifier", str(classifier)]
    a, _ = evaluate(parse_args([str(ckpt), *common, "--out", str(tmp_path / "a")]))
    b, _ = evaluate(parse_args([str(ckpt), *common, "--out", str(tmp_path / "b")]))
    assert {k: v for k, v in a[0].items() if k != "seconds_per_image"} == {
        k: v for k, v in b[0].items() if k != "seconds_per_image"
    }
    real = RealImages("mnist", data, 28)
    judge = FIDJudge(small_features, real, None, None)
    assert judge.m == 80 and abs(judge.score(real.get("train")[0], None)["fid"]) < 1e-6


def test_the_command_without_inception_weights_stops_with_the_message(setup, tmp_path, monkeypatch, capsys):
    ckpt, _, data = setup
    monkeypatch.setenv(fid.WEIGHTS_ENV, str(tmp_path / "missing.pth"))
    with pytest.raises(SystemExit) as e:
        main([str(ckpt), "--metrics", "fid", "-n", "4", "--data-root", str(data), "--out", str(tmp_path / "e")])
    assert "missing.pth is not a file" in str(e.value) and "--metrics classifier" in str(e.value)


def test_within_class_spread_is_zero_for_copies_and_grows_with_variety():
    classes = torch.tensor([0, 0, 0, 1, 1, 1])
    copies = torch.tensor([[1.0, 2.0]] * 3 + [[5.0, 5.0]] * 3)
    assert within_class_spread(copies, classes) == 0
    varied = copies + torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
    # class 0: distances 5, 0, 5 → 10/3; class 1: 0, 1, 1 → 2/3; their mean: 2
    assert within_class_spread(varied, classes) == pytest.approx(2.0)
