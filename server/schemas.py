"""The API's contract: what clients send and what they get back, for REST and the WebSocket.

Requests are strict: an unknown field, a string where a number belongs or a number out of range
is refused (422, or an error message on the WebSocket), never guessed at. The limits that depend
on the server's settings or on the model (n, steps, guidance, label) are checked against them in
server.validation, with errors of the same shape.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# Seeds stay below 2^53 so that JavaScript, whose numbers are doubles, can send them back exactly.
MAX_SEED = 2**53 - 1


class SampleRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"examples": [{"model": "mnist", "sampler": "ddim", "steps": 50, "n": 16, "label": 7}]},
    )

    model: str | None = Field(None, description="A name from GET /models; the server's default model if omitted.")
    sampler: Literal["ddpm", "ddim"] = Field("ddim", description="Ancestral DDPM or deterministic-by-default DDIM.")
    steps: int | None = Field(
        None,
        ge=1,
        description="Denoising steps: default 50 for ddim, all T (1000) for ddpm; at most T and the server's "
        "max_steps. ddpm with fewer than T steps samples the respaced chain (Improved DDPM).",
    )
    eta: float = Field(
        0.0,
        ge=0,
        le=1,
        allow_inf_nan=False,
        description="DDIM's η: 0 deterministic, 1 as noisy as DDPM; ddpm ignores it.",
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


class StreamRequest(SampleRequest):
    """The first (and only) request message of WS /ws/sample."""

    every: int = Field(1, ge=1, description="Stream every k-th step; the last step is always streamed.")
    preview_size: int | None = Field(
        None,
        ge=8,
        description="A frame shows each image at most this many pixels a side, downscaled (the final images are "
        "full size). Default and maximum: the server's preview_size (64).",
    )


class SampleResponse(BaseModel):
    images: list[str] = Field(description="Each image as a base64 PNG (no data: prefix), in sampling order.")
    grid: str = Field(description="All images as one base64 PNG grid, ceil(√n) a row, 2 px padding.")
    seed: int
    model: str
    sampler: str
    steps: int
    eta: float | None = Field(description="DDIM's η; null for ddpm.")
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
    total: int
    seed: int
    model: str
    sampler: str
    steps: int
    n: int
    every: int
    image_size: int
    channels: int
    preview_size: int = Field(description="The side of each image in the frames' grids, in pixels.")
    eta: float | None
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
        "most runs), shutdown, timeout or error (server.jobs.FAILURES)"
    )
    detail: str | list[dict]
