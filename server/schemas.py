"""The API's contract: what clients send and what they get back, for REST and the WebSocket.

Requests are strict: an unknown field, a string where a number belongs or a number out of range
is refused (422, or an error message on the WebSocket), never guessed at. A request field is defined
here once: its type and fixed range in the request model, and in RULES what depends on the server
and the model (its limit, its default), whether a branch takes it from its origin, and its name in a
sentence. server.validation checks the rules, the OpenAPI schema states them, GET /config publishes
them for the page, and the job's spec and the replies take the fields by name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from model.samplers import SAMPLERS, Sampler

# Seeds stay below 2^53 so that JavaScript, whose numbers are doubles, can send them back exactly.
MAX_SEED = 2**53 - 1


ParamValue = float | int | bool | str


class SampleRequest(BaseModel):
    """The fields below, plus the chosen sampler's own parameters as fields of their own (`"eta": 0.5`
    for ddim, `"order": 3` for unipc): GET /config lists every sampler with its parameters, their types,
    ranges and defaults. Any other field is refused."""

    model_config = ConfigDict(
        extra="allow",  # the sampler's parameters; server.validation refuses whatever its sampler does not take
        strict=True,
        json_schema_extra={
            "examples": [
                {"model": "mnist", "n": 16, "label": 7},
                {"model": "mnist", "sampler": "ddim", "steps": 50, "eta": 0.0, "n": 16, "label": 7},
            ]
        },
    )

    model: str | None = Field(None, description="A name from GET /models; the server's default model if omitted.")
    sampler: str | None = Field(
        None,
        description=f"A sampler of GET /config ({', '.join(SAMPLERS)}); if omitted, the model's default "
        "sampler (GET /models), else the server's (GET /config).",
    )
    steps: int | None = Field(
        None,
        ge=1,
        description="Denoising steps (each one model evaluation): default the sampler's own (ddim 50, ddpm all T), "
        "or the model's or server's default steps when their default sampler is used; at most T and the server's "
        "max_steps. ddpm with fewer than T steps samples the respaced chain (Improved DDPM).",
    )
    n: int = Field(16, ge=1, description="How many images; at most the server's max_n (64 by default).")
    seed: int | None = Field(
        None, ge=0, le=MAX_SEED, description="Fixes the images; null draws one, and the answer reports it."
    )
    label: int | None = Field(
        None,
        ge=0,
        description="Class to sample (0 … num_classes-1) on a class-conditional model; null samples unconditionally. "
        "Refused on an unconditional model.",
    )
    guidance: float | None = Field(
        None,
        ge=0,
        allow_inf_nan=False,
        description="Classifier-free guidance weight w in ε_u + w (ε_c - ε_u), used with a label: 1 is the plain "
        "conditional model, larger is more class-typical. Default: the server's default_guidance (3.0); at most "
        "its max_guidance (20). Ignored without a label.",
    )
    init_image: str | None = Field(
        None,
        description="SDEdit and inpainting: a base64 PNG (a data:image/png;base64, prefix allowed) of exactly the "
        "model's image_size a side, at most max_init_image_bytes (GET /config) decoded; converted to the model's "
        "channels (grey or RGB), transparency composited on black. Every image of the run starts from it.",
    )
    strength: float = Field(
        1.0,
        gt=0,
        le=1,
        allow_inf_nan=False,
        description="With init_image: the run takes the last ceil(steps·strength) steps of its sampler's grid, from "
        "init_image noised to the first of them (SDEdit). 1 is the plain run from the seed's noise (the image "
        "forgotten); small values stay close to the image. Other than 1 only with init_image.",
    )
    mask: str | None = Field(
        None,
        description="Inpainting, with init_image: a base64 PNG of the same size, read as grey: pixels of 128 or more "
        "are repainted, the others keep init_image (replaced after every step by init_image noised to that step).",
    )
    branch: Branch | None = Field(
        None,
        description="Continue another run from one of its steps with this request's settings: the server replays "
        "`from` (the original request, seed included) to `at_step` (a frame's step), then runs on with this "
        "request's label, guidance, sampler, parameters and steps. The start (model, n, seed, init_image, strength, "
        "mask, interpolate_to, temperature) is `from`'s: leave them out here, or send the same.",
    )
    interpolate_to: int | None = Field(
        None,
        ge=0,
        le=MAX_SEED,
        description="A row of n ≥ 2 images between two seeds: the starting noises are spherically interpolated from "
        "seed's to this seed's, so the first image is seed's n = 1 run and the last this seed's. Needs a "
        "deterministic sampler (not ddpm, nor ddim with eta > 0).",
    )
    temperature: float = Field(
        1.0,
        ge=0,
        le=2,
        allow_inf_nan=False,
        description="Scales the starting noise x_T, as Glow's temperature and GANs' truncation trick do: below 1 the "
        "images are smoother and more typical, less varied (0 starts every image from x_T = 0); above 1, wilder. "
        "Clearest with a deterministic sampler (ddim with eta 0, dpm-solver++, unipc).",
    )


class Branch(BaseModel):
    """Where a branch starts: a run (its request) and a step of it."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=False)

    origin: StreamRequest = Field(
        alias="from",
        description="The original request, every field as sent (its seed included; the WebSocket's every and "
        "preview_size are allowed and ignored).",
    )
    at_step: int = Field(ge=0, description="The step of the original run to branch at: a frame's step (0: x_T).")


