"""Provenance of the shipped checkpoints: bias-correct the plain EMA they were trained with.

The runs in checkpoints/README.md used train.py before commit ffa1b7e, whose EMA was plain,
m_n = d m_{n-1} + (1 - d) θ_n with m_1 = θ_1, and so kept a share d^(n-1) of the first step's
weights θ_1 (8% after 2500 steps at d = 0.999). This removes it: (m_n - d^(n-1) θ_1) / (1 - d^(n-1))
is the normalised average Σ d^(n-k) θ_k / Σ d^(n-k) that train.py now keeps by itself. θ_1 is taken
as the initial weights θ_0, rebuilt from the run's seed; one warm-up step (lr 2e-6) apart, they
differ by about 1e-7 in the result.

    python checkpoints/repair_ema.py runs/mnist checkpoints/mnist.safetensors
"""

import json
import sys
from pathlib import Path

import torch

from model.checkpoint import read_metadata, save_checkpoint
from model.schedule import NoiseSchedule
from model.unet import UNet, UNetConfig


def main(run: Path, out: Path) -> None:
    options = json.loads((run / "config.json").read_text())
    meta = read_metadata(run / "model.safetensors")
    state = torch.load(run / "state.pt", weights_only=True, map_location="cpu")
    config = UNetConfig.from_dict(meta["unet"])
    torch.manual_seed(options["seed"])  # train.py builds the model right after seeding
    theta0 = UNet(config).state_dict()
    n = int(state["ema"]["n_averaged"])
    share = options["ema_decay"] ** (n - 1)
    ema = {k.removeprefix("module."): v for k, v in state["ema"].items() if k.startswith("module.")}
    unet = UNet(config)
    unet.load_state_dict({k: (ema[k] - share * theta0[k]) / (1 - share) for k in theta0})
    schedule = NoiseSchedule.from_name(meta["schedule"]["name"], meta["schedule"]["timesteps"])
    save_checkpoint(out, unet, schedule, meta["dataset"], meta["class_names"], int(state["step"]), ema=True)
    print(f"{out}: step {int(state['step'])}, removed a share {share:.4f} of the initial weights")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
