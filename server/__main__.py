"""`python -m server` / `ddpm-serve`: the sampling server under uvicorn, with the settings from the
environment (DDPM_*), an optional env file, and these flags, which win."""

from __future__ import annotations

import argparse
import logging
import sys

import uvicorn

from server.app import create_app
from server.registry import resolve_device
from server.settings import Settings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return add_arguments(argparse.ArgumentParser(prog="ddpm-serve", description=__doc__)).parse_args(argv)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The server's flags, which `python -m server.ray` takes too."""
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)")
    parser.add_argument("--port", type=int, help="port (default 8000; 0 picks a free one)")
    parser.add_argument("--checkpoints", dest="checkpoint_dir", help="folder of *.safetensors (default checkpoints/)")
    parser.add_argument("--device", help="auto (default: cuda if available, else cpu), cpu, cuda or cuda:N")
    parser.add_argument("--default-model", help="model used when a request names none")
    parser.add_argument("--threads", dest="torch_threads", type=int, help="PyTorch CPU threads (default: one per core)")
    parser.add_argument("--max-jobs", type=int, help="most jobs sampling at once (default 8)")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="default info")
    parser.add_argument("--env-file", default=".env", help="file of DDPM_* settings (default .env, if present)")
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    flags = {key: value for key, value in vars(args).items() if key != "env_file" and value is not None}
    return Settings(_env_file=args.env_file, **flags)


class AnnouncingServer(uvicorn.Server):
    """Says where to point the browser once the models are loaded and the socket listens."""

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.started:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            print(f"Open http://{browsable_host(host)}:{port} in your browser", flush=True)


def browsable_host(host: str) -> str:
    """An address a browser on this machine can open: the wildcard addresses mean loopback."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def main(argv: list[str] | None = None) -> None:
    settings = settings_from_args(parse_args(argv))
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        resolve_device(settings.device)
    except RuntimeError as e:
        sys.exit(f"ddpm-serve: {e}")
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        ws_max_size=max(settings.max_body_bytes, 65536),  # requests are tiny; bigger messages are closed with 1009
    )
    AnnouncingServer(config).run()


if __name__ == "__main__":
    main()
