"""The API's contract: what clients send and what they get back, for REST and the WebSocket.

Requests are strict: an unknown field, a string where a number belongs or a number out of range
is refused (422, or an error message on the WebSocket), never guessed at. The limits that depend
on the server's settings or on the model (n, steps, guidance, label) and the sampler's own
parameters (from the sampler table, model.samplers.SAMPLERS) are checked in server.validation,
with errors of the same shape.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from model.samplers import SAMPLERS

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
        "mask, interpolate_to) is `from`'s: leave them out here, or send the same.",
    )
    interpolate_to: int | None = Field(
        None,
        ge=0,
        le=MAX_SEED,
        description="A row of n ≥ 2 images between two seeds: the starting noises are spherically interpolated from "
        "seed's to this seed's, so the first image is seed's n = 1 run and the last this seed's. Needs a "
        "deterministic sampler (not ddpm, nor ddim with eta > 0).",
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
Branch.model_rebuild()
StreamRequest.model_rebuild()


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


class ServerConfig(BaseModel):
    limits: Limits
    defaults: Defaults
    samplers: list[SamplerInfo] = Field(description="Every sampler a request may name, with its parameters.")
    load: Load = Field(description="The sampling loop now: its measured rate and its jobs.")


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
