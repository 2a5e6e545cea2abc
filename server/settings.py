"""The server's settings: environment variables prefixed DDPM_ (DDPM_PORT=9000, DDPM_DEVICE=cuda,
DDPM_CORS_ORIGINS=https://a.example,https://b.example), an optional env file (`.env` in the
working directory, or the one named by --env-file), and command-line flags, which win."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from model.samplers import SAMPLERS

PACKAGE_WEB_DIR = Path(__file__).resolve().parents[1] / "web"
REQUEST_IMAGES = 4  # init_image and mask, in a request and in its branch's "from"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DDPM_", env_file=".env", extra="ignore")

    checkpoint_dir: Path = Field(
        Path("checkpoints"), description="every *.safetensors and diffusers model folder directly inside is served"
    )
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="auto: cuda, else mps, else cpu")
    torch_threads: int | None = Field(
        None,
        ge=1,
        description="PyTorch's CPU threads (default: its own, one per core); 1 on a machine busy with other work",
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    default_model: str | None = Field(None, description="default: 'mnist' if loaded, else the first one by name")

    max_n: int = Field(64, ge=1, description="most images per request")
    max_steps: int = Field(1000, ge=1, description="most denoising steps per request")
    max_jobs: int = Field(8, ge=1, description="most jobs sampling at once (the batch); more wait in the queue")
    max_queue: int = Field(
        256, ge=0, description="most jobs waiting for a place in the batch; more are refused (503 / close 1013)"
    )
    max_jobs_per_client: int = Field(
        4, ge=1, description="most jobs running or waiting per client address; more are refused (429 / close 1008)"
    )
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="addresses or networks (10.0.0.0/8) of proxies whose X-Forwarded-For names the client; "
        "from any other peer the header is ignored",
    )
    max_guidance: float = Field(20.0, ge=1)
    default_guidance: float = Field(3.0, ge=0, description="classifier-free guidance w when a label is given")
    default_sampler: str = Field(
        "dpm-solver++", description="the sampler of a request that names none, unless its model has a default"
    )
    default_steps: int | None = Field(10, ge=1, description="its steps; null: the sampler's own default")
    request_timeout_s: float = Field(120.0, gt=0, description="a job running longer is stopped")
    max_body_bytes: int = Field(
        16_384, ge=256, description="largest request body or WebSocket message, beside its images (request_bytes)"
    )
    max_init_image_bytes: int = Field(
        262_144, ge=64, description="largest init_image or mask, as PNG bytes (decoded from base64)"
    )

    ws_send_timeout_s: float = Field(
        10.0, gt=0, description="a client slower to read a message is dropped, and its connection closed"
    )
    ws_frame_buffer: int = Field(1, ge=1, description="unsent frames kept per client; a newer one replaces the oldest")
    preview_size: int = Field(
        64,
        ge=8,
        description="a streamed frame shows each image at most this many pixels a side (the final images are full "
        "size); the default and the most of a request's preview_size",
    )

    request_read_timeout_s: float = Field(
        10.0, gt=0, description="a request's headers and body must arrive within this of its first byte"
    )
    keep_alive_timeout_s: float = Field(5.0, gt=0, description="an idle keep-alive connection is closed after this")
    max_header_bytes: int = Field(
        32_768, ge=1024, description="largest request line and headers together; a larger head is answered 431"
    )
    max_connections_per_client: int = Field(
        32, ge=2, description="most open connections per client address; its oldest idle one makes room for a new one"
    )
    shutdown_grace_s: float = Field(
        5.0, ge=0, description="on SIGTERM, running jobs may finish within this; then they are stopped"
    )

    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="origins allowed to call the API and open WebSockets; same origin always is"
    )
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host names this server answers to ('*.example.com' for subdomains, '*' for any); "
        "default: the loopback names when bound to loopback, else any",
    )
    web_dir: Path | None = Field(PACKAGE_WEB_DIR, description="the browser UI served at /, if the folder exists")
    log_level: str = "info"

    @property
    def request_bytes(self) -> int:
        """The largest request body or first WebSocket message: max_body_bytes and room for REQUEST_IMAGES
        images of max_init_image_bytes, in base64 with a data: prefix."""
        return self.max_body_bytes + REQUEST_IMAGES * (4 * math.ceil(self.max_init_image_bytes / 3) + 32)

    @field_validator("default_sampler")
    @classmethod
    def known_sampler(cls, value: str) -> str:
        if value not in SAMPLERS:
            raise ValueError(f"unknown sampler {value!r}; choose one of {', '.join(SAMPLERS)}")
        return value

    @field_validator("cors_origins", "allowed_hosts", "trusted_proxies", mode="before")
    @classmethod
    def split_list(cls, value):
        """A comma-separated string (the natural form of an environment variable) or a list."""
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value
