"""What the command-line tools share: the help format, and the sampler flags derived from the table."""

import argparse
import json

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
        known = {a.dest for a in parser._actions}
        values = json.loads(args.config.read_text())
        unknown = set(values) - known
        if unknown:
            parser.error(f"{args.config}: unknown options {sorted(unknown)}")
        parser.set_defaults(**values)
    return parser.parse_args(argv)
