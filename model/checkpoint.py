"""The checkpoint format: one safetensors file whose header metadata holds everything needed to
rebuild the model and sample from it. safetensors holds tensors only, so loading a checkpoint from
the internet cannot run code, unlike a pickle.

metadata["diffusion"] is a JSON object:
  {"format": 1, "unet": UNetConfig, "schedule": {"name", "timesteps"}, "dataset": str,
   "class_names": [str], "step": int, "ema": bool,
   "sampling": {"sampler": str, "steps": int, ...sampler parameters} (optional: how a distilled
               student must be sampled), "distillation": {...} (optional: how it was made)}
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from model.schedule import NoiseSchedule
from model.unet import UNet, UNetConfig

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file that cannot be loaded; the message names the file and the problem."""


@dataclass
class Checkpoint:
    """A loaded model: the UNet (in eval mode), its schedule and what it was trained on."""

    unet: UNet
    schedule: NoiseSchedule
    dataset: str
    class_names: list[str] = field(default_factory=list)
    step: int = 0
    ema: bool = True
    path: Path | None = None
    sampling: dict | None = None  # a distilled student's own sampler, steps and their parameters
    distillation: dict | None = None  # how a distilled student was made (model.distill's provenance)
    origin: str | None = None  # what a format other than this project's says of the weights (model.formats)

    @property
    def config(self) -> UNetConfig:
        return self.unet.config

    @property
    def net(self) -> UNet:
        """The UNet itself, as trained (a v-predictor unwrapped from its ε view)."""
        return self.unet.net if isinstance(self.unet, EpsilonFromV) else self.unet

    @property
    def weights(self) -> str:
        """What the weights are, for logs and reports."""
        return self.origin or f"trained {self.step} steps, {'EMA' if self.ema else 'raw (not EMA!)'} weights"

    @property
    def teacher(self) -> str | None:
        """The name (file name without .safetensors) of the model a distilled student was made from."""
        teacher = (self.distillation or {}).get("teacher")
        return None if teacher is None else Path(teacher).name.removesuffix(".safetensors")

    def sampler_defaults(self) -> dict[str, dict]:
        """The sampler parameters this model's files state, by sampler name: a distilled student's own
        (`sampling`, which it needs), else a diffusers scheduler's clipping, DDIM spacing and DDPM variance."""
        if self.sampling is not None:
            return {self.sampling["sampler"]: {k: v for k, v in self.sampling.items() if k not in ("sampler", "steps")}}
        own = self.schedule.sampling
        params = {"ddim": {"spacing": own.spacing}, "ddpm": {"variance": own.variance}}
        if own.clip is False:
            params = {name: {**values, "thresholding": "none"} for name, values in params.items()}
        return params


class EpsilonFromV(torch.nn.Module):
    """A v-predicting network seen as an ε-predictor (ε = √(1-ᾱ_t) x_t + √ᾱ_t v), so that every sampler
    and the server drive it unchanged."""

    def __init__(self, net: UNet, schedule: NoiseSchedule):
        super().__init__()
        self.net = net
        self.schedule = schedule
        self.config = net.config
        self.null_label = net.null_label

    def forward(self, x, t, labels=None, guidance=None):
        return self.schedule.eps_from_v(x, t, self.net(x, t, labels, guidance))


def save_checkpoint(
    path: str | Path,
    unet: UNet,
    schedule: NoiseSchedule,
    dataset: str,
    class_names: list[str] | None = None,
    step: int = 0,
    ema: bool = True,
    sampling: dict | None = None,
    distillation: dict | None = None,
) -> Path:
    """Write the weights and their metadata atomically: a reader never sees a half-written file."""
    path = Path(path)
    meta = {
        "format": FORMAT_VERSION,
        "unet": unet.config.to_dict(),
        "schedule": schedule.config,
        "dataset": dataset,
        "class_names": list(class_names or []),
        "step": step,
        "ema": ema,
    }
    if sampling:
        meta["sampling"] = sampling
    if distillation:
        meta["distillation"] = distillation
    tensors = {k: v.detach().contiguous().cpu() for k, v in unet.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"diffusion": json.dumps(meta)}))
    return path