class StreamRequest(SampleRequest):
    """The first (and only) request message of WS /ws/sample."""

    every: int = Field(1, ge=1, description="Stream every k-th step; the last step is always streamed.")
    preview_size: int | None = Field(
        None,
        ge=8,
        description="A frame shows each image at most this many pixels a side, downscaled (the final images are "
        "full size). Default and maximum: the server's preview_size (64).",
    )


SampleRequest.model_rebuild()


# --- what a field's type cannot say: the limits and defaults of this server and model -----------------


@dataclass(frozen=True)
class Scope:
    """What a field's limits and defaults depend on: the server's settings (server.settings.Settings),
    the models a request may name (the one it names, once known) and its sampler (None: any)."""

    settings: Any
    models: tuple = ()  # server.registry.LoadedModel
    sampler: Sampler | None = None

    @property
    def model(self):
        return self.models[0] if len(self.models) == 1 else None

    @property
    def timesteps(self) -> int | None:
        return max((m.schedule.num_timesteps for m in self.models), default=None)

    @property
    def sampler_steps(self) -> int | None:
        """The most steps the sampler takes on the model (None: any sampler, or any model)."""
        return None if self.sampler is None or self.timesteps is None else self.sampler.max_steps(self.timesteps)

    def default_steps(self) -> int | None:
        """The steps of a request that gives none: those its model or the server pairs with this sampler
        when it is their default, else the sampler's own (all T for DDPM)."""
        model, sampler, settings = self.model, self.sampler, self.settings
        if model is None or sampler is None:
            return None
        if sampler.name == model.default_sampler and model.default_steps:
            return model.default_steps
        if sampler.name == settings.default_sampler and settings.default_steps and not model.default_sampler:
            return settings.default_steps
        return sampler.steps_for(model.schedule.num_timesteps)


@dataclass(frozen=True)
class Rule:
    """A request field beyond its type, where the server or the model sets its largest value and its
    default (a default over the maximum is cut to it)."""

    title: str  # its name in a sentence (the page's messages)
    maximum: Callable[[Scope], float | None] | None = None
    over: str = "at most {most:g}"  # why a value is refused: formatted with most (the maximum) and s (the Scope)
    default: Callable[[Scope, Any], Any] | None = None  # (scope, the schema's default) → the default
    needs: tuple[str, str] | None = None  # (the field it needs to differ from its default, what that is for)
    start: bool = False  # a part of a run's start: a branch takes it from the run it continues


