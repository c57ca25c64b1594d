"""Benchmark of the gradient engine against the LESS-style reference loop; run by hand, prints a table.

    .venv/bin/python bench/gradients.py --quick      # 16 examples per case, a few minutes here
    .venv/bin/python bench/gradients.py              # 64 examples per case

Model: the 'llama-small' preset (Llama built from a config: hidden 256, 4 layers, 8 heads, 4 KV
heads, byte vocabulary), LoRA on q/k/v/o with r = 8 and r = 128 (alpha = 4r, as LESS's 128/512).
Data: seeded synthetic chat examples whose lengths vary between about half and all of the
sequence length (128 or 512 tokens), prompt tokens masked, so every batch is padded. Adam state:
`--adam-steps` AdamW steps (lr 1e-3, dropout on) from the peft initialization, so lora_B is
nonzero (lora_A gradients are not trivially zero) and the moments m, v are real.

Each case (r, sequence length) runs in a fresh process (OMP_WAIT_POLICY=PASSIVE unless set: on
an oversubscribed machine GNU OpenMP's spinning made two-thread runs up to 25x slower). Rows, all
on the same examples in batches of `--batch-size` (16 = LESS's projection interval):
- reference: what LESS's collect_grad_reps does on a CPU (`LessReference`): one backward per
  example (flattened gradient, Adam transform), gradients collected in groups of 16 examples
  (LESS's project_interval, whatever `--batch-size`), each group cast to fp16 and back (LESS
  stacks them `.to(torch.float16)`; TRAK's BasicProjector then computes in the model dtype,
  float32 here), and projected with a dense seeded Rademacher matrix whose blocks are all
  regenerated for every group (TRAK regenerates each block per `project` call; here
  `RademacherProjector` with no cache).
- fwd+bwd floor: a plain batched forward + backward of the batch loss (LoRA weight gradients
  summed over the batch), no features: the physical floor for per-example gradients.
- engine: `LoraGradientEngine` (one batched backward, per-layer per-example gradients, Adam
  transform, CountSketch projection segment by segment): the pipeline default.
- engine+dense: the same engine with the reference's dense Rademacher projection (the same P, so
  the same numbers as the reference up to rounding; projection-bound).
- engine bf16: the engine under bf16 autocast, CountSketch.
Timed: Adam-aware (training) features of all examples. Untimed: plain (validation) features of
the same examples, and the exact unprojected gradients g (reference loop) and Adam features G.

Timing: floor, engine and engine bf16 run interleaved batch by batch for `--rounds` rounds (so
load changes on a shared machine hit them alike), after a warm-up call; examples/s is
from the best round, "x floor" is the median of the paired per-batch time ratios. The reference
and engine+dense rows are projection-bound: one pass, warmed up on the gradient part only, with a
fresh projector (no dense blocks cached yet); their "x floor" is a ratio of totals.

Columns: examples/s; speed-up vs the reference; cost relative to the fwd+bwd floor; peak RSS of
the process during the timed section (sampled every 5 ms); max relative error (per example,
in L2) of the engine's unprojected g and G vs the reference loop's; max and RMS |dcos| of
projected cosines cos(PG_i, Pg_j) vs the exact cos(G_i, g_j) over all pairs (the bf16 row also
against the fp32 engine's); the largest dense projection block allocated. The last line is
machine-readable, for r=128, seq 128.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = ((128, 128), (128, 512), (8, 128), (8, 512))  # (r, sequence length); the first is the headline


# --------------------------------------------------------------------------------------------
# Worker side: one case in one process.


class PeakRss:
    """Peak resident set size while active, sampled from /proc/self/statm."""

    def __init__(self, interval: float = 0.005):
        self.interval, self.peak = interval, 0
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")

    def _sample(self) -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * self._page

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            time.sleep(self.interval)

    def __enter__(self) -> "PeakRss":
        self.peak = self._sample()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._sample())


def synthetic_conversations(count: int, seq: int, seed: int) -> list[tuple[dict, dict]]:
    """(user, assistant) messages of seeded random words; about seq/2 to seq byte tokens each."""
    import numpy as np

    words = ("the a model data gradient selects influence task answer question loss adapter token "
             "example budget shard project cosine layer batch matrix vector train check").split()
    rng = np.random.default_rng(seed)

    def text(chars: int) -> str:
        out = []
        while sum(len(w) + 1 for w in out) < chars:
            out.append(words[rng.integers(len(words))])
        return " ".join(out)[:chars]

    conversations = []
    for _ in range(count):
        total = int(rng.integers(seq // 2, seq + seq // 8))  # some get truncated at seq
        prompt = int(total * rng.uniform(0.2, 0.5))
        conversations.append(
            ({"role": "user", "content": text(prompt)}, {"role": "assistant", "content": text(total - prompt)})
        )
    return conversations


def synthetic_examples(count: int, seq: int, seed: int):
    """Tokenized `synthetic_conversations` (byte tokenizer, plain template, truncated at seq)."""
    from selection import data
    from selection.models import PLAIN_CHAT_TEMPLATE, build_byte_tokenizer

    tokenizer = build_byte_tokenizer()
    tokenized = [
        data.tokenize_example(
            tokenizer, data.Example(index, messages, None, ""), template=PLAIN_CHAT_TEMPLATE, max_length=seq
        )
        for index, messages in enumerate(synthetic_conversations(count, seq, seed))
    ]
    return tokenizer, tokenized


def prepare(r: int, seq: int, count: int, adam_steps: int, seed: int):
    """(model, batches, warm-up batch, AdamPreconditioner) for one case, all seeded."""
    import torch
    from transformers import AutoModelForCausalLM

    from selection import data
    from selection.gradients.preconditioners import AdamPreconditioner
    from selection.loss import model_loss
    from selection.models import build_tiny_model, default_cache_dir
    from selection.spec import LoraSpec
    from selection.warmup import attach_lora, trainable_parameters

    directory = default_cache_dir() / "bench" / "llama-small"
    if not (directory / "config.json").exists():
        build_tiny_model("llama-small", directory, seed=seed)
    model = AutoModelForCausalLM.from_pretrained(directory)
    model = attach_lora(model, LoraSpec(r=r, alpha=4 * r, dropout=0.1), seed=seed)
    tokenizer, examples = synthetic_examples(count + 2, seq, seed)
    warmup, examples = examples[:2], examples[2:]
    named = trainable_parameters(model)
    optimizer = torch.optim.AdamW([p for _, p in named], lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    torch.manual_seed(seed)
    model.train()
    train_batch = data.collate(examples[: min(8, count)], tokenizer.pad_token_id)
    for _ in range(adam_steps):
        optimizer.zero_grad(set_to_none=True)
        model_loss(model, train_batch).mean().backward()
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    model.eval()
    state = [optimizer.state[p] for _, p in named]
    precondition = AdamPreconditioner(
        torch.cat([s["exp_avg"].reshape(-1) for s in state]).clone(),
        torch.cat([s["exp_avg_sq"].reshape(-1) for s in state]).clone(),
        0.9,
        0.999,
    )
    del optimizer, state
    return model, tokenizer, examples, warmup, precondition


LESS_PROJECT_INTERVAL = 16  # LESS projects (and TRAK regenerates its matrix) every 16 examples


class LessReference:
    """LESS's CPU path: per-example backward, fp16-rounded group, dense P regenerated per group."""

    def __init__(self, input_dim: int, output_dim: int, seed: int):
        from selection.gradients.features import ReferenceExtractor
        from selection.gradients.projection import RademacherProjector

        self.gradients = ReferenceExtractor()
        self.dense = RademacherProjector(input_dim, output_dim, seed, cache_bytes=0)  # nothing kept
        self.input_dim, self.output_dim = input_dim, output_dim

    def project(self, vectors):
        import torch

        return self.dense.project(vectors.to(torch.float16).float())

    def __call__(self, model, batch, projector, precondition):
        return self.gradients(model, batch, self, precondition)  # the group through fp16, then P


