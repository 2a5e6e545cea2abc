"""`python -m server` / `ddpm-serve`: the sampling server under uvicorn, with the settings from the
environment (DDPM_*), an optional env file, and these flags, which win."""

from __future__ import annotations

import argparse
import logging
import sys

import uvicorn

from model.device import resolve_device
from server.app import create_app
from server.settings import Settings
from server.transport import protocols


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return add_arguments(argparse.ArgumentParser(prog="ddpm-serve", description=__doc__)).parse_args(argv)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The server's flags, which `python -m server.ray` takes too."""
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)")
    parser.add_argument("--port", type=int, help="port (default 8000; 0 picks a free one)")
    parser.add_argument(
        "--checkpoints",
        dest="checkpoint_dir",
        help="folder of *.safetensors and diffusers models (default: checkpoints)",
    )
    parser.add_argument("--device", help="auto (default: cuda, else mps, else cpu), cpu, cuda or cuda:N")
    parser.add_argument("--default-model", help="model used when a request names none")
    parser.add_argument("--threads", dest="torch_threads", type=int, help="PyTorch CPU threads (default: one per core)")
    parser.add_argument("--max-jobs", type=int, help="most jobs sampling at once, the batch (default 8)")
    parser.add_argument("--max-queue", type=int, help="most jobs waiting for a place; more are refused (default 256)")
    parser.add_argument(
        "--max-jobs-per-client", type=int, help="most jobs running or waiting per client address (default 4)"
    )
    parser.add_argument(
        "--trusted-proxies",
        help="comma-separated addresses or networks of proxies whose X-Forwarded-For is believed (default: none)",
    )
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="default info")
    parser.add_argument("--env-file", default=".env", help="file of DDPM_* settings (default .env, if present)")
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    flags = {key: value for key, value in vars(args).items() if key in Settings.model_fields and value is not None}
    return Settings(_env_file=args.env_file, **flags)


SHUTDOWN_BACKSTOP_S = 5  # after the drain, what uvicorn still waits for connections to finish


class Server(uvicorn.Server):
    """uvicorn, which says where to point the browser once the models are loaded and the socket
    listens, and whose shutdown is bounded: on SIGTERM or Ctrl-C it stops listening, then drains
    the jobs (server.jobs.JobBridge.drain) before uvicorn waits for the connections to close, which
    would otherwise wait for every running job. A second Ctrl-C cuts the drain short."""

    def handle_exit(self, sig, frame) -> None:
        super().handle_exit(sig, frame)
        # the models may be loading: the event loop waits for them, this handler does not
        self.config.app.state.stopping.set()

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.started and not self.should_exit:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            print(f"Open http://{browsable_host(host)}:{port} in your browser", flush=True)

    async def shutdown(self, sockets=None) -> None:
        for server in self.servers:
            server.close()  # no new connections
        state = getattr(self.config.app.state, "server", None)
        if state is not None and not self.force_exit:
            settings = state.settings
            await state.jobs.drain(settings.shutdown_grace_s, settings.ws_send_timeout_s, lambda: self.force_exit)
        await super().shutdown(sockets)
        if self.force_exit:
            # uvicorn skips the application's shutdown after a second Ctrl-C; the lifespan task would then
            # be cancelled mid-wait when the signal is raised again, with a traceback. Ours is quick.
            await self.lifespan.shutdown()


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
    app = create_app(settings)
    http, ws = protocols(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        http=http,
        ws=ws,
        # a message over the largest request is closed with 1009 before the app reads it; within it, the
        # app answers one over max_body_bytes besides its images with an error and 1008
        ws_max_size=settings.request_bytes,
        timeout_keep_alive=settings.keep_alive_timeout_s,
        proxy_headers=False,  # the app applies X-Forwarded-For from settings.trusted_proxies only (server.middleware)
        timeout_graceful_shutdown=SHUTDOWN_BACKSTOP_S,
    )
    try:
        Server(config).run()
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it shut down for, once it has
        sys.exit(130)


if __name__ == "__main__":
    main()