RULES: dict[str, Rule] = {
    "model": Rule("The model", start=True),
    "sampler": Rule("The sampler"),
    "steps": Rule(
        "Steps",
        maximum=lambda s: min(s.settings.max_steps, s.sampler_steps or s.timesteps or s.settings.max_steps),
        over="at most {most} steps ({s.sampler.name} on a model of T = {s.timesteps} takes {s.sampler_steps}, "
        "the server allows {s.settings.max_steps})",
        default=lambda s, value: s.default_steps(),
    ),
    "n": Rule(
        "The number of images",
        maximum=lambda s: s.settings.max_n,
        over="at most {most} images per request",
        default=lambda s, value: min(value, s.settings.max_n),  # the default fits
        start=True,
    ),
    "seed": Rule("The seed", start=True),
    "label": Rule(
        "The class",
        maximum=lambda s: (classes - 1) if (classes := max((m.num_classes for m in s.models), default=0)) else None,
        over="{s.model.name} has classes 0 … {most}",
    ),
    "guidance": Rule(
        "Guidance", maximum=lambda s: s.settings.max_guidance, default=lambda s, value: s.settings.default_guidance
    ),
    "init_image": Rule("The starting image", start=True),
    "strength": Rule("Strength", needs=("init_image", "the image to start from"), start=True),
    "mask": Rule("The mask", needs=("init_image", "the image whose unmasked pixels are kept"), start=True),
    "branch": Rule("The branch"),
    "interpolate_to": Rule("The seed to interpolate to", start=True),
    "temperature": Rule("The noise temperature", start=True),
    "every": Rule("Every"),
    "preview_size": Rule(
        "The preview size",
        maximum=lambda s: s.settings.preview_size,
        over="at most {most} (the server's preview_size)",
        default=lambda s, value: s.settings.preview_size,
    ),
}
START_FIELDS = tuple(name for name, rule in RULES.items() if rule.start)  # a branch's are its origin's


def bounds(scope: Scope, request_model: type[SampleRequest] = StreamRequest) -> dict[str, dict]:
    """Each field's largest value and its default in this scope, where the rules set them: the limits
    the OpenAPI schema states and GET /config publishes."""
    out = {}
    for name, info in request_model.model_fields.items():
        rule = RULES[name]
        most = None if rule.maximum is None else rule.maximum(scope)
        default = info.default if rule.default is None else rule.default(scope, info.default)
        out[name] = {"maximum": most, "default": default}
    return out


class SampleResponse(BaseModel):
    images: list[str] = Field(description="Each image as a base64 PNG (no data: prefix), in sampling order.")
    grid: str = Field(description="All images as one base64 PNG grid, ceil(√n) a row, 2 px padding.")
    seed: int
    model: str
    sampler: str
    steps: int
    params: dict[str, ParamValue] = Field(description="Every parameter of the sampler, defaults filled in.")
    label: int | None
    guidance: float | None = Field(description="The guidance weight used; null when there is no label.")
    elapsed_ms: float = Field(description="Time from the job's first step to its last, in milliseconds.")