def run_case(r: int, seq: int, args) -> dict:
    import numpy as np
    import torch

    from selection import data
    from selection.gradients.engine import LoraGradientEngine
    from selection.gradients.features import ReferenceExtractor, lora_dim
    from selection.gradients.projection import CountSketchProjector, IdentityProjector, RademacherProjector
    from selection.loss import model_loss

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer, examples, warmup, precondition = prepare(r, seq, args.examples, args.adam_steps, args.seed)
    p, d = lora_dim(model), args.projection_dim
    batches = [
        data.collate(examples[i : i + args.batch_size], tokenizer.pad_token_id)
        for i in range(0, len(examples), args.batch_size)
    ]
    groups = [
        data.collate(examples[i : i + LESS_PROJECT_INTERVAL], tokenizer.pad_token_id)
        for i in range(0, len(examples), LESS_PROJECT_INTERVAL)
    ]
    warm = data.collate(warmup, tokenizer.pad_token_id)
    identity = IdentityProjector(p)
    rows: dict[str, dict] = {}

    def measure(name: str, step, over=None) -> None:
        """Time one pass of `step(index, batch)` over every batch; keep the best pass and peak RSS."""
        gc.collect()
        with PeakRss() as rss:
            started = time.perf_counter()
            for index, batch in enumerate(batches if over is None else over):
                step(index, batch)
            seconds = time.perf_counter() - started
        row = rows.setdefault(name, {"seconds": float("inf"), "peak_rss_mb": 0.0})
        row["peak_rss_mb"] = max(row["peak_rss_mb"], rss.peak / 2**20)
        if seconds < row["seconds"]:
            row.update(seconds=seconds, examples_per_s=len(examples) / seconds)

    outputs: dict[str, dict[int, torch.Tensor]] = {}

    def features_step(name: str, extractor, projector):
        def step(index: int, batch) -> None:
            outputs.setdefault(name, {})[index] = extractor(model, batch, projector, precondition)

        return step

    plain_cache: dict[tuple[int, int], np.ndarray] = {}

    def plain(extractor, projector) -> np.ndarray:
        """Validation-type (plain gradient) features, untimed, computed once per pair."""
        key = (id(extractor), id(projector))
        if key not in plain_cache:
            plain_cache[key] = torch.cat([extractor(model, batch, projector, None) for batch in batches]).numpy()
        return plain_cache[key]

    # Timed sections first, so that no accuracy bookkeeping sits in their peak RSS.
    # Floor: a plain batched forward + backward (summed LoRA weight gradients), no features.
    params = [q for q in model.parameters() if q.requires_grad]

    def floor_step(index: int, batch) -> None:
        for q in params:
            q.grad = None
        model_loss(model, batch).sum().backward()

    engine, low, reference = LoraGradientEngine(), LoraGradientEngine(autocast_dtype=torch.bfloat16), ReferenceExtractor()
    sketch = CountSketchProjector(p, d, args.seed)
    # The cheap rows run in interleaved rounds (best of --rounds), each warmed up first.
    cheap = {"floor": floor_step, "engine": features_step("engine", engine, sketch)}
    if not args.no_bf16:
        cheap["engine-bf16"] = features_step("engine-bf16", low, sketch)
    for step in cheap.values():
        step(0, warm)  # the first round absorbs what is left (buffers growing to full batches)
    # Interleaved batch by batch, so a change in machine load hits every row alike; the cost
    # relative to the floor is the median of paired per-batch ratios.
    times = {name: [[0.0] * len(batches) for _ in range(args.rounds)] for name in cheap}
    peaks = dict.fromkeys(cheap, 0)
    gc.collect()
    for round_ in range(args.rounds):
        for index, batch in enumerate(batches):
            for name, step in cheap.items():
                with PeakRss() as rss:
                    started = time.perf_counter()
                    step(index, batch)
                    times[name][round_][index] = time.perf_counter() - started
                peaks[name] = max(peaks[name], rss.peak)
    for name in cheap:
        seconds = min(sum(passed) for passed in times[name])
        ratios = [
            times[name][k][i] / times["floor"][k][i] for k in range(args.rounds) for i in range(len(batches))
        ]
        rows[name] = {
            "seconds": seconds, "examples_per_s": len(examples) / seconds, "peak_rss_mb": peaks[name] / 2**20,
            "x_floor": float(np.median(ratios)),
        }
    for q in params:
        q.grad = None
    for name in ("engine", "engine-bf16"):
        if name in rows:
            rows[name]["dense_block_bytes"] = sketch.largest_block_bytes

    # Projection-bound rows: one pass, warmed up on the gradient part only (identity projection),
    # each with a fresh projector (no dense blocks cached yet).
    reference(model, warm, identity, precondition)
    less = LessReference(p, d, args.seed)
    measure("reference", features_step("reference", less, None), over=groups)
    rows["reference"]["dense_block_bytes"] = less.dense.largest_block_bytes
    del less
    gc.collect()
    dense = None
    if not args.skip_dense_engine:
        dense = RademacherProjector(p, d, args.seed)
        measure("engine+dense", features_step("engine+dense", engine, dense))
        rows["engine+dense"]["dense_block_bytes"] = dense.largest_block_bytes
    projected = {name: torch.cat([parts[i] for i in sorted(parts)]).numpy() for name, parts in outputs.items()}

    # Accuracy: exact g from the reference loop, G = the reference's Adam transform of it.
    exact_g = torch.cat([reference(model, b, identity, None) for b in batches])
    exact_gamma = precondition(exact_g)
    exact_g, exact_gamma = exact_g.double(), exact_gamma.double()

    def rel_err(got: torch.Tensor, expected: torch.Tensor) -> float:
        return float(((got.double() - expected).norm(dim=1) / expected.norm(dim=1).clamp(min=1e-300)).max())

    def unit(x) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-300)

    exact_cos = unit(exact_gamma.numpy()) @ unit(exact_g.numpy()).T  # cos(G_i, g_j): train x validation

    def cosines(name: str, extractor, projector) -> np.ndarray:
        cos = unit(projected[name]) @ unit(plain(extractor, projector)).T
        rows[name]["max_dcos"] = float(np.abs(cos - exact_cos).max())
        rows[name]["rms_dcos"] = float(np.sqrt(((cos - exact_cos) ** 2).mean()))
        return cos

    def gradient_errors(extractor) -> dict[str, float]:
        return {
            "g": rel_err(torch.cat([extractor(model, b, identity, None) for b in batches]), exact_g),
            "gamma": rel_err(torch.cat([extractor(model, b, identity, precondition) for b in batches]), exact_gamma),
        }

    rows["engine"]["max_rel_err"] = gradient_errors(engine)
    engine_cos = cosines("engine", engine, sketch)
    if "engine-bf16" in rows:
        if not args.quick:
            rows["engine-bf16"]["max_rel_err"] = gradient_errors(low)
        rows["engine-bf16"]["max_dcos_vs_fp32"] = float(np.abs(cosines("engine-bf16", low, sketch) - engine_cos).max())
    if dense is not None:
        rows["engine+dense"]["max_rel_err"] = rows["engine"]["max_rel_err"]
        rows["engine+dense"]["vs_reference"] = rel_err(
            torch.from_numpy(projected["engine+dense"]), torch.from_numpy(projected["reference"]).double()
        )
        cosines("engine+dense", engine, dense)
        # The reference's training features (fp16-rounded gradients, the same P) against the same
        # validation features: what LESS's own rounding adds.
        cos = unit(projected["reference"]) @ unit(plain(engine, dense)).T
        rows["reference"]["max_dcos"] = float(np.abs(cos - exact_cos).max())
        rows["reference"]["rms_dcos"] = float(np.sqrt(((cos - exact_cos) ** 2).mean()))
    return {
        "r": r, "seq": seq, "p": p, "d": d, "examples": len(examples), "batch_size": args.batch_size,
        "threads": torch.get_num_threads(), "rows": rows,
    }


