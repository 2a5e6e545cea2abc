"""diffusers' DDPM models beside this project's checkpoints: the one place that knows diffusers' files.

A folder (inside the checkpoints folder, or given to the evaluation) is a diffusers model when it holds
  - a pipeline in the save_pretrained layout: model_index.json, unet/config.json with
    unet/diffusion_pytorch_model.safetensors, and scheduler/scheduler_config.json; or
  - a bare UNet2DModel with its scheduler config beside it: config.json,
    diffusion_pytorch_model.safetensors and scheduler_config.json (the hub's google/ddpm-* layout).

Its UNet2DModel becomes a noise predictor with the interface of the project's UNet (DiffusersUNet),
so that every sampler drives it unchanged; its scheduler config becomes a NoiseSchedule whose
`sampling` says how the model's own scheduler samples (clipping, DDIM spacing, DDPM variance). What
this project has no equivalent for raises CheckpointError naming the folder and the option: the
server logs it and serves the other models.

Only safetensors weights are read, never pickles (.bin, .pt, .ckpt can run code when loaded).
diffusers is an optional extra: pip install -e '.[diffusers]'.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from model.checkpoint import Checkpoint, CheckpointError
from model.schedule import NoiseSchedule, SamplingConfig, _at, cosine_betas, linear_betas

WEIGHTS = "diffusion_pytorch_model.safetensors"
SCHEDULERS = ("DDPMScheduler", "DDIMScheduler")  # the schedulers of DDPMPipeline and DDIMPipeline
PREDICTIONS = ("epsilon", "v_prediction", "sample")
SPACINGS = ("leading", "trailing")  # diffusers' spacings that this project's DDIM has too (not linspace)
VARIANCES = {"fixed_small": "fixed_small", "fixed_small_log": "fixed_small", "fixed_large": "fixed_large"}
# options with no equivalent here, served only at the value that switches them off
NEUTRAL = {"thresholding": False, "rescale_betas_zero_snr": False, "set_alpha_to_one": True}
THRESHOLDING_ONLY = {"dynamic_thresholding_ratio", "sample_max_value"}  # read by diffusers only with thresholding
HONOURED = {
    "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "clip_sample",
    "clip_sample_range", "prediction_type", "timestep_spacing", "steps_offset", "variance_type",
}  # fmt: skip


# The papers' own models (Ho et al. 2020), converted to diffusers by Google (README: sizes, hardware):
# a folder of the repo's name (as model.fetch writes it) was trained on this dataset (model.data's name).
PAPERS_MODELS = {
    "ddpm-cifar10-32": "cifar10",
    "ddpm-celebahq-256": "celebahq",
    "ddpm-ema-church-256": "lsun-church",
    "ddpm-ema-bedroom-256": "lsun-bedroom",
}
# the files of both layouts that model.fetch downloads: the configs and the safetensors weights
CONFIG_FILES = (
    "model_index.json",
    "config.json",
    "scheduler_config.json",
    "unet/config.json",
    "scheduler/scheduler_config.json",
)
WEIGHT_FILES = (WEIGHTS, f"unet/{WEIGHTS}")


@dataclass(frozen=True)
class PredictorConfig:
    """What the samplers and the server read of a noise predictor's config."""

    in_channels: int
    image_size: int
    num_classes: int  # 0: unconditional


class DiffusersUNet(nn.Module):
    """A diffusers UNet2DModel behind the interface of the project's UNet: forward(x, t, labels) → ε
    (from a v or x0 prediction with the model's schedule), `null_label` and `config`. A class-conditional
    UNet2DModel (num_class_embeds) has no unconditional class (diffusers defines none), so `null_label`
    is None: it samples with a label for every image and without classifier-free guidance."""

    def __init__(self, unet: nn.Module, schedule: NoiseSchedule, prediction_type: str):
        super().__init__()
        self.unet = unet
        self.schedule = schedule
        self.prediction_type = prediction_type
        size = unet.config.sample_size
        self.config = PredictorConfig(
            in_channels=unet.config.in_channels,
            image_size=size if isinstance(size, int) else size[0],
            num_classes=unet.config.num_class_embeds or 0,
        )
        self.null_label = None

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if (labels is None) != (self.config.num_classes == 0):
            need = "a label for every sample (it has no unconditional class)" if labels is None else "no labels"
            raise ValueError(f"this model is {'class-conditional' if labels is None else 'unconditional'}: give {need}")
        out = self.unet(x, t, class_labels=labels).sample
        return eps_from_prediction(self.prediction_type, out, x, t, self.schedule)


