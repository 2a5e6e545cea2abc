"""The checkpoint folder, loaded: every diffusion checkpoint and diffusers model in it, once, on the serving device."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from model.checkpoint import Checkpoint, CheckpointError
from model.device import synchronize
from model.formats import FORMATS, load_model, model_format
from model.samplers import guided_eps

log = logging.getLogger(__name__)

PREFERRED_DEFAULT = "mnist"
TIMING_ROWS = 16  # the batch warm_up times: the page's default request (16 images, one row each)
TIMINGS = 3  # warm_up keeps the median of this many timed forwards: one busy moment does not set the estimate
ROW_TIME_SMOOTHING = 0.1  # weight of the latest iteration in a model's seconds_per_row


@dataclass
class LoadedModel:
    """A model ready to sample from, named by model.formats. It may name the sampler (and its steps) that
    a request for it gets when it names none, and its own defaults for samplers' parameters: a distilled
    student's metadata (which fixes them: `own_sampling`) or a diffusers scheduler's choices, which
    server.validation prefers to the server's defaults."""

    name: str
    checkpoint: Checkpoint
    device: torch.device
    seconds_per_row: float | None = None  # one image's share of a loop iteration: warm_up's, then record_row_time's
    _row_times: int = field(default=0, repr=False)  # iterations the loop has measured

    def __post_init__(self) -> None:  # the defaults its files state (Checkpoint.sampler_defaults)
        own = self.checkpoint.sampling  # a distilled student's sampler and steps
        self.own_sampling = own is not None  # a distilled student: only its sampler at its steps
        self.default_sampler: str | None = None if own is None else own["sampler"]
        self.default_steps: int | None = None if own is None else own["steps"]
        self.param_defaults = self.checkpoint.sampler_defaults()  # sampler name → parameter values

    def record_row_time(self, seconds: float) -> None:
        """One iteration's time per row, from the sampling loop. The first replaces the start-up timing
        (taken while the other models loaded), the next ones are averaged in, then smoothed: one slow step
        moves the figure only a little, yet a machine that got busier (or idle) shows within a run or two."""
        self._row_times += 1
        weight = max(ROW_TIME_SMOOTHING, 1 / self._row_times)
        last = self.seconds_per_row if self._row_times > 1 else seconds
        self.seconds_per_row = last + weight * (seconds - last)

    @property
    def unet(self):
        return self.checkpoint.unet

    @property
    def schedule(self):
        return self.checkpoint.schedule

    @property
    def num_classes(self) -> int:
        return self.checkpoint.config.num_classes

    @property
    def guidance(self) -> bool:
        """Whether classifier-free guidance is possible: the model has an unconditional (null) class."""
        return bool(self.num_classes) and self.unet.null_label is not None

    @property
    def guidance_input(self) -> bool:
        """Whether w is a network input (a guidance-distilled student): a guided image costs one row, not two."""
        return getattr(self.checkpoint.config, "guidance_input", False)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        config = self.checkpoint.config
        return (config.in_channels, config.image_size, config.image_size)

    def info(self) -> dict:
        config = self.checkpoint.config
        return {
            "name": self.name,
            "dataset": self.checkpoint.dataset,
            "image_size": config.image_size,
            "channels": config.in_channels,
            "num_classes": config.num_classes,
            "class_names": self.checkpoint.class_names,
            "guidance": self.guidance,
            "guidance_input": self.guidance_input,
            "timesteps": self.schedule.num_timesteps,
            "schedule": self.schedule.name,
            "device": str(self.device),
            "default_sampler": self.default_sampler,
            "default_steps": self.default_steps,
            "distilled": self.own_sampling,
            "teacher": self.checkpoint.teacher,
            "sampler_params": self.param_defaults,
            "seconds_per_row": self.seconds_per_row,
        }


def model_paths(folder: Path) -> list[Path]:
    """The models directly inside `folder` (model.formats), by name; what looks like one but cannot be (a
    directory or a broken link named *.safetensors, a format whose package is not installed) is logged, left out."""
    paths = []
    for path in sorted(folder.iterdir() if folder.is_dir() else []):
        if path.name.startswith("."):  # downloads or writes in progress (model.fetch, atomic_write)
            continue
        if path.suffix == ".safetensors" and not path.is_file():
            what = "a directory" if path.is_dir() else "a symbolic link that leads nowhere or loops"
            log.warning("skipping %s: not a checkpoint file but %s", path, what)
        elif model_format(path):
            paths.append(path)
    if not paths:
        log.error("no checkpoints (*.safetensors or diffusers folders) in %s: nothing to serve", folder.resolve())
    for kind in FORMATS:
        if names := [path.name for path in paths if model_format(path) is kind and not kind.installed]:
            install = f"{kind.extra} is not installed: pip install -e '.[{kind.extra}]'"
            log.warning("skipping %s: %s", ", ".join(names), install)
    return [path for path in paths if model_format(path).installed]