# --------------------------------------------------------------------------------------------
# Parent side: spawn one worker per case, print the table.


def fmt_err(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return f"{value['g']:.1e}/{value['gamma']:.1e}"
    return f"{value:.1e}"


def print_table(results: list[dict]) -> None:
    header = (
        f"{'case':<14} {'method':<14} {'ex/s':>8} {'speed-up':>9} {'x floor':>8} {'RSS MB':>7} "
        f"{'rel err g/G':>17} {'|dcos| max/rms':>15} {'dense block':>12}"
    )
    print(header)
    print("-" * len(header))
    order = ("reference", "floor", "engine", "engine+dense", "engine-bf16")
    for result in results:
        rows = result["rows"]
        case = f"r={result['r']} seq={result['seq']}"
        base, floor = rows["reference"]["seconds"], rows["floor"]["seconds"]
        for name in order:
            row = rows.get(name)
            if row is None:
                continue
            dcos = row.get("max_dcos")
            dcos_text = "-" if dcos is None else f"{dcos:.4f}/{row['rms_dcos']:.4f}"
            extra = ""
            if "max_dcos_vs_fp32" in row:
                extra = f"  (vs fp32: {row['max_dcos_vs_fp32']:.1e})"
            if "vs_reference" in row:
                extra = f"  (vs reference features: {row['vs_reference']:.1e})"
            block = row.get("dense_block_bytes")
            x_floor = row.get("x_floor", row["seconds"] / floor)
            print(
                f"{case:<14} {name:<14} {row['examples_per_s']:>8.2f} {base / row['seconds']:>8.1f}x "
                f"{x_floor:>7.2f}x {row['peak_rss_mb']:>7.0f} {fmt_err(row.get('max_rel_err')):>17} "
                f"{dcos_text:>15} {'-' if block is None else f'{block / 2**20:.0f} MiB':>12}"
                + extra
            )
        print(f"{'':<14} (p={result['p']:,}, d={result['d']}, {result['examples']} examples, "
              f"batch {result['batch_size']}, {result['threads']} threads)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick", action="store_true",
        help="16 examples, cases 128x128,128x512,8x128, 2 rounds, no engine+dense row, no bf16 gradient error",
    )
    parser.add_argument("--rounds", type=int, help="timed rounds of the cheap rows, best kept (default 3, 2 with --quick)")
    parser.add_argument("--examples", type=int, help="examples per case (default 64, 16 with --quick)")
    parser.add_argument("--batch-size", type=int, default=16, help="examples per batch (LESS projects every 16)")
    parser.add_argument("--projection-dim", type=int, default=8192, help="d")
    parser.add_argument("--adam-steps", type=int, default=2, help="AdamW steps before extraction")
    parser.add_argument("--no-bf16", action="store_true", help="skip the bf16 autocast row")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--cases", help="r x seq, comma-separated (default: all four; three with --quick)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-dense-engine", action="store_true", help="no engine+dense row")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.examples is None:
        args.examples = 16 if args.quick else 64
    if args.rounds is None:
        args.rounds = 2 if args.quick else 3
    if args.cases is None:
        args.cases = ",".join(f"{r}x{s}" for r, s in (CASES[:3] if args.quick else CASES))
    if args.quick:
        args.skip_dense_engine = True

    if args.worker:
        r, seq = (int(x) for x in args.worker.split("x"))
        print(json.dumps(run_case(r, seq, args)))
        return 0

    cases = [tuple(int(x) for x in case.split("x")) for case in args.cases.split(",")]
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    forwarded = [a for a in (argv if argv is not None else sys.argv[1:])]
    results = []
    started = time.perf_counter()
    print(f"load average at start: {os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs), "
          f"OMP_WAIT_POLICY={env['OMP_WAIT_POLICY']}", flush=True)
    for r, seq in cases:
        command = [sys.executable, str(Path(__file__).resolve()), *forwarded, "--worker", f"{r}x{seq}"]
        done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            sys.stderr.write(done.stderr)
            raise SystemExit(f"case r={r} seq={seq} failed")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"  r={r} seq={seq}: done after {time.perf_counter() - started:.0f} s", flush=True)
    print(f"load average at end: {os.getloadavg()[0]:.1f}; total {time.perf_counter() - started:.0f} s\n")
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    headline = next((x for x in results if (x["r"], x["seq"]) == CASES[0]), None)
    if headline is not None:
        rows = headline["rows"]
        engine = rows["engine"]
        print(
            f"speedup={rows['reference']['seconds'] / engine['seconds']:.2f} "
            f"max_rel_err={max(engine['max_rel_err'].values()):.3e} max_dcos={engine['max_dcos']:.4f} "
            f"dense_matrix_bytes={engine['dense_block_bytes']} peak_rss_mb={round(engine['peak_rss_mb'])}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
