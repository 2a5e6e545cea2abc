"""A small CNN classifier for MNIST, Fashion-MNIST and CIFAR-10: the project's offline judge of samples.

`python -m model.classifier --dataset mnist --data-root ../shared/data --out checkpoints/classifiers/mnist.safetensors`
trains it on the training set, measures it on the test set and saves both the weights and that test
accuracy. The evaluation reads samples with it: is a sample conditioned on k read as k, are all
classes covered, and how far are the samples from real images in its 128-d feature space.

The file is a safetensors file like the diffusion checkpoints (tensors only, no pickle); its header
metadata["classifier"] is a JSON object:
  {"format": 1, "config": ClassifierConfig, "dataset": str, "class_names": [str],
   "test_accuracy": float, "test_images": int, "training": {epochs, batch_size, lr, seed, augment, bf16}}
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from model.checkpoint import atomic_write
from model.cli import HelpFormatter
from model.data import DATASETS, load_dataset
from model.device import add_device_argument, bf16_autocast, resolve_device

FORMAT_VERSION = 1
CLASSIFIER_DIR = Path(__file__).resolve().parents[1] / "checkpoints" / "classifiers"


class ClassifierError(ValueError):
    """A classifier file that cannot be loaded; the message names the file and the problem."""


@dataclass
class ClassifierConfig:
    in_channels: int = 1
    image_size: int = 28
    num_classes: int = 10
    width: int = 16


class Classifier(nn.Module):
    """Five 3×3 convolutions with batch norm: w, 2w at full size, 4w, 4w at half, 8w at a quarter,
    then a global average and a linear layer. The global average keeps the file small (~140k parameters,
    540 KiB) and its output is the feature vector the Fréchet distance is measured in."""

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = config
        w = config.width
        stages = [[w, 2 * w], [4 * w, 4 * w], [8 * w]]  # 28 → 14 → 7 pixels
        layers, cur = [], config.in_channels
        for i, widths in enumerate(stages):
            if i:
                layers.append(nn.MaxPool2d(2))
            for width in widths:
                layers += [nn.Conv2d(cur, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(True)]
                cur = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(cur, config.num_classes)

    @property
    def feature_dim(self) -> int:
        return self.head.in_features

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] → (B, feature_dim) penultimate features."""
        return self.body(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@dataclass
class ClassifierCheckpoint:
    """A loaded classifier (in eval mode) and what it was trained and measured on."""

    model: Classifier
    dataset: str
    class_names: list[str] = field(default_factory=list)
    test_accuracy: float = 0.0
    test_images: int = 0
    path: Path | None = None


def default_classifier_path(dataset: str) -> Path:
    return CLASSIFIER_DIR / f"{dataset}.safetensors"


def save_classifier(
    path: str | Path,
    model: Classifier,
    dataset: str,
    class_names: list[str],
    test_accuracy: float,
    test_images: int,
    training: dict | None = None,
) -> Path:
    meta = {
        "format": FORMAT_VERSION,
        "config": asdict(model.config),
        "dataset": dataset,
        "class_names": list(class_names),
        "test_accuracy": test_accuracy,
        "test_images": test_images,
        "training": training or {},
    }
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"classifier": json.dumps(meta)}))
    return Path(path)