class ModelRegistry:
    def __init__(self, models: dict[str, LoadedModel], default: str | None = None):
        self.models = models
        if default is not None and default not in models:
            log.warning("default model %r is not loaded; using the first one instead", default)
            default = None
        self.default = default or (PREFERRED_DEFAULT if PREFERRED_DEFAULT in models else next(iter(models), None))

    @classmethod
    def load(
        cls,
        folder: Path,
        device: torch.device,
        default: str | None = None,
        stop: Callable[[], bool] = lambda: False,
        before_timing: Callable[[], None] = lambda: None,
    ) -> ModelRegistry:
        """Load the models of model_paths(folder); one that cannot be loaded, for whatever reason, is
        logged and skipped, and the others still serve. Of two of one name (mnist.safetensors and a folder
        mnist/) the first by path serves. Once `stop()` says so (a signal came), the rest are not loaded."""
        models, sources = {}, {}
        paths = model_paths(folder)
        for i, path in enumerate(paths):
            if stop():
                log.warning("stopping: not loading the %d checkpoints left", len(paths) - i)
                break
            name = model_format(path).name(path)
            if name in sources:
                log.warning("skipping %s: model %s is loaded from %s already", path, name, sources[name])
                continue
            started = time.perf_counter()
            try:
                checkpoint = load_model(path, device)
                model = LoadedModel(name, checkpoint, device)
                warm_up(model, before_timing)
            except CheckpointError as e:
                log.warning("skipping a checkpoint: %s", e)
            except Exception as e:  # out of memory, most likely; whatever it is, the other models still serve
                log.warning("skipping a checkpoint: %s: %s: %s", path, type(e).__name__, e, exc_info=True)
            else:
                models[name], sources[name] = model, path
                seconds = time.perf_counter() - started
                log.info("loaded %s from %s on %s in %.1f s: %s", name, path, device, seconds, describe(checkpoint))
        return cls(models, default)

    def get(self, name: str | None) -> LoadedModel | None:
        """The model called `name`; None (and only None) means the default model."""
        return self.models.get(self.default if name is None else name)


def describe(checkpoint: Checkpoint) -> str:
    config = checkpoint.config
    classes = f"{config.num_classes} classes" if config.num_classes else "unconditional"
    schedule = f"{checkpoint.schedule.name} schedule, T = {checkpoint.schedule.num_timesteps}"
    shape = f"{config.in_channels}×{config.image_size}×{config.image_size}"
    return f"{checkpoint.dataset}, {shape}, {classes}, {schedule}, {checkpoint.weights}"


@torch.inference_mode()
def warm_up(model: LoadedModel, before_timing: Callable[[], None] = lambda: None) -> None:
    """One forward at the batch shape of a guided request, so the first user does not pay for lazy
    initialisation (cuDNN autotuning, allocator growth, the first-call overhead of each kernel); then
    the median of TIMINGS timed forwards of TIMING_ROWS rows, after an untimed one of that shape: the
    model's first `seconds_per_row` (GET /models), until the sampling loop has measured its own."""
    x = torch.zeros(2, *model.image_shape, device=model.device)
    t = torch.full((2,), model.schedule.num_timesteps - 1, device=model.device)
    labels = torch.zeros(2, dtype=torch.long, device=model.device) if model.num_classes else None
    guided_eps(model.unet, x, t, labels, 3.0)  # as the loop calls it: a student takes w, a teacher doubles
    x = torch.zeros(TIMING_ROWS, *model.image_shape, device=model.device)
    t = torch.full((TIMING_ROWS,), model.schedule.num_timesteps // 2, device=model.device)
    labels = torch.zeros(TIMING_ROWS, dtype=torch.long, device=model.device) if model.num_classes else None
    guided_eps(model.unet, x, t, labels, 1.0)  # the first call at a new shape pays for its setup: not timed
    before_timing()
    seconds = []
    for _ in range(TIMINGS):
        synchronize(model.device)
        began = time.perf_counter()
        guided_eps(model.unet, x, t, labels, 1.0)  # unguided, as the loop calls it: one row each
        synchronize(model.device)
        seconds.append(time.perf_counter() - began)
    model.seconds_per_row = sorted(seconds)[TIMINGS // 2] / TIMING_ROWS
