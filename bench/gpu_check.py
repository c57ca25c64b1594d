"""GPU readiness in one short run: the first command to run on a machine with a CUDA GPU.

    .venv/bin/python bench/gpu_check.py            # full size on CUDA (< 5 min on one GPU), toy on CPU
    .venv/bin/python bench/gpu_check.py --toy      # toy size anywhere (CI runs this on CPU)

Full size (CUDA): the 'llama-small' preset (hidden 256, 4 layers, byte vocabulary) and a
~1.1B-parameter Llama built from a LlamaConfig (hidden 2048, 22 layers, 32 heads, 4 KV heads,
intermediate 5632, vocab 32000: TinyLlama's shape, random weights, nothing downloaded), LoRA
r=128 alpha 512 on q,k,v,o, sequences of 512 and 2048 tokens, model weights in bf16 and in fp32.
Toy size (CPU): 'llama-demo' and a 2-layer config of the same kind, r=8, sequences 32 and 64.

Every case runs the pipeline's gradient engine (`LoraGradientEngine`, CountSketch to d=8192, or
d=256 at toy size, Adam-aware features) and a plain batched forward + backward (the floor) on
the same seeded random-token batches (lengths between seq/2 and seq, the first quarter of each
masked as prompt), interleaved batch by batch after a warm-up batch.

Output (documented in README, "GPU readiness"): one table row per (model, seq, dtype):

    model  params  seq  dtype  batch  floor ex/s  engine ex/s  x floor  peak MiB

(peak MiB: torch.cuda.max_memory_allocated during the case on CUDA; the process's peak RSS so
far on CPU), then one line per (model, seq): `bf16 vs fp32 max |dcos|` over all pairs of
cos(Adam feature of example i, plain feature of example j); then one out-of-memory line per model
(bf16, the longest sequence): on CUDA
the memory limit (torch.cuda.set_per_process_memory_fraction) is set between what half a batch and
a whole batch need, so the engine really runs out of memory; on CPU an out-of-memory error is
injected for the larger size. It says whether the engine halved the batch, whether its features
equal the unconstrained ones, and whether the next batch started at the halved size. The last
line is JSON with everything above (for scripts and the CI test).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BILLION_SHAPE = dict(
    hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
    num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048,
)
TOY_SHAPE = dict(
    hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, vocab_size=1000, max_position_embeddings=128,
)


@dataclass(frozen=True)
class Plan:
    models: tuple[tuple[str, dict | str], ...]  # (label, LlamaConfig overrides or a preset name)
    seqs: tuple[int, ...]
    batch: dict[tuple[str, int], int]  # examples per batch by (model label, seq)
    batches: int  # timed batches per case
    r: int
    d: int


def plan_for(toy: bool) -> Plan:
    if toy:
        return Plan((("llama-demo", "llama-demo"), ("toy-llama", TOY_SHAPE)), (32, 64),
                    {}, 2, 8, 256)
    return Plan((("llama-small", "llama-small"), ("llama-1.1b", BILLION_SHAPE)), (512, 2048),
                {("llama-small", 512): 16, ("llama-small", 2048): 8, ("llama-1.1b", 512): 8,
                 ("llama-1.1b", 2048): 4}, 3, 128, 8192)


def build_model(shape, seed: int):
    """A seeded random Llama (fp32, on the CPU) and its config."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from selection.models import TINY_PRESETS, build_byte_tokenizer

    if isinstance(shape, str):
        tokenizer = build_byte_tokenizer()
        shape = dict(TINY_PRESETS[shape], vocab_size=len(tokenizer))
    config = LlamaConfig(tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2, **shape)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    return model, config


def attach(model, r: int, seed: int):
    """LoRA r (alpha 4r) on q,k,v,o, with lora_B drawn nonzero; eval mode."""
    import torch

    from selection.spec import LoraSpec
    from selection.warmup import attach_lora, trainable_parameters

    model = attach_lora(model, LoraSpec(r=r, alpha=4 * r, dropout=0.0), seed=seed)
    torch.manual_seed(seed + 1)
    with torch.no_grad():  # peft starts lora_B at zero, which would zero every lora_A gradient
        for name, parameter in trainable_parameters(model):
            if "lora_B" in name:
                parameter.normal_(std=0.02)
    return model.eval()


