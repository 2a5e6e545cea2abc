"""Download a diffusers DDPM model from the Hugging Face Hub into the checkpoints folder, safetensors only.

  python -m model.fetch google/ddpm-cifar10-32                       # → checkpoints/ddpm-cifar10-32/
  python -m model.fetch google/ddpm-ema-church-256 --to /srv/checkpoints --revision refs/pr/2

Only the JSON configs and the safetensors weights are fetched, never pickles (.bin, .pt), into a
temporary folder that is renamed into place once complete, so the server never sees half a model.
The server (python -m server) then serves the folder beside the project's checkpoints. Needs
huggingface_hub (pip install -e '.[hub]'); offline, it stops at once and says what to do.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
import tempfile
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from model.cli import HelpFormatter

CONNECT_TIMEOUT_S = 5.0


class FetchError(RuntimeError):
    """A fetch that cannot be done; the message says what to do instead."""


def fetch(repo: str, to: Path, revision: str | None = None) -> Path:
    """Download `repo`'s configs and safetensors weights into to/<repo name>/; returns that folder."""
    try:
        from huggingface_hub import HfApi, constants, snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError
    except ImportError:
        raise FetchError("huggingface_hub is not installed: pip install -e '.[hub]'") from None
    target = to / repo.split("/")[-1]
    if target.exists():
        raise FetchError(f"{target} exists already: remove it first to fetch {repo} again")
    offline = f"cannot reach {constants.ENDPOINT}"
    advice = (
        f"on a machine that is online, run `python -m model.fetch {repo} --to checkpoints/` and copy "
        f"checkpoints/{target.name}/ into {to}/ here (or set HF_ENDPOINT to a mirror you can reach)"
    )
    if constants.HF_HUB_OFFLINE:
        raise FetchError(f"{offline}: HF_HUB_OFFLINE is set; {advice}")
    reachable(constants.ENDPOINT, offline, advice)
    from model.diffusers_models import CONFIG_FILES, WEIGHT_FILES, WEIGHTS  # imports torch: after the quick checks

    api = HfApi()
    try:
        files = set(api.list_repo_files(repo, revision=revision))
    except RepositoryNotFoundError:
        raise FetchError(f"no model {repo!r} on {constants.ENDPOINT} (or it is private: `hf auth login`)") from None
    except RevisionNotFoundError:
        raise FetchError(f"{repo} has no revision {revision!r}") from None
    except (OSError, HfHubHTTPError) as e:
        raise FetchError(f"{offline}: {e}; {advice}") from e
    weights = [name for name in WEIGHT_FILES if name in files]
    if not weights:
        pickles = sorted(name for name in files if name.endswith((".bin", ".pt", ".ckpt")))
        raise FetchError(
            f"{repo}@{revision or 'main'} has no {WEIGHTS} (only {', '.join(pickles) or 'no weights'}); this "
            f"project loads safetensors only, never pickles.{_safetensors_pull_requests(api, repo)}"
        )
    wanted = [name for name in CONFIG_FILES if name in files] + weights
    to.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(dir=to, prefix=f".{target.name}.", suffix=".partial"))
    try:
        snapshot_download(repo, revision=revision, allow_patterns=wanted, local_dir=partial)
        shutil.rmtree(partial / ".cache", ignore_errors=True)  # huggingface_hub's bookkeeping of the download
        os.replace(partial, target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return target


def reachable(endpoint: str, offline: str, advice: str) -> None:
    """Fail at once when the hub (or the proxy to it) cannot be reached, instead of after
    huggingface_hub's retries."""
    url = urlsplit(endpoint)
    proxy = urllib.request.getproxies().get(url.scheme)
    target = urlsplit(proxy) if proxy else url
    host, port = target.hostname, target.port or (443 if target.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise FetchError(f"{offline} ({host}:{port}: {e.strerror or e}); {advice}") from None


def _safetensors_pull_requests(api, repo: str) -> str:
    """Open pull requests that add safetensors weights (the hub's bot opens such PRs), as a hint."""
    try:
        discussions = api.get_repo_discussions(repo, discussion_type="pull_request", discussion_status="open")
        prs = [d for d in discussions if "safetensors" in d.title.lower()]
    except Exception:  # only a hint: never let it hide the real message
        return ""
    hints = ", ".join(f"--revision refs/pr/{pr.num} ({pr.title!r})" for pr in prs)
    return f" Pull requests that add them: {hints}." if hints else ""


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description="Download a diffusers DDPM model's configs and safetensors weights into the checkpoints folder. "
        "The papers' models: google/ddpm-cifar10-32, google/ddpm-celebahq-256, google/ddpm-ema-church-256, "
        "google/ddpm-ema-bedroom-256 (README.md: their sizes and the hardware they need).",
        formatter_class=HelpFormatter,
    )
    p.add_argument("repo", help="a Hugging Face Hub model id, such as google/ddpm-cifar10-32")
    p.add_argument("--to", type=Path, default=Path("checkpoints"), help="the checkpoints folder")
    p.add_argument("--revision", help="a branch, tag, commit or refs/pr/N (default: main)")
    args = p.parse_args(argv)
    try:
        target = fetch(args.repo, args.to, args.revision)
    except FetchError as e:
        sys.exit(f"error: {e}")
    print(f"{args.repo} → {target}; serve it with: python -m server --checkpoints {args.to}")


if __name__ == "__main__":
    main()