class ModelInfo(BaseModel):
    name: str
    dataset: str
    image_size: int
    channels: int
    num_classes: int = Field(description="0 for an unconditional model.")
    class_names: list[str]
    guidance: bool = Field(
        description="Classifier-free guidance is possible: the model is class-conditional with an unconditional "
        "class. A conditional model without one (a diffusers UNet2DModel) samples a random class per image when "
        "label is null, and refuses guidance other than 1."
    )
    guidance_input: bool = Field(
        False,
        description="w is an input of the network (a guidance-distilled student): a guided image costs one "
        "row of a forward, not two (seconds_per_row).",
    )
    timesteps: int
    schedule: str
    device: str
    default_sampler: str | None = Field(
        None, description="The sampler a request for this model gets when it names none; null: the server's."
    )
    default_steps: int | None = Field(None, description="The steps of its default sampler; null: the sampler's own.")
    distilled: bool = Field(
        False, description="A distilled student: it takes only its default sampler, at its default steps."
    )
    teacher: str | None = Field(
        None,
        description="The model a distilled student was made from (its checkpoint's name, which may or may not be "
        "served here); null for a model that is not distilled.",
    )
    sampler_params: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="The sampler parameters this model's files state, by sampler name: for this model they replace "
        "the defaults of GET /config's sampler table; a distilled model takes no other values of them.",
    )
    seconds_per_row: float | None = Field(
        None,
        description="Seconds one image (one row) takes in an iteration of the sampling loop (its batched UNet "
        "forward and its steps): timed once at load on a batch of 8, then kept up to date, smoothed, from the "
        "iterations the loop runs. A run alone takes about steps × evals_per_step × n × seconds_per_row (a guided "
        "image counts twice).",
    )


# --- GET /config: what a client needs to build its controls ---------------------------------------


class ParamInfo(BaseModel):
    name: str = Field(description="The request field that sets it.")
    type: Literal["number", "integer", "boolean", "string"]
    default: ParamValue
    minimum: float | None = Field(description="Smallest value allowed (numbers), or null.")
    maximum: float | None = Field(description="Largest value allowed (numbers), or null.")
    choices: list[ParamValue] | None = Field(description="The only values allowed, or null.")
    description: str = Field(description="What it does, in one line.")


class SamplerInfo(BaseModel):
    name: str = Field(description="The request's `sampler`.")
    title: str = Field(description="Its name for people.")
    description: str = Field(description="What it does, in one sentence.")
    default_steps: int | None = Field(description="Steps when a request gives none; null: all T of the model.")
    evals_per_step: int = Field(description="Model evaluations (NFE) a step costs.")
    stochastic: bool | str = Field(
        description="Whether it draws fresh noise after x_T (then its images are not a function of the seed's "
        "noise alone, and it cannot interpolate): true, false, or the name of the parameter that makes it "
        "do so when above 0 (ddim: eta)."
    )
    params: list[ParamInfo]


class Limits(BaseModel):
    max_n: int = Field(description="Most images a request.")
    max_steps: int = Field(description="Most steps a request (a model allows at most its T).")
    max_guidance: float = Field(description="Largest guidance weight; the smallest is 0.")
    max_seed: int = Field(description="Largest seed (2⁵³ − 1, exact in JavaScript).")
    max_jobs: int = Field(description="Runs sampled at once (the batch); more wait in the queue.")
    max_queue: int = Field(description="Runs that may wait for a place; beyond, a run is refused as busy.")
    max_jobs_per_client: int = Field(
        description="Runs one client (one address) may have running or waiting; beyond, it is refused."
    )
    max_init_image_bytes: int = Field(description="Largest init_image or mask, as PNG bytes (before base64).")


class Defaults(BaseModel):
    model: str | None = Field(description="The model a request gets when it names none.")
    sampler: str = Field(
        description="The sampler a request gets when it names none (and its model has none of its own)."
    )
    steps: int | None = Field(description="The default sampler's steps; null: all T of the model.")
    n: int
    guidance: float = Field(description="The guidance weight w a request with a label gets when it gives none.")


class Load(BaseModel):
    iteration_s: float | None = Field(
        description="The sampling loop's measured time of one iteration (one step of every running job, all "
        "batched), smoothed; null until it has run one. A run that joins now takes about this a step."
    )
    active_jobs: int = Field(description="Runs sampling or waiting now.")
    queued_jobs: int = Field(description="Runs waiting for a place now.")


