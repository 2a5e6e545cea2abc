import json

import pytest
import torch
from PIL import Image

from conftest import tiny_unet
from model.checkpoint import save_checkpoint
from model.schedule import NoiseSchedule
from model.visualize import HEADER, main, nice_ticks, read_metrics, smoothed

SIZE = 28


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("vis") / "m.safetensors"
    return save_checkpoint(
        path, tiny_unet(num_classes=10), NoiseSchedule.from_name("linear"), "mnist", list("0123456789")
    )


def written(path) -> Image.Image:
    """The image at path, checked to be more than one flat colour."""
    image = Image.open(path)
    image.load()
    lo, hi = image.convert("L").getextrema()
    assert hi - lo > 50, f"{path} is blank"
    return image


def test_a_sample_grid_has_the_size_of_its_rows_and_columns(ckpt, tmp_path):
    main(
        ["grid", str(ckpt), "-n", "6", "--nrow", "3", "--steps", "2", "--out", str(tmp_path / "g.png"), "--scale", "2"]
    )
    cell = SIZE + 2  # make_grid's padding
    assert written(tmp_path / "g.png").size == (2 * (3 * cell + 2), 2 * (2 * cell + 2))


@pytest.mark.parametrize("layout", ["side", "rows"])
def test_the_denoising_process_shows_x_t_and_predicted_x0_at_the_chosen_steps(ckpt, tmp_path, layout):
    out = tmp_path / "p.png"
    main(["process", str(ckpt), "-n", "2", "--steps", "5", "--columns", "3", "--layout", layout, "--sampler", "ddpm",
          "--thresholding", "dynamic", "--out", str(out), "--scale", "1"])  # fmt: skip
    panel = 3 * (SIZE + 1) + 1  # three columns of 28 pixels with make_grid's 1-pixel padding
    if layout == "side":  # x_t | x0, each under a band of column labels
        assert written(out).size == (2 * panel + 6, 2 * (SIZE + 1) + 1 + HEADER)
    else:  # each sample's x0 row under its x_t row
        assert written(out).size == (panel, 4 * (SIZE + 1) + 1)


def test_the_sampling_gif_has_one_frame_per_state_from_noise_to_image(ckpt, tmp_path):
    out = tmp_path / "s.gif"
    main(["gif", str(ckpt), "-n", "4", "--steps", "3", "--class", "7", "--out", str(out), "--scale", "1"])
    gif = written(out)
    panel = 2 * (SIZE + 1) + 1
    assert gif.format == "GIF" and gif.n_frames == 4 and gif.size == (2 * panel + 6, panel + HEADER)


def test_forward_noising_of_real_images_at_chosen_t(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(2):  # a folder dataset: any images, scaled to 64 pixels
        Image.fromarray((torch.rand(40, 40, 3) * 255).byte().numpy()).save(folder / f"{i}.png")
    out = tmp_path / "f.png"
    main(["forward", "--dataset", "folder", "--data-root", str(folder), "-n", "2", "--t", "0", "500", "999",
          "--out", str(out), "--scale", "1"])  # fmt: skip
    assert written(out).size == (4 * 65 + 1, 2 * 65 + 1 + HEADER)  # x0 and three t, two rows
    with pytest.raises(SystemExit, match="timesteps go from 0 to 999"):
        main(["forward", "--dataset", "folder", "--data-root", str(folder), "--t", "1000", "--out", str(out)])


def test_the_loss_curve_of_two_runs(tmp_path):
    for name, scale in (("a", 1.0), ("b", 2.0)):
        (tmp_path / name).mkdir()
        rows = [{"step": 50 * (i + 1), "loss": scale / (i + 1), "lr": 1e-4} for i in range(40)]
        (tmp_path / name / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "loss.png"
    main(
        ["loss", str(tmp_path / "a"), str(tmp_path / "b" / "metrics.jsonl"), "--out", str(out), "--size", "400", "300"]
    )
    image = written(out).convert("RGB")
    assert image.size == (400, 300)
    colours = {colour for _, colour in image.getcolors(1 << 18)}
    assert (31, 119, 180) in colours and (214, 39, 40) in colours  # one solid line per run


def test_quality_against_nfe_draws_a_panel_per_guidance_and_metric(tmp_path):
    """From model.evaluate's results.csv: one line per sampler, a panel per (w, metric)."""
    folder = tmp_path / "mnist-solvers"
    folder.mkdir()
    lines = ["sampler,guidance,nfe,cls_acc,cls_fd"]
    for w in (1, 3):
        for name, scale in (("DDIM", 2.0), ("UniPC", 1.0)):
            lines += [f"{name}, w={w},{w},{nfe},{1 - scale / nfe / 10},{scale * 10 / nfe}" for nfe in (4, 10, 50)]
    lines.append("real test images,,,0.99,0.15")
    (folder / "results.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "nfe.png"
    main(["nfe", str(folder / "results.csv"), "--out", str(out)])
    image = written(out).convert("RGB")
    assert image.size == (2 * 560, 2 * 340)
    colours = {colour for _, colour in image.getcolors(1 << 18)}
    assert (31, 119, 180) in colours and (214, 39, 40) in colours  # one line per sampler


def test_metrics_of_a_resumed_run_keep_the_last_value_of_each_step(tmp_path):
    rows = [{"step": 50, "loss": 1.0}, {"step": 100, "loss": 0.5}, {"step": 100, "loss": 0.4}, {"step": 150, "lr": 1}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    assert read_metrics(tmp_path) == [(50, 1.0), (100, 0.4)]


def test_ticks_and_smoothing():
    assert nice_ticks(0, 1000, 5) == [0, 200, 400, 600, 800, 1000]
    assert nice_ticks(0.013, 0.07, 4) == pytest.approx([0.02, 0.04, 0.06])
    assert smoothed([3.0] * 5, 0.9) == pytest.approx([3.0] * 5)  # debiased: no ramp up from zero
