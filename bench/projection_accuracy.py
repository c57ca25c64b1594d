"""Cosine error of each random projection over several seeds; run by hand, prints a table.

    .venv/bin/python bench/projection_accuracy.py                       # r=8: 8 seeds, r=128: 2 seeds
    .venv/bin/python bench/projection_accuracy.py --output bench/results/projection_accuracy.md

The gradient benchmark measures one seed, so its cosine errors carry the seed's luck. Here the
exact per-example gradients are computed once (the gradient engine with no projection, on the
'llama-small' preset with LoRA on q,k,v,o, the same synthetic examples and Adam state as
bench/gradients.py), then projected with each projection and seed: errors |cos(PG_i, Pg_j) -
cos(G_i, g_j)| over all pairs of Adam-aware training features G_i and plain validation features
g_j of the same examples. Rows: dense Rademacher (the LESS-identical option), CountSketch (the
default), and a candidate sparse sign projection with s nonzeros per coordinate (s CountSketches
of d/s columns side by side, scaled by 1/sqrt(s): the block construction of Kane and Nelson).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.gradients import prepare  # noqa: E402
from bench.reporting import publish  # noqa: E402


class BlockSparseSign:
    """s CountSketches of d/s columns side by side, entries +-1/sqrt(s): s nonzeros per coordinate."""

    def __init__(self, input_dim: int, output_dim: int, seed: int, nonzeros: int):
        from selection.gradients.projection import CountSketchProjector

        self.input_dim, self.output_dim = input_dim, output_dim
        widths = [output_dim // nonzeros + (k < output_dim % nonzeros) for k in range(nonzeros)]
        self.parts = [
            (sum(widths[:k]), CountSketchProjector(input_dim, width, seed * 1000 + k))
            for k, width in enumerate(widths)
        ]
        self.scale = 1 / math.sqrt(nonzeros)

    def project(self, vectors):
        import torch

        out = torch.zeros(vectors.shape[0], self.output_dim)
        for start, part in self.parts:
            out[:, start : start + part.output_dim] = part.project(vectors)
        return out * self.scale


def measure(r: int, seeds: int, args) -> list[dict]:
    import numpy as np
    import torch

    from selection import data
    from selection.gradients.engine import per_example_gradients
    from selection.gradients.projection import CountSketchProjector, RademacherProjector

    model, tokenizer, examples, _, precondition = prepare(r, args.seq, args.examples, 2, 0)
    batches = [data.collate(examples[i : i + 16], tokenizer.pad_token_id) for i in range(0, len(examples), 16)]
    g = torch.cat([per_example_gradients(model, b) for b in batches])
    gamma = precondition(g)
    p = g.shape[1]

    def unit(x) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-300)

    exact = unit(gamma.numpy()) @ unit(g.numpy()).T
    kinds = {
        "rademacher (dense)": lambda seed: RademacherProjector(p, args.d, seed),
        "countsketch": lambda seed: CountSketchProjector(p, args.d, seed),
        **{f"sparse sign s={s}": (lambda seed, s=s: BlockSparseSign(p, args.d, seed, s)) for s in args.nonzeros},
    }
    rows = []
    for name, make in kinds.items():
        rms, worst, seconds = [], [], 0.0
        for seed in range(seeds):
            projector = make(seed)
            started = time.perf_counter()
            both = projector.project(torch.cat([gamma, g]))
            seconds += time.perf_counter() - started
            cos = unit(both[: len(g)].numpy()) @ unit(both[len(g) :].numpy()).T
            rms.append(float(np.sqrt(((cos - exact) ** 2).mean())))
            worst.append(float(np.abs(cos - exact).max()))
        rows.append({
            "r": r, "p": p, "projection": name, "seeds": seeds, "rms_mean": float(np.mean(rms)),
            "rms_min": min(rms), "rms_max": max(rms), "max_dcos": max(worst),
            "ms_per_vector": 1000 * seconds / (seeds * 2 * len(g)),
        })
        print(f"  r={r} {name}: RMS {rows[-1]['rms_mean']:.4f}", flush=True)
    return rows


def table(rows: list[dict], args, loads) -> str:
    lines = [
        f"Projection accuracy: d={args.d}, {args.examples} examples (seq <= {args.seq}), llama-small, "
        f"pairs cos(Adam feature i, plain feature j) vs exact; {args.threads} threads, load average "
        f"{loads[0]:.1f} -> {loads[1]:.1f} on {os.cpu_count()} CPUs.",
        "",
        "| r (p) | projection | seeds | RMS dcos mean (min-max over seeds) | max dcos | ms per vector |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['r']} ({row['p']:,}) | {row['projection']} | {row['seeds']} | {row['rms_mean']:.4f} "
            f"({row['rms_min']:.4f}-{row['rms_max']:.4f}) | {row['max_dcos']:.4f} | {row['ms_per_vector']:.2f} |"
        )
    lines += ["", f"JL scale for comparison: 1/sqrt(d) = {1 / math.sqrt(args.d):.4f}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--d", type=int, default=8192)
    parser.add_argument("--seeds", default="8x8,128x2", help="r x seeds, comma-separated")
    parser.add_argument("--nonzeros", type=int, nargs="*", default=[4], help="s of the sparse sign candidates")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]
    rows = []
    for case in args.seeds.split(","):
        r, seeds = (int(x) for x in case.split("x"))
        rows += measure(r, seeds, args)
    publish(table(rows, args, (load_start, os.getloadavg()[0])), rows, args.output, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