class FieldRule(BaseModel):
    name: str = Field(description="The request field (a WebSocket request also takes every and preview_size).")
    title: str = Field(description="The field in a sentence: “The number of images”.")
    type: str = Field(description="Its JSON type: integer, number, boolean, string or object.")
    nullable: bool = Field(description="null is allowed: the server's default, or none.")
    default: ParamValue | None = Field(description="Its value when a request leaves it out (the loosest model's).")
    minimum: float | None
    exclusive_minimum: float | None
    maximum: float | None = Field(description="Its largest value on this server (the loosest model's).")
    needs: str | None = Field(description="The field it needs when it is not at its default.")
    start: bool = Field(description="A part of a run's start: a branch takes it from the run it continues.")
    description: str


class FieldBounds(BaseModel):
    maximum: float | None
    default: ParamValue | None


class RequestRules(BaseModel):
    fields: list[FieldRule]
    models: dict[str, dict[str, dict[str, FieldBounds]]] = Field(
        description="By model, then by sampler: the largest value and the default of each field whose rules "
        "depend on them (the steps a request without steps gets, say)."
    )


class ServerConfig(BaseModel):
    limits: Limits
    defaults: Defaults
    samplers: list[SamplerInfo] = Field(description="Every sampler a request may name, with its parameters.")
    load: Load = Field(description="The sampling loop now: its measured rate and its jobs.")
    request: RequestRules = Field(description="The request's fields and their rules, for a client's own checks.")


class ScheduleInfo(BaseModel):
    name: str
    schedule: str
    timesteps: int
    alphas_cumprod: list[float] = Field(description="ᾱ_t for t = 0 … T-1: q(x_t | x_0) = N(√ᾱ_t x_0, (1-ᾱ_t) I).")


class Status(BaseModel):
    status: str


class Ready(Status):
    models: list[str]


class Error(BaseModel):
    detail: str | list[dict] = Field(description="A sentence, or a list of {type, loc, msg, input} per bad field.")


# --- messages the server sends on WS /ws/sample ------------------------------------------------


class StartMessage(BaseModel):
    type: Literal["start"] = "start"
    total: int = Field(
        description="The steps the run takes: steps, or ceil(steps·strength) with an init_image, or a branch's "
        "at_step plus the steps it takes after."
    )
    at_step: int = Field(0, description="A branch's at_step: its frames follow on from it (0: not a branch).")
    seed: int
    model: str
    sampler: str
    steps: int
    params: dict[str, ParamValue]
    n: int
    every: int
    image_size: int
    channels: int
    preview_size: int = Field(description="The side of each image in the frames' grids, in pixels.")
    label: int | None
    guidance: float | None


class FrameMessage(BaseModel):
    type: Literal["frame"] = "frame"
    step: int = Field(description="1 … total: how many denoising steps have been taken.")
    total: int
    t: int = Field(description="The timestep of x_t (0-based); -1 once x_t is the final image.")
    x_t: str = Field(description="base64 PNG grid of the current samples.")
    x0: str = Field(description="base64 PNG grid of the x_0 predicted at this step.")


class DoneMessage(BaseModel):
    type: Literal["done"] = "done"
    grid: str
    images: list[str]
    seed: int
    model: str
    sampler: str
    steps: int
    elapsed_ms: float


class QueuedMessage(BaseModel):
    type: Literal["queued"] = "queued"
    position: int = Field(description="How many runs wait ahead of this one (0: it starts next).")
    eta_s: float | None = Field(
        description="About how many seconds until it starts, from the server's measured rate (null: not measured yet)."
    )


class CancelledMessage(BaseModel):
    type: Literal["cancelled"] = "cancelled"
    step: int = Field(description="The steps taken before the job stopped.")


class ErrorMessage(BaseModel):
    type: Literal["error"] = "error"
    kind: str = Field(
        description="What ended the run: invalid, busy (the queue is full), client_limit (this client has its "
        "most runs), shutdown, timeout or error (server.errors.FAILURES)"
    )
    detail: str | list[dict]
