"""Datasets as tensors in [-1, 1] with their labels: MNIST, Fashion-MNIST, CIFAR-10, CelebA, any
folder of images (labelled by sub-folder, or not), or synthetic ones (random, for speed checks). Nothing
is downloaded unless asked: torchvision finds files already in place."""

from __future__ import annotations

import gzip
import io
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset, TensorDataset
from torchvision import datasets, transforms
from torchvision.datasets.mnist import read_image_file, read_label_file
from torchvision.datasets.utils import check_integrity

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif"}


@dataclass(frozen=True)
class DatasetInfo:
    channels: int
    image_size: int  # the native (or usual) training size
    class_names: tuple[str, ...]  # empty: unlabeled
    flip: bool  # random horizontal flip as augmentation
    where: str  # where the files go, for the error message


DATASETS = {
    "mnist": DatasetInfo(1, 28, tuple(str(d) for d in range(10)), False, "DATA_ROOT/MNIST/raw/"),
    "fashion-mnist": DatasetInfo(
        1,
        28,
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        False,
        "DATA_ROOT/FashionMNIST/raw/",
    ),
    "cifar10": DatasetInfo(
        3,
        32,
        ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        True,
        "DATA_ROOT/train/<class>/*.jpg and DATA_ROOT/test/<class>/ (or a .tar.gz of them, or torchvision's"
        " DATA_ROOT/cifar-10-batches-py/)",
    ),
    "celeba": DatasetInfo(3, 64, (), True, "DATA_ROOT/celeba/ (img_align_celeba/, list_eval_partition.txt)"),
    "folder": DatasetInfo(3, 64, (), True, "DATA_ROOT/ (any images, in any sub-folders)"),
    # the ImageFolder convention: class = sub-folder, names from the folders; train/ and test/ splits if present
    "imagefolder": DatasetInfo(3, 32, (), True, "DATA_ROOT/[train/|test/]<class>/*.jpg (or a .tar.gz of that tree)"),
    # random images with random labels, the same every time: speed and smoke checks on a machine without data
    "synthetic": DatasetInfo(3, 32, tuple(str(c) for c in range(10)), False, "nowhere (made up)"),
}
SYNTHETIC_IMAGES = 4096


class DatasetNotFound(FileNotFoundError):
    pass


class ImageFolderFlat(Dataset):
    """Every image below a folder, recursively, unlabeled (label -1)."""

    def __init__(self, root: Path, transform):
        self.files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        with Image.open(self.files[i]) as img:
            return self.transform(img.convert("RGB")), -1


class LabelledImages(Dataset):
    """Decoded images held in memory as uint8 (N, C, S, S) with their labels and class names: a 32×32
    data set of 50,000 takes 150 MB and no JPEG is decoded twice. `flip`: a random horizontal flip per
    draw (DDPM's augmentation), from torch's global generator, which a resumed run restores."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, class_names: tuple[str, ...], flip: bool):
        self.images, self.labels, self.class_names, self.flip = images, labels, class_names, flip

    def __len__(self) -> int:
        return len(self.images)

    @property
    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All images in [-1, 1], un-augmented, and their labels (as a TensorDataset's)."""
        return self.images.float() / 127.5 - 1, self.labels

    def __getitem__(self, i: int):
        x = self.images[i].float() / 127.5 - 1
        if self.flip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x, self.labels[i]


def _labelled_files(root: Path, split: str) -> list[tuple[str, bytes | Path]]:
    """(class, file) of every image in the ImageFolder tree `root` ([split/]<class>/…), read from
    the folder or from a .tar(.gz) archive of it (in which the tree may sit below a top folder)."""
    if root.is_file() and tarfile.is_tarfile(root):
        found = []
        with tarfile.open(root) as archive:
            for member in archive:
                parts = Path(member.name).parts
                if not member.isfile() or Path(member.name).suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                if split in parts[:-2]:  # the split folder wherever it sits, the class right below it
                    parts = parts[parts.index(split) + 1 :]
                elif any(s in parts[:-2] for s in ("train", "test")):
                    continue  # the other split
                if len(parts) >= 2:
                    found.append((parts[0], archive.extractfile(member).read()))
        return found
    if not root.is_dir():
        return []
    base = root / split if (root / split).is_dir() else root
    return [
        (folder.name, f)
        for folder in sorted(p for p in base.iterdir() if p.is_dir())
        for f in sorted(folder.rglob("*"))
        if f.suffix.lower() in IMAGE_SUFFIXES
    ]


