import tarfile
from pathlib import Path

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


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10", "celeba", "folder", "imagefolder"])
def test_a_missing_dataset_says_where_to_put_the_files(tmp_path, name):
    with pytest.raises(DatasetNotFound, match=f"{name} not found under .*: put its files in {tmp_path}"):
        load_dataset(name, tmp_path / "empty" if name in ("folder", "imagefolder") else tmp_path)


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


# one colour a class, so that a label can be read off its image
COLOURS = {"cat": (200, 40, 40), "airplane": (40, 40, 200), "ship": (40, 200, 40)}


def labelled_tree(root: Path, classes=("cat", "airplane", "ship"), per_split=None, size: int = 32) -> Path:
    """root/train/<class>/*.png and root/test/<class>/*.png, a half-white image of the class's colour."""
    for split, n in (per_split or {"train": 3, "test": 2}).items():
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                img = Image.new("RGB", (size, size), COLOURS.get(c, (90, 90, 90)))
                img.paste((255, 255, 255), (0, 0, size // 2, size))  # left half white: a flip shows
                img.save(root / split / c / f"{i:04d}.png")
    return root


def test_a_labelled_folder_names_its_classes_by_sub_folder_and_keeps_its_splits(tmp_path):
    root = labelled_tree(tmp_path / "pets", size=40)
    train = load_dataset("imagefolder", root, train=True, image_size=16, augment=False)
    test = load_dataset("imagefolder", root, train=False, image_size=16)
    assert train.class_names == test.class_names == ("airplane", "cat", "ship")  # sorted, as ImageFolder numbers
    assert (len(train), len(test)) == (9, 6)
    for x, y in (train[i] for i in range(len(train))):
        name = train.class_names[y]
        assert x.shape == (3, 16, 16)
        rgb = torch.tensor(COLOURS[name]) / 127.5 - 1
        assert torch.allclose(x[:, 8, -1], rgb, atol=0.02) and torch.allclose(x[:, 8, 0], torch.ones(3))


def test_an_archive_of_class_folders_reads_as_the_folder_itself(tmp_path):
    root = labelled_tree(tmp_path / "tree" / "cifar")
    archive = tmp_path / "cifar.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname="cifar")  # the tree below a top folder, as archives often hold it
    for train in (True, False):
        folder = load_dataset("imagefolder", root, train=train, augment=False)
        packed = load_dataset("imagefolder", archive, train=train, augment=False)
        assert packed.class_names == folder.class_names
        assert torch.equal(packed.images, folder.images) and torch.equal(packed.labels, folder.labels)


def test_cifar10_reads_class_folders_and_checks_their_names(tmp_path):
    names = DATASETS["cifar10"].class_names
    root = labelled_tree(tmp_path / "cifar", classes=names, per_split={"train": 1, "test": 1})
    data = load_dataset("cifar10", root, train=False)
    assert data.class_names == names and len(data) == 10 and data[3][0].shape == (3, 32, 32)
    assert [int(data[i][1]) for i in range(10)] == list(range(10))
    wrong = labelled_tree(tmp_path / "pets")
    with pytest.raises(DatasetNotFound, match=r"the class folders .* are not cifar10's"):
        load_dataset("cifar10", wrong)


def test_training_images_flip_at_random_and_test_images_never(tmp_path):
    root = labelled_tree(tmp_path / "pets")
    train = load_dataset("imagefolder", root, train=True)
    test = load_dataset("imagefolder", root, train=False)
    white_left = [bool(train[0][0][0, 16, 0] == 1) for _ in range(40)]
    assert 5 < sum(white_left) < 35  # both ways round, about half each
    assert all(bool(test[0][0][0, 16, 0] == 1) for _ in range(10))
