"""FID (Heusel et al. 2017) as pytorch-fid computes it: the 2048-d pool3 features of its Inception
network, a Gaussian fitted to each set, and the Fréchet distance between the two Gaussians.

pytorch-fid downloads its weights (pt_inception-2015-12-05-6726825d.pth) on first use. Offline, the
file is found, in this order, at --inception-weights PATH, at $FID_INCEPTION_WEIGHTS, or where
torch hub keeps pytorch-fid's download ($TORCH_HOME/hub/checkpoints/).

Images enter as uint8 (N, C, H, W), exactly what a saved PNG holds: samples are quantized like real
images before they are measured. Grayscale is repeated to three channels, as pytorch-fid does when
it reads a grayscale PNG as RGB.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import numpy as np
import torch
import torchvision
from pytorch_fid import inception as pytorch_fid_inception
from pytorch_fid.fid_score import calculate_frechet_distance
from pytorch_fid.inception import FID_WEIGHTS_URL, InceptionV3
from tqdm import tqdm

WEIGHTS_FILE = Path(FID_WEIGHTS_URL).name
WEIGHTS_ENV = "FID_INCEPTION_WEIGHTS"
CACHE_DIR = Path("~/.cache/ddpm-ddim/fid").expanduser()

# a batch of uint8 images (B, C, H, W) → features (B, D)
FeatureFn = Callable[[torch.Tensor], torch.Tensor]


class InceptionWeightsMissing(FileNotFoundError):
    pass


def load_inception_weights(path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The FID Inception state dict: from `path`, $FID_INCEPTION_WEIGHTS, the torch hub cache, or a
    download by pytorch-fid; failing all four, one error that says where to put the file."""
    hub = Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE  # where pytorch-fid's download lands
    for candidate in (path, os.environ.get(WEIGHTS_ENV), hub):
        if candidate and Path(candidate).is_file():
            return torch.load(candidate, map_location="cpu", weights_only=True)
        if candidate and candidate != hub:
            raise InceptionWeightsMissing(f"Inception weights: {candidate} is not a file")
    try:
        return pytorch_fid_inception.load_state_dict_from_url(FID_WEIGHTS_URL, progress=True)
    except OSError as e:  # no internet (URLError is an OSError)
        raise InceptionWeightsMissing(
            f"FID needs pytorch-fid's Inception weights {WEIGHTS_FILE}, and they cannot be downloaded here ({e}). "
            f"Get the file from {FID_WEIGHTS_URL} and put it at {hub}, "
            f"or pass --inception-weights PATH, or set {WEIGHTS_ENV}=PATH."
        ) from e


def build_inception(state_dict: dict[str, torch.Tensor] | None) -> InceptionV3:
    """pytorch-fid's FID network up to pool3, with `state_dict` loaded where pytorch-fid would load
    its download. None leaves the weights untrained: the same architecture, for tests."""
    if state_dict is None:  # the FID blocks differ from torchvision's only in pooling: same tensors
        state_dict = torchvision.models.inception_v3(
            weights=None, num_classes=1008, aux_logits=False, init_weights=False
        ).state_dict()
    with mock.patch.object(pytorch_fid_inception, "load_state_dict_from_url", lambda *args, **kwargs: state_dict):
        return InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()


class InceptionFeatures:
    """uint8 images → 2048-d pool3 features (pytorch-fid resizes to 299×299 and scales to [-1, 1])."""

    name = "inception-pool3"
    dims = 2048

    def __init__(self, network: InceptionV3, device: torch.device | str = "cpu"):
        # channels-last weights: the same features, 1.5× faster on this project's CPUs (bf16 was faster
        # still but moved features by half their mean magnitude, so it is not used)
        self.network = network.to(device, memory_format=torch.channels_last).eval()
        self.device = torch.device(device)

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device).float() / 255
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        return self.network(x)[0].flatten(1).cpu()


@dataclass
class Stats:
    """A Gaussian fitted to a set of features: mean, covariance and how many features made it."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int

    @classmethod
    def of(cls, features: np.ndarray | torch.Tensor) -> Stats:
        f = np.asarray(features, dtype=np.float64)
        return cls(f.mean(axis=0), np.cov(f, rowvar=False), len(f))


def frechet_distance(a: Stats, b: Stats) -> float:
    """||μ_a - μ_b||² + Tr(Σ_a + Σ_b - 2 (Σ_a Σ_b)^½), by pytorch-fid's own function."""
    with warnings.catch_warnings():  # SciPy ≥ 1.16 deprecates the sqrtm argument pytorch-fid passes
        warnings.filterwarnings("ignore", "The `disp` argument is deprecated", DeprecationWarning)
        return float(calculate_frechet_distance(a.mu, a.sigma, b.mu, b.sigma))


def extract_features(
    images: torch.Tensor, features: FeatureFn, batch_size: int = 100, desc: str | None = None
) -> torch.Tensor:
    batches = images.split(batch_size)
    return torch.cat([features(b) for b in tqdm(batches, desc=desc, disable=desc is None, dynamic_ncols=True)])


def cached_stats(
    key: str,
    images: Callable[[], torch.Tensor],
    features: FeatureFn,
    cache_dir: Path | None,
    batch_size: int = 100,
    progress: bool = True,
) -> Stats:
    """The statistics of a fixed set of real images, computed once and kept as <cache_dir>/<key>.npz.
    `key` must name everything the numbers depend on (dataset, split, size, count, feature network);
    `images` is called only on a cache miss."""
    path = cache_dir / f"{key}.npz" if cache_dir else None
    if path and path.is_file():
        with np.load(path) as f:
            return Stats(f["mu"], f["sigma"], int(f["n"]))
    stats = Stats.of(extract_features(images(), features, batch_size, desc=f"features of {key}" if progress else None))
    if path:  # written beside it and renamed, so that an interrupted run leaves no half file
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, mu=stats.mu, sigma=stats.sigma, n=stats.n)
        tmp.replace(path)
    return stats