def random_batches(vocab: int, seq: int, size: int, count: int, seed: int):
    """Seeded random-token batches; lengths in [seq/2, seq], the first quarter masked as prompt."""
    import numpy as np

    from selection import data

    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(count):
        items = []
        for _ in range(size):
            length = int(rng.integers(seq // 2, seq + 1))
            ids = tuple(int(x) for x in rng.integers(3, vocab, size=length))
            prompt = length // 4
            items.append(data.Tokenized(ids, (data.IGNORE_INDEX,) * prompt + ids[prompt:]))
        batches.append(data.collate(items, 0))
    return batches


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory(device) -> int:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_case(model, batches, device, projector, precondition) -> dict:
    """Interleaved floor / engine timing over `batches` after a warm-up; features of every batch."""
    import torch

    from selection.gradients.engine import LoraGradientEngine
    from selection.loss import model_loss

    engine = LoraGradientEngine()
    params = [p for p in model.parameters() if p.requires_grad]

    def floor(batch) -> None:
        for p in params:
            p.grad = None
        model_loss(model, batch).sum().backward()

    def features(batch):
        return engine(model, batch, projector, precondition)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    floor(batches[0])
    features(batches[0])
    times = {"floor": [], "engine": []}
    adam = []
    for batch in batches[1:]:
        for name, step in (("floor", floor), ("engine", features)):
            synchronize(device)
            started = time.perf_counter()
            out = step(batch)
            synchronize(device)
            times[name].append(time.perf_counter() - started)
            if name == "engine":
                adam.append(out.float().cpu())
    for p in params:
        p.grad = None
    plain = [engine(model, batch, projector, None).float().cpu() for batch in batches[1:]]
    examples = sum(int(b["input_ids"].shape[0]) for b in batches[1:])
    return {
        "floor_ex_s": examples / sum(times["floor"]),
        "engine_ex_s": examples / sum(times["engine"]),
        "x_floor": statistics.median(e / f for e, f in zip(times["engine"], times["floor"])),
        "peak_bytes": peak_memory(device),
        "adam": torch.cat(adam), "plain": torch.cat(plain),
    }


def cosines(adam, plain):
    import torch

    a = torch.nn.functional.normalize(adam.double(), dim=1)
    g = torch.nn.functional.normalize(plain.double(), dim=1)
    return a @ g.T


def check_out_of_memory(model, batch, device, projector, precondition) -> dict:
    """Make the engine run out of memory on `batch`, then check it halved, matched and kept the size."""
    import torch

    from selection.gradients.engine import LoraGradientEngine

    rows = int(batch["input_ids"].shape[0])
    expected = LoraGradientEngine()(model, batch, projector, precondition).float().cpu()
    engine, sizes = LoraGradientEngine(), []
    run = engine._run

    def recorded(model, part, projector, precondition):
        sizes.append(int(part["input_ids"].shape[0]))
        if device.type != "cuda" and sizes[-1] > rows // 2:
            raise torch.OutOfMemoryError("out of memory (injected on CPU)")
        return run(model, part, projector, precondition)

    engine._run = recorded
    how = "injected (CPU)"
    if device.type == "cuda":
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        LoraGradientEngine()(model, batch, projector, precondition)
        whole = torch.cuda.max_memory_allocated(device) - base
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(min(1.0, (base + 0.75 * whole) / total), device)
        how = f"real (limit {(base + 0.75 * whole) / 2**20:.0f} MiB, a whole batch needs {(base + whole) / 2**20:.0f})"
    try:
        got = engine(model, batch, projector, precondition).float().cpu()
        first_of_next = None
        sizes_before = len(sizes)
        engine(model, batch, projector, precondition)
        first_of_next = sizes[sizes_before] if len(sizes) > sizes_before else None
        error = None
    except torch.OutOfMemoryError as failure:
        got, error = None, str(failure).splitlines()[0]
    finally:
        if device.type == "cuda":
            torch.cuda.set_per_process_memory_fraction(1.0, device)
            torch.cuda.empty_cache()
    halved = bool(sizes) and sizes[0] == rows and engine.max_rows == rows // 2
    match = None
    if got is not None:
        match = float(torch.nn.functional.cosine_similarity(got.double(), expected.double(), dim=1).min())
    return {
        "how": how, "sizes": sizes, "halved": halved, "min_cosine_vs_unconstrained": match,
        "next_batch_starts_at": first_of_next, "error": error,
        "recovered": bool(halved and match is not None and match > 0.999 and first_of_next == rows // 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--toy", action="store_true", help="toy size (the default on a machine without CUDA)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the JSON summary here")
    args = parser.parse_args(argv)

    from selection.threads import configure_threads

    configure_threads()
    import torch

    from selection.gradients.features import lora_dim
    from selection.gradients.preconditioners import AdamPreconditioner
    from selection.gradients.projection import CountSketchProjector

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    toy = args.toy or device.type != "cuda"
    plan = plan_for(toy)
    started = time.perf_counter()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; torch {torch.__version__}; {'toy' if toy else 'full'} size; LoRA r={plan.r} on q,k,v,o; "
          f"CountSketch d={plan.d}", flush=True)
    header = (f"{'model':<12} {'params':>7} {'seq':>5} {'dtype':<8} {'batch':>5} {'floor ex/s':>11} "
              f"{'engine ex/s':>12} {'x floor':>8} {'peak MiB':>9}")
    print(header)
    print("-" * len(header), flush=True)
    rows, dcos, ooms = [], {}, {}
    for label, shape in plan.models:
        base, config = build_model(shape, args.seed)
        params = sum(p.numel() for p in base.parameters())
        model = attach(base, plan.r, args.seed).to(device)
        p = lora_dim(model)
        projector = CountSketchProjector(p, plan.d, args.seed)
        generator = torch.Generator().manual_seed(args.seed + 2)
        precondition = AdamPreconditioner(
            torch.randn(p, generator=generator) * 1e-3, torch.rand(p, generator=generator) * 1e-5, 0.9, 0.999
        )
        features: dict[tuple[int, str], tuple] = {}
        for dtype_name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
            model.to(dtype)
            for seq in plan.seqs:
                size = plan.batch.get((label, seq), 2)
                batches = [
                    {k: v.to(device) for k, v in b.items()}
                    for b in random_batches(config.vocab_size, seq, size, plan.batches + 1, args.seed + seq)
                ]
                case = run_case(model, batches, device, projector, precondition)
                features[(seq, dtype_name)] = (case.pop("adam"), case.pop("plain"))
                row = {"model": label, "params": params, "seq": seq, "dtype": dtype_name, "batch": size, **case}
                rows.append(row)
                print(f"{label:<12} {params / 1e6:>6.1f}M {seq:>5} {dtype_name:<8} {size:>5} {case['floor_ex_s']:>11.2f} "
                      f"{case['engine_ex_s']:>12.2f} {case['x_floor']:>7.2f}x {case['peak_bytes'] / 2**20:>9.0f}",
                      flush=True)
                last_batch = batches[-1]
        for seq in plan.seqs:
            exact = cosines(*features[(seq, "float32")])
            low = cosines(*features[(seq, "bfloat16")])
            dcos[f"{label} seq {seq}"] = float((low - exact).abs().max())
        ooms[label] = check_out_of_memory(model, last_batch, device, projector, precondition)  # bf16, longest seq
        del model, base
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print()
    for key, value in dcos.items():
        print(f"bf16 vs fp32 max |dcos|  {key}: {value:.2e}")
    for label, oom in ooms.items():
        cosine = oom["min_cosine_vs_unconstrained"]
        print(f"out-of-memory path {label} ({oom['how']}): batch sizes tried {oom['sizes']}; halved: "
              f"{'yes' if oom['halved'] else 'no'}; features vs unconstrained: min cosine "
              f"{cosine if cosine is None else round(cosine, 6)}; next batch starts at "
              f"{oom['next_batch_starts_at']}; recovered: {'yes' if oom['recovered'] else 'no'}"
              + (f"; error: {oom['error']}" if oom["error"] else ""))
    seconds = time.perf_counter() - started
    print(f"total {seconds:.0f} s")
    summary = {
        "device": name, "toy": toy, "r": plan.r, "d": plan.d, "seconds": seconds,
        "cases": rows, "bf16_vs_fp32_max_dcos": dcos, "out_of_memory": ooms,
    }
    print(json.dumps(summary))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0 if all(oom["recovered"] for oom in ooms.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