def load_classifier(path: str | Path, device: torch.device | str = "cpu") -> ClassifierCheckpoint:
    path = Path(path)
    if not path.is_file():
        raise ClassifierError(
            f"{path}: no such classifier file (train one with `python -m model.classifier --dataset NAME --out {path}`)"
        )
    try:
        state = load_file(path)
        with safe_open(path, "pt") as f:
            meta = json.loads(f.metadata()["classifier"])
        model = Classifier(ClassifierConfig(**meta["config"]))
        model.load_state_dict(state)
    except (SafetensorError, OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
        raise ClassifierError(f"{path}: not a classifier checkpoint of this project ({e})") from e
    described = {key: meta[key] for key in ("dataset", "class_names", "test_accuracy", "test_images")}
    return ClassifierCheckpoint(model.to(device).eval(), **described, path=path)


@torch.inference_mode()
def classify(model: Classifier, images: torch.Tensor, batch_size: int = 250) -> tuple[torch.Tensor, torch.Tensor]:
    """Images in [-1, 1] (or uint8 in [0, 255]) → (predicted class (N,), features (N, D)), on the CPU."""
    device = next(model.parameters()).device
    preds, feats = [], []
    for batch in images.split(batch_size):
        x = batch.to(device)
        x = x.float() / 127.5 - 1 if x.dtype == torch.uint8 else x.float()
        f = model.features(x)
        preds.append(model.head(f).argmax(1).cpu())
        feats.append(f.cpu())
    return torch.cat(preds), torch.cat(feats)


def augment_batch(x: torch.Tensor, generator: torch.Generator, shift: int = 4) -> torch.Tensor:
    """The usual CIFAR augmentation: a random horizontal flip and a random translation of up to `shift`
    pixels (reflect-padded), per image."""
    n, _, h, w = x.shape
    flip = torch.rand(n, generator=generator) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    padded = F.pad(x, (shift,) * 4, mode="reflect")
    dy, dx = torch.randint(0, 2 * shift + 1, (2, n), generator=generator)
    return torch.stack([p[:, i : i + h, j : j + w] for p, i, j in zip(padded, dy.tolist(), dx.tolist(), strict=True)])


def train_classifier(
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    epochs: int = 5,
    batch_size: int = 128,
    lr: float = 3e-3,
    width: int = 16,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
    augment: bool = False,
    bf16: bool = False,
) -> Classifier:
    """Adam with a one-cycle learning rate; images in [-1, 1], (N, C, H, W). `augment`: random flips and
    shifts (for photographs; a flipped digit is another symbol); `bf16`: autocast (2× faster on CPUs with
    AVX512-BF16)."""
    torch.manual_seed(seed)
    model = Classifier(ClassifierConfig(images.shape[1], images.shape[-1], num_classes, width)).to(device)
    steps_per_epoch = len(images) // batch_size
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    bar = tqdm(total=epochs * steps_per_epoch, disable=not progress, dynamic_ncols=True, mininterval=1)
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for b in range(steps_per_epoch):
            idx = order[b * batch_size : (b + 1) * batch_size]
            x = augment_batch(images[idx], generator) if augment else images[idx]
            with torch.autocast(torch.device(device).type, torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(model(x.to(device)), labels[idx].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    return model.eval()


def dataset_tensors(
    name: str, root: str | Path, train: bool, image_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A dataset as (images in [-1, 1], labels) tensors, un-augmented."""
    data = load_dataset(name, root, train=train, image_size=image_size, augment=False)
    if hasattr(data, "tensors"):
        return data.tensors
    images, labels = zip(*(data[i] for i in range(len(data))), strict=True)
    return torch.stack(images), torch.tensor(labels)


def accuracy(model: Classifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    preds, _ = classify(model, images)
    return (preds == labels).double().mean().item()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description="Train the small CNN that judges a data set's samples, and save it with its test accuracy.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--dataset", choices=[n for n, d in DATASETS.items() if d.class_names], default="mnist")
    p.add_argument("--data-root", type=Path, default=Path("data"))
    p.add_argument("--out", type=Path, help="default: checkpoints/classifiers/<dataset>.safetensors")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--width", type=int, default=16, help="channels of the first convolution")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        help="random flips and shifts (default: where the data set's diffusion training flips, i.e. photographs)",
    )
    p.add_argument("--bf16", action="store_true", help="bf16 autocast")
    add_device_argument(p)
    p.add_argument("--threads", type=int, help="CPU threads (torch.set_num_threads)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    args.bf16 = bf16_autocast(device, args.bf16)  # the metadata records what ran
    try:
        train_x, train_y = dataset_tensors(args.dataset, args.data_root, train=True)
        test_x, test_y = dataset_tensors(args.dataset, args.data_root, train=False)
    except FileNotFoundError as e:
        sys.exit(f"error: {e}")

    start = time.perf_counter()
    info = DATASETS[args.dataset]
    args.augment = info.flip if args.augment is None else args.augment
    # the arguments of train_classifier that the file's metadata records
    training = {key: getattr(args, key) for key in ("epochs", "batch_size", "lr", "seed", "augment", "bf16")}
    model = train_classifier(train_x, train_y, len(info.class_names), width=args.width, device=device, **training)
    acc = accuracy(model, test_x, test_y)
    out = args.out or default_classifier_path(args.dataset)
    save_classifier(out, model, args.dataset, list(info.class_names), acc, len(test_x), training)
    print(
        f"{args.dataset}: test accuracy {acc:.2%} on {len(test_x)} test images "
        f"({time.perf_counter() - start:.0f} s); saved {out} ({out.stat().st_size / 1024:.0f} KiB)"
    )


if __name__ == "__main__":
    main()