def load_labelled_folder(root: Path, train: bool, size: int, channels: int, flip: bool) -> LabelledImages:
    """A labelled image folder (or archive) decoded into memory: class names are the sub-folders' names,
    sorted, as torchvision's ImageFolder numbers them."""
    files = _labelled_files(root, "train" if train else "test")
    if not files:
        raise DatasetNotFound(f"no images in class folders under {root}")
    class_names = tuple(sorted({c for c, _ in files}))
    index = {c: i for i, c in enumerate(class_names)}
    resize = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size), transforms.PILToTensor()])
    images = torch.empty((len(files), channels, size, size), dtype=torch.uint8)
    for i, (_, source) in enumerate(files):
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
            images[i] = resize(img.convert("RGB" if channels == 3 else "L"))
    labels = torch.tensor([index[c] for c, _ in files])
    return LabelledImages(images, labels, class_names, flip)


class Unlabeled(Dataset):
    """A torchvision dataset whose targets we do not use (CelebA's are attributes, not classes)."""

    def __init__(self, base: Dataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        return self.base[i][0], -1


def _read_mnist(cls, root: Path, train: bool, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST-style idx files from ROOT/<Name>/raw/: unpacked, or the .gz files as downloaded.
    torchvision reads only unpacked files and unpacks them into the data root; reading the checked
    .gz files through a temporary folder keeps a read-only data root (a shared copy) untouched."""
    raw = root / cls.__name__ / "raw"
    prefix = "train" if train else "t10k"
    names = [f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"]
    if download or all((raw / n).is_file() for n in names):
        base = cls(root, train=train, download=download)
        return base.data, base.targets
    md5 = {Path(url).name: checksum for url, checksum in cls.resources}
    with tempfile.TemporaryDirectory() as tmp:
        for n in names:
            gz = raw / f"{n}.gz"
            if not check_integrity(str(gz), md5.get(gz.name)):
                raise RuntimeError(f"{gz} is missing or does not match torchvision's MD5")
            with gzip.open(gz) as src, open(Path(tmp) / n, "wb") as dst:
                shutil.copyfileobj(src, dst)
        return read_image_file(str(Path(tmp) / names[0])), read_label_file(str(Path(tmp) / names[1]))


def load_dataset(
    name: str,
    root: str | Path = "data",
    train: bool = True,
    image_size: int | None = None,
    augment: bool = True,
    download: bool = False,
) -> Dataset:
    """(image in [-1, 1] of shape (C, S, S), label) pairs; label -1 where the dataset has none."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    info, root = DATASETS[name], Path(root)
    size = image_size or info.image_size
    if name == "synthetic":
        generator = torch.Generator().manual_seed(0 if train else 1)
        x = torch.rand((SYNTHETIC_IMAGES, info.channels, size, size), generator=generator) * 2 - 1
        labels = torch.randint(len(info.class_names), (SYNTHETIC_IMAGES,), generator=generator)
        return TensorDataset(x, labels)
    try:
        if name in ("mnist", "fashion-mnist"):
            cls = datasets.MNIST if name == "mnist" else datasets.FashionMNIST
            images, labels = _read_mnist(cls, root, train, download)
            x = images.unsqueeze(1).float() / 127.5 - 1
            if size != x.shape[-1]:
                x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
            return TensorDataset(x, labels.long())

        flip = augment and train and info.flip
        if name == "cifar10" and (download or (root / "cifar-10-batches-py").is_dir()):
            base = datasets.CIFAR10(root, train=train, download=download)
            images = torch.from_numpy(base.data).permute(0, 3, 1, 2).contiguous()
            if size != images.shape[-1]:
                images = transforms.functional.resize(images, [size, size], antialias=True)
            return LabelledImages(images, torch.tensor(base.targets), info.class_names, flip)
        if name in ("cifar10", "imagefolder"):
            dataset = load_labelled_folder(root, train, size, info.channels, flip)
            if info.class_names and dataset.class_names != info.class_names:
                raise DatasetNotFound(f"the class folders {dataset.class_names} are not {name}'s {info.class_names}")
            return dataset
        steps = [transforms.Resize(size), transforms.CenterCrop(size)]
        if name == "celeba":  # the DDPM/DDIM crop: the central 140×140 face region, then resize
            steps = [transforms.CenterCrop(140), transforms.Resize(size)]
        if flip:
            steps.append(transforms.RandomHorizontalFlip())
        steps += [transforms.ToTensor(), transforms.Normalize([0.5] * 3, [0.5] * 3)]
        transform = transforms.Compose(steps)
        if name == "celeba":
            split = "train" if train else "test"
            return Unlabeled(datasets.CelebA(root, split=split, target_type=[], transform=transform, download=download))
        dataset = ImageFolderFlat(root, transform)
        if not len(dataset):  # no images, or no folder
            raise DatasetNotFound(root)
        return dataset
    except (RuntimeError, OSError) as e:
        raise DatasetNotFound(
            f"{name} not found under {root}: put its files in {info.where.replace('DATA_ROOT', str(root))}"
            f" (or pass --download on a machine with internet). ({e})"
        ) from e