def eps_from_prediction(
    prediction_type: str, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, schedule: NoiseSchedule
) -> torch.Tensor:
    """ε from what the network predicts: ε itself, v = √ᾱ ε - √(1-ᾱ) x0 (Salimans & Ho 2022), or x0."""
    if prediction_type == "epsilon":
        return out
    if prediction_type == "v_prediction":
        return schedule.eps_from_v(x_t, t, out)
    signal, noise = _at(schedule.sqrt_alphas_cumprod, t, x_t), _at(schedule.sqrt_one_minus_alphas_cumprod, t, x_t)
    if prediction_type == "sample":
        return (x_t - signal * out) / noise
    raise ValueError(f"unknown prediction_type {prediction_type!r}; choose one of {PREDICTIONS}")


def is_diffusers_folder(path: Path) -> bool:
    """Whether `path` looks like a diffusers model (it may still fail to load: that is then logged)."""
    return path.is_dir() and any(
        (path / name).is_file() for name in ("model_index.json", "unet/config.json", "config.json")
    )


def layout(folder: Path) -> tuple[Path, Path]:
    """(the UNet's folder, the scheduler config) of a pipeline folder or a bare UNet2DModel folder."""
    unet_dir = folder / "unet" if (folder / "unet" / "config.json").is_file() else folder
    if not (unet_dir / "config.json").is_file():
        raise CheckpointError(f"{folder}: no unet/config.json nor config.json: not a diffusers model folder")
    for scheduler_config in (folder / "scheduler" / "scheduler_config.json", folder / "scheduler_config.json"):
        if scheduler_config.is_file():
            return unet_dir, scheduler_config
    raise CheckpointError(
        f"{folder}: no scheduler/scheduler_config.json nor scheduler_config.json: the noise schedule is unknown"
    )


def read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read it as JSON: {e}") from e
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return value


def schedule_from_config(config: dict, where: Path | str, defaults: dict[str, object]) -> tuple[NoiseSchedule, str]:
    """The NoiseSchedule (with its `sampling`) and the prediction type a diffusers scheduler config
    describes. `defaults` are the scheduler class's own defaults: keys the class does not take are
    ignored, as diffusers ignores them (old configs hold a few), and missing ones take their default."""
    cls = config.get("_class_name")
    if cls not in SCHEDULERS:
        raise CheckpointError(f"{where}: scheduler {cls!r} is not one of {', '.join(SCHEDULERS)}")
    c = {key: config.get(key, default) for key, default in defaults.items()}

    def refuse(key: str, why: str = "") -> CheckpointError:
        return CheckpointError(f"{where}: {key}={c[key]!r} has no equivalent in this project{why}; not served")

    for key, value in c.items():
        if key in NEUTRAL and value != NEUTRAL[key]:
            raise refuse(key)
        if key not in HONOURED | NEUTRAL.keys() | THRESHOLDING_ONLY and value != defaults[key]:
            raise refuse(key, " (an option this project does not know)")
    if c["prediction_type"] not in PREDICTIONS:
        raise refuse("prediction_type", f" (it knows {', '.join(PREDICTIONS)})")
    if c["timestep_spacing"] not in SPACINGS:
        raise refuse("timestep_spacing", f" (DDIM spacings here: {', '.join(SPACINGS)}); set 'leading' or 'trailing'")
    variance = c.get("variance_type", "fixed_small")  # DDIMScheduler has none: a DDPMScheduler made from it gets this
    if variance not in VARIANCES:
        raise refuse("variance_type", f" (DDPM variances here: {', '.join(VARIANCES)})")
    if not (isinstance(c["clip_sample_range"], int | float) and c["clip_sample_range"] > 0):
        raise refuse("clip_sample_range", " (it must be a positive number)")
    try:
        timesteps = int(c["num_train_timesteps"])
        betas, name = _betas(c, timesteps)
        sampling = SamplingConfig(
            clip=bool(c["clip_sample"]),
            clip_range=float(c["clip_sample_range"]),
            spacing=c["timestep_spacing"],
            steps_offset=int(c["steps_offset"]),
            variance=VARIANCES[variance],
        )
        return NoiseSchedule(betas, name, sampling), c["prediction_type"]
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: invalid noise schedule: {e}") from e


