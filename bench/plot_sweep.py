"""Quality against model evaluations, one line per sampler, as the solver papers draw it: a PNG from
the results.csv files that `python -m model.evaluate --sampler-sweep` writes.

    python bench/plot_sweep.py --out docs/samplers-nfe.png \\
        MNIST=runs/eval/mnist-sampler-sweep/results.csv,runs/eval/mnist-ddim50/results.csv \\
        Fashion-MNIST=runs/eval/fashion-mnist-sampler-sweep/results.csv,runs/eval/fashion-mnist-ddim50/results.csv

One panel per model and guidance weight; the score (default: the classifier's Fréchet distance, with
its standard error) against NFE on log axes, and the real test images' own score as a dashed floor.
Needs matplotlib (`pip install -e ".[plots]"`).
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

METRICS = {"cls_fd": "classifier Fréchet distance", "fid": "Inception FID", "cls_acc": "classifier accuracy"}


def read(paths: list[Path]) -> tuple[dict, float | None, int]:
    """{(guidance, sampler name): sorted [(nfe, value, se)]}, the floor, and N."""
    lines, floor, n = defaultdict(list), None, 0
    for path in paths:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                if row["sampler"] == "real test images":
                    floor = row
                    continue
                lines[(float(row["guidance"] or 1), row["name"])].append(row)
                n = int(row["n"])
    return lines, floor, n


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help="NAME=results.csv[,more.csv]")
    p.add_argument("--metric", default="cls_fd", choices=sorted(METRICS))
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)

    models = [(name, [Path(f) for f in files.split(",")]) for name, files in (m.split("=", 1) for m in args.models)]
    data = [(name, *read(paths)) for name, paths in models]
    weights = sorted({w for _, lines, _, _ in data for w, _ in lines})
    fig, axes = plt.subplots(len(data), len(weights), figsize=(4.2 * len(weights), 3.4 * len(data)), squeeze=False)
    for (name, lines, floor, n), row_axes in zip(data, axes, strict=True):
        for w, ax in zip(weights, row_axes, strict=True):
            for (line_w, sampler), rows in sorted(lines.items()):
                if line_w != w:
                    continue
                rows = sorted(rows, key=lambda r: int(r["nfe"]))
                nfe = [int(r["nfe"]) for r in rows]
                value = [float(r[args.metric]) for r in rows]
                se = [float(r.get(f"{args.metric}_se") or 0) for r in rows]
                ax.errorbar(nfe, value, yerr=se, marker="o", ms=3, capsize=2, label=sampler)
            if floor and floor.get(args.metric):
                ax.axhline(float(floor[args.metric]), color="grey", ls="--", lw=1, label="real test images")
            ax.set(xscale="log", title=f"{name}, w = {w:g} (N = {n})", xlabel="model evaluations (NFE)")
            if args.metric != "cls_acc":
                ax.set_yscale("log")
            ax.set_xticks([4, 6, 8, 10, 15, 20, 50], labels=["4", "6", "8", "10", "15", "20", "50"])
            ax.minorticks_off()
            ax.grid(alpha=0.3)
        row_axes[0].set_ylabel(METRICS[args.metric])
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
