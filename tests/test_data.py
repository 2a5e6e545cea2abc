import pytest
import torch
from PIL import Image

from model.data import DATASETS, DatasetNotFound, load_dataset


def test_mnist_is_read_offline_from_the_data_root(data_root):
    train = load_dataset("mnist", data_root, train=True)
    test = load_dataset("mnist", data_root, train=False)
    assert (len(train), len(test)) == (60_000, 10_000)
    x, y = train[0]
    assert x.shape == (1, 28, 28) and x.min() == -1 and x.max() == 1
    assert y.item() == 5  # the famous first training digit


def test_fashion_mnist_and_resizing(data_root):
    ds = load_dataset("fashion-mnist", data_root, train=False, image_size=32)
    x, y = ds[0]
    assert x.shape == (1, 32, 32) and x.min() >= -1 and x.max() <= 1
    assert DATASETS["fashion-mnist"].class_names[y] == "Ankle boot"


def test_reading_the_gz_files_writes_nothing_into_the_data_root(data_root):
    before = sorted(p.name for p in (data_root / "MNIST" / "raw").iterdir())
    load_dataset("mnist", data_root, train=False)
    assert sorted(p.name for p in (data_root / "MNIST" / "raw").iterdir()) == before


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10", "celeba", "folder"])
def test_a_missing_dataset_says_where_to_put_the_files(tmp_path, name):
    with pytest.raises(DatasetNotFound, match=f"{name} not found under .*: put its files in {tmp_path}"):
        load_dataset(name, tmp_path / "empty" if name == "folder" else tmp_path)


def test_a_folder_of_images_is_cropped_scaled_and_unlabeled(tmp_path):
    for i in range(3):
        Image.new("RGB", (40, 30), (255 * (i % 2), 0, 128)).save(tmp_path / f"{i}.png")
    (tmp_path / "sub").mkdir()
    Image.new("L", (16, 16), 255).save(tmp_path / "sub" / "gray.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    ds = load_dataset("folder", tmp_path, image_size=8)
    assert len(ds) == 4
    x, y = ds[0]
    assert x.shape == (3, 8, 8) and y == -1
    assert torch.allclose(x[0], torch.full((8, 8), -1.0)) and torch.allclose(
        x[2], torch.full((8, 8), 128 / 127.5 - 1), atol=1e-6
    )


def test_the_synthetic_dataset_is_random_labeled_and_the_same_every_time():
    ds = load_dataset("synthetic", image_size=16)
    x, y = ds[3]
    assert x.shape == (3, 16, 16) and -1 <= x.min() < x.max() <= 1 and 0 <= y < 10
    again = load_dataset("synthetic", image_size=16)
    assert torch.equal(again[3][0], x) and again[3][1] == y
    assert not torch.equal(load_dataset("synthetic", train=False, image_size=16)[3][0], x)
    assert len({int(ds[i][1]) for i in range(100)}) == 10


def test_unknown_dataset_names_are_rejected():
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("imagenet")