def _betas(c: dict, timesteps: int) -> tuple[torch.Tensor, str]:
    """β_t as diffusers computes it for each beta_schedule (in float64 here), and a name for it."""
    if c["trained_betas"] is not None:
        betas = torch.tensor(c["trained_betas"], dtype=torch.float64)
        if betas.shape != (timesteps,):
            raise ValueError(f"trained_betas has {len(betas)} values for num_train_timesteps {timesteps}")
        return betas, "trained"
    start, end, schedule = float(c["beta_start"]), float(c["beta_end"]), c["beta_schedule"]
    if schedule == "linear":
        betas = torch.linspace(start, end, timesteps, dtype=torch.float64)
        return betas, "linear" if torch.allclose(betas, linear_betas(timesteps)) else f"linear β {start:g}…{end:g}"
    if schedule == "scaled_linear":
        betas = torch.linspace(start**0.5, end**0.5, timesteps, dtype=torch.float64) ** 2
        return betas, f"scaled_linear β {start:g}…{end:g}"
    if schedule == "squaredcos_cap_v2":
        return cosine_betas(timesteps), "cosine"  # the same formula, ᾱ(t) = cos²((t/T + 0.008)/1.008 · π/2)
    if schedule == "sigmoid":
        betas = torch.sigmoid(torch.linspace(-6, 6, timesteps, dtype=torch.float64)) * (end - start) + start
        return betas, f"sigmoid β {start:g}…{end:g}"
    raise ValueError(f"beta_schedule {schedule!r}: this project has linear, scaled_linear, squaredcos_cap_v2, sigmoid")


def scheduler_defaults(class_name: str) -> dict[str, object]:
    """The options of the installed diffusers' scheduler class, with their defaults."""
    import diffusers

    cls = getattr(diffusers, class_name)
    params = inspect.signature(cls.__init__).parameters
    return {name: p.default for name, p in params.items() if name != "self" and p.kind is p.POSITIONAL_OR_KEYWORD}


def load_diffusers_model(folder: str | Path, device: torch.device | str = "cpu") -> Checkpoint:
    """A diffusers model folder as a Checkpoint: a DiffusersUNet (eval mode) and its schedule, on `device`."""
    folder = Path(folder)
    try:
        import diffusers
    except ImportError:
        raise CheckpointError(
            f"{folder}: a diffusers model, but diffusers is not installed: pip install -e '.[diffusers]'"
        ) from None
    unet_dir, scheduler_path = layout(folder)
    scheduler_config = read_json(scheduler_path)
    class_name = scheduler_config.get("_class_name")
    defaults = scheduler_defaults(class_name) if class_name in SCHEDULERS else {}
    schedule, prediction_type = schedule_from_config(scheduler_config, scheduler_path, defaults)

    config = read_json(unet_dir / "config.json")
    where = unet_dir / "config.json"
    if config.get("_class_name") != "UNet2DModel":
        raise CheckpointError(f"{where}: a {config.get('_class_name')!r}, not a UNet2DModel")
    size = config.get("sample_size")
    if not (isinstance(size, int) or (isinstance(size, list) and len(size) == 2 and size[0] == size[1])):
        raise CheckpointError(f"{where}: sample_size {size!r}: only square images are served")
    if config.get("out_channels", 3) != config.get("in_channels", 3):
        raise CheckpointError(
            f"{where}: out_channels {config.get('out_channels')} ≠ in_channels {config.get('in_channels')} "
            "(a learned variance?): this project's samplers take ε alone"
        )
    if config.get("class_embed_type") is not None:
        raise CheckpointError(f"{where}: class_embed_type {config['class_embed_type']!r}: only num_class_embeds serves")
    if not (unet_dir / WEIGHTS).is_file():
        others = sorted(p.name for p in unet_dir.iterdir() if p.suffix in (".bin", ".pt", ".ckpt", ".safetensors"))
        raise CheckpointError(
            f"{unet_dir}: no {WEIGHTS} (found: {', '.join(others) or 'no weights'}); this project loads "
            "safetensors only, never pickles: fetch a revision that has them (python -m model.fetch --help)"
        )
    try:
        unet = diffusers.UNet2DModel.from_pretrained(
            unet_dir, use_safetensors=True, local_files_only=True, torch_dtype=torch.float32, low_cpu_mem_usage=False
        )
    except Exception as e:  # diffusers raises many kinds (OSError, ValueError, safetensors errors…)
        first_line = next(iter(str(e).strip().splitlines()), "")[:300]
        raise CheckpointError(f"{unet_dir}: cannot load the UNet2DModel: {type(e).__name__}: {first_line}") from e
    unet = unet.to(device).eval().requires_grad_(False)
    schedule = schedule.to(device)
    parameters = sum(p.numel() for p in unet.parameters())
    description = (
        f"diffusers UNet2DModel ({parameters / 1e6:.1f}M parameters) with a {class_name} config: "
        f"{prediction_type} prediction, clip_sample {schedule.sampling.clip}, variance {schedule.sampling.variance}"
    )
    model = DiffusersUNet(unet, schedule, prediction_type).eval()
    dataset = PAPERS_MODELS.get(folder.name, "diffusers")
    # ema=True: these are the weights diffusers' pipelines sample with (whether they are EMA is not recorded)
    return Checkpoint(model, schedule, dataset, [], 0, True, folder, origin=description)