def read_metadata(path: str | Path) -> dict:
    """The checkpoint's metadata, without loading its weights."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with open(path, "rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
            if not 0 < header_len <= min(100_000_000, path.stat().st_size - 8):
                raise CheckpointError(f"{path}: not a safetensors file (bad header; a pickle or a truncated file?)")
            header = json.loads(f.read(header_len))
        meta = json.loads(header["__metadata__"]["diffusion"])
    except CheckpointError:
        raise
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: not a checkpoint of this project (no 'diffusion' metadata: {e})") from e
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: its 'diffusion' metadata is not a JSON object")
    if meta.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {meta.get('format')!r}, expected {FORMAT_VERSION}")
    return meta


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> Checkpoint:
    """Rebuild the model a checkpoint describes, on `device`, ready to sample (eval mode). The weights
    are kept channels-last, the layout oneDNN's convolutions prefer (DDIM-50 on the CPU 1.0–1.5× faster
    for the shipped models, docs/results.md#speed); inputs in either layout work."""
    path = Path(path)
    meta = read_metadata(path)
    try:
        config = UNetConfig.from_dict(meta["unet"])
        schedule = NoiseSchedule.from_name(meta["schedule"]["name"], meta["schedule"]["timesteps"])
        unet = UNet(config)
        about = _about(meta, config)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    except Exception as e:  # whatever a malformed description makes the constructors raise
        raise CheckpointError(f"{path}: invalid model description in metadata: {type(e).__name__}: {e}") from e
    try:
        state = load_file(path)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: cannot read weights (truncated or corrupt file?): {e}") from e
    not_finite = [name for name, tensor in state.items() if tensor.is_floating_point() and not tensor.isfinite().all()]
    if not_finite:
        raise CheckpointError(f"{path}: weights hold NaN or infinity ({', '.join(not_finite[:3])}…): a diverged run?")
    try:
        unet.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not match the model in its metadata: {e}") from e
    unet = unet.to(device, memory_format=torch.channels_last).eval()
    schedule = schedule.to(device)
    model = EpsilonFromV(unet, schedule) if config.prediction == "v" else unet
    return Checkpoint(unet=model, schedule=schedule, path=path, **about)


def _about(meta: dict, config: UNetConfig) -> dict:
    """The descriptive metadata, checked: CheckpointError if malformed."""
    about = {
        "dataset": meta.get("dataset", "unknown"),
        "class_names": meta.get("class_names", []),
        "step": meta.get("step", 0),
        "ema": meta.get("ema", True),
        "sampling": meta.get("sampling"),
        "distillation": meta.get("distillation"),
    }
    if not isinstance(about["dataset"], str):
        raise CheckpointError(f"metadata 'dataset' must be a string, not {about['dataset']!r}")
    names = about["class_names"]
    if not (isinstance(names, list) and all(isinstance(name, str) for name in names)):
        raise CheckpointError(f"metadata 'class_names' must be a list of strings, not {names!r}")
    if names and len(names) != config.num_classes:
        raise CheckpointError(f"metadata 'class_names' has {len(names)} names for {config.num_classes} classes")
    if isinstance(about["step"], bool) or not isinstance(about["step"], int) or about["step"] < 0:
        raise CheckpointError(f"metadata 'step' must be a whole number ≥ 0, not {about['step']!r}")
    if not isinstance(about["ema"], bool):
        raise CheckpointError(f"metadata 'ema' must be true or false, not {about['ema']!r}")
    sampling = about["sampling"]
    if sampling is not None and not (
        isinstance(sampling, dict)
        and isinstance(sampling.get("sampler"), str)
        and isinstance(sampling.get("steps"), int)
        and not isinstance(sampling["steps"], bool)
        and sampling["steps"] >= 1
    ):
        raise CheckpointError(f"metadata 'sampling' must be {{'sampler': name, 'steps': n ≥ 1, …}}, not {sampling!r}")
    distillation = about["distillation"]
    if distillation is not None and not (
        isinstance(distillation, dict) and isinstance(distillation.get("teacher", ""), str)
    ):
        raise CheckpointError(f"metadata 'distillation' must be {{'teacher': file name, …}}, not {distillation!r}")
    return about


def atomic_write(path: str | Path, write) -> None:
    """Call write(tmp_path) on a temporary file beside `path` (its folder made if need be), then rename it over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp (and some writers) make the file private: make it ordinary
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
