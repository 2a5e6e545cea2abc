"""What the command-line tools share: the help format, the sampler flags derived from the table, and the
options of a training run (training and distillation)."""

import argparse
import json
from pathlib import Path

from model.device import add_device_argument
from model.samplers import SAMPLERS, Sampler


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where it has none: its help text then says what happens."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        return action.help if action.default is None else super()._get_help_string(action)


def add_sampler_arguments(parser: argparse.ArgumentParser) -> None:
    """--sampler (a name from model.samplers.SAMPLERS) and one flag per parameter name in the table
    (--eta, --spacing, --thresholding, ...); a parameter left out takes the sampler's default."""
    group = parser.add_argument_group(
        "sampler parameters", "each applies to the samplers that take it (in brackets); default: the sampler's own"
    )
    takers: dict[str, list[Sampler]] = {}
    for sampler in SAMPLERS.values():
        for p in sampler.params:
            takers.setdefault(p.name, []).append(sampler)
    for name, samplers in takers.items():
        p = samplers[0].param(name)
        choices = {tuple(s.param(name).choices or ()) for s in samplers}
        metavar = (
            "{" + ",".join(map(str, p.choices)) + "}" if len(choices) == 1 and p.choices else p.type.__name__.upper()
        )
        group.add_argument(
            "--" + name.replace("_", "-"),
            dest=f"param_{name}",
            metavar=metavar,
            help=f"{p.meaning} [{', '.join(s.name for s in samplers)}]",
        )


def sampler_params(args: argparse.Namespace, sampler: Sampler) -> dict:
    """The parameter flags given that `sampler` takes, parsed and checked (ValueError if not allowed)."""
    given = {p.name: getattr(args, f"param_{p.name}", None) for p in sampler.params}
    return {name: sampler.param(name).parse(text) for name, text in given.items() if text is not None}


def unused_sampler_flags(args: argparse.Namespace, samplers: list[Sampler]) -> list[str]:
    """The parameter flags given that none of `samplers` takes: a mistake worth stopping for."""
    taken = {p.name for sampler in samplers for p in sampler.params}
    return [
        "--" + key.removeprefix("param_").replace("_", "-")
        for key, value in vars(args).items()
        if key.startswith("param_") and value is not None and key.removeprefix("param_") not in taken
    ]


def parse_with_config(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse argv where `--config FILE.json` (keys: the options' dest names) supplies defaults that the
    command line overrides; an unknown key in the file is an error."""
    args, _ = parser.parse_known_args(argv)
    if args.config:
        values = json.loads(args.config.read_text())
        if unknown := set(values) - {a.dest for a in parser._actions}:
            parser.error(f"{args.config}: unknown options {sorted(unknown)}")
        parser.set_defaults(**values)
    return parser.parse_args(argv)


def add_run_arguments(parser: argparse.ArgumentParser) -> dict[str, argparse._ArgumentGroup]:
    """--config and the options that model.train's parts of a run read (init_runtime, open_run, TrainState,
    RunLog), in groups (data, optimization, speed, output) returned for each tool to add its own to; training
    and distillation each set their batch size, warmup, EMA decay, run folder and intervals."""
    parser.add_argument("--config", type=Path, help="JSON file of option values (keys: the option names with "
                        "underscores); options on the command line win")  # fmt: skip
    groups = {name: parser.add_argument_group(name) for name in ("data", "optimization", "speed", "output")}
    g = groups["data"]
    g.add_argument("--data-root", type=Path, default=Path("data"), help="where the dataset's files are")
    g.add_argument("--download", action="store_true", help="let torchvision download the dataset")
    g.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    g = groups["optimization"]
    g.add_argument("--batch-size", type=int, help="global batch size (split over processes)")
    g.add_argument("--lr", type=float, default=2e-4)
    g.add_argument("--warmup", type=int, help="steps of linear learning-rate warmup")
    g.add_argument("--min-lr-ratio", type=float, default=0.1, help="cosine decay ends at lr × this")
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--grad-clip", type=float, default=1.0)
    g.add_argument("--ema-decay", type=float)
    g.add_argument("--seed", type=int, default=0)
    g = groups["speed"]
    add_device_argument(g)
    g.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None, help="bf16 autocast (CUDA default)")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None, help="(CUDA default)")
    g.add_argument("--threads", type=int, help="CPU threads (torch.set_num_threads)")
    g = groups["output"]
    g.add_argument("--out", type=Path, help="the run folder")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its state.pt")
    g.add_argument("--log-every", type=int)
    g.add_argument("--ckpt-every", type=int)
    g.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    return groups
