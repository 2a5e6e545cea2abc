import json

import pytest
import torch
from safetensors.torch import save_file

from conftest import tiny_unet
from model.checkpoint import CheckpointError, load_checkpoint, read_metadata, save_checkpoint
from model.schedule import NoiseSchedule


@pytest.fixture
def saved(tmp_path):
    model = tiny_unet(num_classes=10)
    path = save_checkpoint(
        tmp_path / "m.safetensors", model, NoiseSchedule.from_name("cosine", 500), "mnist", list("abcdefghij"), 123
    )
    return model, path


def test_save_then_load_gives_identical_weights_and_outputs(saved):
    model, path = saved
    loaded = load_checkpoint(path)
    x, t, y = torch.randn(3, 1, 28, 28), torch.tensor([0, 250, 499]), torch.tensor([1, 5, 10])
    saved_state, loaded_state = model.state_dict(), loaded.unet.state_dict()
    assert saved_state.keys() == loaded_state.keys()
    assert all(torch.equal(saved_state[k], loaded_state[k]) for k in saved_state)
    with torch.inference_mode():  # the loaded model is channels-last: other kernels, the same function
        torch.testing.assert_close(model(x, t, y), loaded.unet(x, t, y), rtol=1e-5, atol=1e-5)
    assert not loaded.unet.training
    assert loaded.config == model.config
    assert (loaded.dataset, loaded.class_names, loaded.step, loaded.ema) == ("mnist", list("abcdefghij"), 123, True)
    assert loaded.schedule.config == {"name": "cosine", "timesteps": 500}
    assert read_metadata(path)["unet"]["num_classes"] == 10


def test_a_truncated_file_raises_the_clear_error(saved):
    _, path = saved
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=f"{path.name}.*(truncated|corrupt)"):
        load_checkpoint(path)


def test_weights_of_another_shape_raise_the_clear_error(saved, tmp_path):
    _, path = saved
    other = tiny_unet(num_classes=3)  # a different label embedding
    meta = read_metadata(path)
    bad = tmp_path / "bad.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, bad, {"diffusion": json.dumps(meta)})
    with pytest.raises(CheckpointError, match=r"bad\.safetensors: weights do not match"):
        load_checkpoint(bad)


def test_a_pickle_file_is_refused_without_being_unpickled(tmp_path):
    path = tmp_path / "evil.safetensors"
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match=r"evil\.safetensors: not a safetensors file"):
        load_checkpoint(path)


def test_safetensors_without_our_metadata_and_missing_files_are_refused(tmp_path):
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, plain)
    with pytest.raises(CheckpointError, match="not a checkpoint of this project"):
        load_checkpoint(plain)
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_saving_is_atomic_and_leaves_no_temporary_files(saved):
    _, path = saved
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    assert path.stat().st_mode & 0o044  # readable by others, like any ordinary file


BAD_METADATA = {
    "step not a number": {"step": "abc"},
    "step negative": {"step": -1},
    "step a bool": {"step": True},
    "class_names a number": {"class_names": 5},
    "class_names not strings": {"class_names": [1, 2]},
    "class_names too few": {"class_names": ["a"]},
    "ema a string": {"ema": "yes"},
    "dataset a list": {"dataset": ["mnist"]},
    "unet a string": {"unet": "big"},
    "unet with a bad field": {"unet": {"image_size": "x"}},
    "schedule unknown": {"schedule": {"name": "nope", "timesteps": 10}},
    "schedule a list": {"schedule": [1]},
    "distillation a string": {"distillation": "mnist"},
    "distillation's teacher a number": {"distillation": {"teacher": 3}},
}


@pytest.mark.parametrize("change", BAD_METADATA.values(), ids=BAD_METADATA.keys())
def test_malformed_metadata_is_a_checkpoint_error(saved, tmp_path, change):
    """Whatever is wrong in the metadata, the one error a caller has to catch is CheckpointError."""
    model, path = saved
    bad = tmp_path / "bad.safetensors"
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, bad, {"diffusion": json.dumps({**read_metadata(path), **change})})
    with pytest.raises(CheckpointError, match=r"bad\.safetensors"):
        load_checkpoint(bad)


def test_metadata_that_is_not_an_object_is_a_checkpoint_error(saved, tmp_path):
    model, _ = saved
    bad = tmp_path / "bad.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, bad, {"diffusion": "5"})
    with pytest.raises(CheckpointError, match="not a JSON object"):
        load_checkpoint(bad)


def test_weights_with_nan_or_infinity_are_refused(saved, tmp_path):
    model, path = saved
    for value in (float("nan"), float("inf")):
        tensors = {k: v.contiguous().clone() for k, v in model.state_dict().items()}
        next(t for t in tensors.values() if t.is_floating_point()).view(-1)[0] = value
        bad = tmp_path / "bad.safetensors"
        save_file(tensors, bad, {"diffusion": json.dumps(read_metadata(path))})
        with pytest.raises(CheckpointError, match="NaN or infinity"):
            load_checkpoint(bad)
