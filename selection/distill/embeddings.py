"""JVP embeddings: a cheap vector per training example (docs/algorithms.md §14.1).

For example z with tokens x, let h(θ; x) be the hidden state of x's last token at the output of
the model truncated to its first `blocks` transformer blocks (with the decoder's final norm, as
Nikdan et al.'s reference replaces the LM head by the identity). For `tangents` seeded Gaussian
directions v_1..v_T in parameter space, the embedding is

    e(z) = P · [J_θ h · v_1 ; ... ; J_θ h · v_T]        (T·H values, projected to embedDim)

where J_θ h · v is the forward-mode Jacobian-vector product (`torch.func.jvp`). Two examples whose
Jacobians act alike on random directions get close embeddings; that closeness is what the kernel
regression in `selection.distill.propagate` uses.

Choices the paper leaves open, fixed here:
- Parameters: the directions live in the space of the model's *trainable* parameters (the LoRA
  adapters that gradient features are taken over), restricted to the kept blocks, at the weights
  of the checkpoint loaded into the model (the pipeline loads the last warmup checkpoint).
  Entries are standard normal, drawn per tangent t from a Philox stream seeded with
  (seed, t, TANGENT_KIND), parameter by parameter in `named_parameters` order, so every process
  draws the same directions.
- Blocks: the first `min(blocks, number of layers)` blocks; a model with fewer layers than
  `blocks` (the 2-layer demo model) keeps all of them.
- Last token: the last non-padding token (batches are right-padded; with causal attention a real
  token never sees padding, so batching does not change an example's embedding beyond float
  rounding).
- Projection: a seeded dense Rademacher projection (`selection.gradients.projection`) from T·H
  to embedDim when T·H > embedDim; when T·H <= embedDim the concatenation is kept as it is
  (a random projection to more dimensions can only add distortion).
- Attention runs through the math SDPA kernel: the fused CPU/GPU kernels have no forward-mode
  derivative. Flash-attention configurations are switched to SDPA for the pass.

The computation is batched (one forward-mode pass per half batch, the tangents vmapped), never a
loop over examples. The vmapped tangents share one primal forward. Each batch of `batch_size`
consecutive examples is cut into two halves by length (`length_halves`) to limit padding.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from selection.data import Tokenized, collate
from selection.gradients.projection import make_projector

TANGENT_KIND = 3  # Philox stream kind of the tangent draws (the projections use 1 and 2)
_FORWARD_AD_ATTENTION = ("eager", "sdpa")  # attention implementations forward-mode AD can run


class EmbeddingError(ValueError):
    """The model cannot be embedded (no decoder layers, no trainable parameters in them)."""


def decoder_of(model) -> torch.nn.Module:
    """The transformer stack (with `.layers`) inside a causal LM, peft-wrapped or not."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else base
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList) or len(layers) == 0:
        raise EmbeddingError(
            f"influence distillation: cannot find the decoder blocks of {type(base).__name__} "
            "(expected a decoder module with a non-empty `layers` ModuleList)"
        )
    return decoder


def decoder_blocks(decoder: torch.nn.Module) -> torch.nn.ModuleList:
    """The `layers` of a decoder from `decoder_of`, narrowed (Module attribute access types them Tensor | Module)."""
    layers = decoder.layers
    if not isinstance(layers, torch.nn.ModuleList):
        raise EmbeddingError(f"influence distillation: {type(decoder).__name__}.layers is not a ModuleList")
    return layers


@contextlib.contextmanager
def truncated(decoder: torch.nn.Module, blocks: int) -> Iterator[int]:
    """Temporarily keep only the first `blocks` layers (capped at the layer count); yields the count.

    Also selects an attention implementation forward-mode AD supports for the duration.
    """
    layers = decoder_blocks(decoder)
    kept = min(blocks, len(layers))
    config = getattr(decoder, "config", None)
    implementation = getattr(config, "_attn_implementation", None)
    switched = config if implementation is not None and implementation not in _FORWARD_AD_ATTENTION else None
    decoder.layers = torch.nn.ModuleList(list(layers)[:kept])
    try:
        if switched is not None:
            switched._attn_implementation = "sdpa"
        with sdpa_kernel(SDPBackend.MATH):
            yield kept
    finally:
        decoder.layers = layers
        if switched is not None:
            switched._attn_implementation = implementation


def tangent_parameters(decoder: torch.nn.Module, kept: int) -> dict[str, torch.Tensor]:
    """Trainable parameters of the truncated decoder (names relative to it), in model order."""
    dropped = tuple(f"layers.{i}." for i in range(kept, len(decoder_blocks(decoder))))
    params = {
        name: p.detach()
        for name, p in decoder.named_parameters()
        if p.requires_grad and not name.startswith(dropped)
    }
    if not params:
        raise EmbeddingError(
            f"influence distillation: the first {kept} decoder blocks have no trainable (LoRA) "
            "parameters to draw tangent directions in; adapt an earlier module or keep more blocks"
        )
    return params


def draw_tangents(params: dict[str, torch.Tensor], count: int, seed: int) -> dict[str, torch.Tensor]:
    """`count` standard-normal directions, stacked: name -> (count, *shape), in the params' dtype."""
    stacked = {name: torch.empty((count, *p.shape), dtype=p.dtype, device=p.device) for name, p in params.items()}
    for t in range(count):
        rng = np.random.Generator(np.random.Philox(np.random.SeedSequence([seed, t, TANGENT_KIND])))
        for name, p in params.items():
            draw = rng.standard_normal(p.numel(), dtype=np.float32).reshape(tuple(p.shape))
            stacked[name][t] = torch.from_numpy(draw).to(p.device, p.dtype)
    return stacked


def last_token_jvp(
    decoder: torch.nn.Module,
    primals: dict[str, torch.Tensor],
    tangents: dict[str, torch.Tensor],
    batch: dict[str, torch.Tensor],
) -> torch.Tensor:
    """(B, T*H) float32: the JVPs of each example's last-token hidden state, tangents concatenated.

    The decoder must already be truncated (see `truncated`) and in eval mode (dropout is random,
    which vmap refuses); `tangents` are stacked (T, ...).
    """
    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)
    last = (attention_mask.sum(dim=1) - 1).clamp(min=0)

    def hidden(params):
        output = torch.func.functional_call(
            decoder, params, (input_ids,), {"attention_mask": attention_mask, "use_cache": False}
        )
        return output.last_hidden_state[rows, last]

    def along(tangent):
        return torch.func.jvp(hidden, (primals,), (tangent,))[1]

    with torch.no_grad(), warnings.catch_warnings():
        # torch loads its forward-AD decompositions with torch.jit.script on first use, which
        # torch itself deprecates; nothing for users to act on
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*deprecated", category=DeprecationWarning)
        jvps = torch.func.vmap(along)(tangents)  # (T, B, H)
    return jvps.permute(1, 0, 2).reshape(input_ids.shape[0], -1).float()


def length_halves(chunk: Sequence[Tokenized]) -> list[np.ndarray]:
    """Positions of a batch sorted by length (ties by position) and cut into two halves.

    Forward-mode attention materializes (tokens x tokens) tensors for the primal and every
    tangent, so padding to the batch's longest example costs quadratically: on the demo data
    halving by length made embeddings about 30% faster. The split depends only on the batch
    itself, so shard layouts still see identical batches.
    """
    order = np.array(sorted(range(len(chunk)), key=lambda i: (len(chunk[i].input_ids), i)), dtype=np.int64)
    if len(order) < 2:
        return [order]
    middle = len(order) // 2
    return [order[:middle], order[middle:]]


@dataclass(frozen=True)
class JvpEmbedder:
    """Computes JVP embeddings; the fields are the spec's `distillation` section (same names)."""

    blocks: int = 4  # transformer blocks kept (capped at the model's layer count)
    tangents: int = 2  # Gaussian parameter directions
    embed_dim: int = 4096  # output dimension when T*H exceeds it
    seed: int = 0  # tangent directions and projection

    def __post_init__(self):
        for name in ("blocks", "tangents", "embed_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"distillation.{name}: must be >= 1, got {getattr(self, name)}")

    def output_dim(self, model) -> int:
        """The embedding dimension for `model`: min(T*H, embedDim)."""
        return min(self.tangents * self._hidden_size(model), self.embed_dim)

    @staticmethod
    def _hidden_size(model) -> int:
        config: Any = decoder_of(model).config  # a transformers config; Module attribute access types it Tensor | Module
        return int(config.hidden_size)

    def kept_blocks(self, model) -> int:
        return min(self.blocks, len(decoder_blocks(decoder_of(model))))

    def __call__(
        self,
        model,
        examples: Sequence[Tokenized],
        *,
        batch_size: int,
        pad_token_id: int,
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Embeddings of `examples` in order, (n, output_dim) float32.

        Batches are consecutive runs of `batch_size` examples (as in `compute_features`), so shards
        starting at multiples of `batch_size` give the same numbers whatever the sharding.
        """
        decoder = decoder_of(model)
        device = next(model.parameters()).device
        raw_dim = self.tangents * self._hidden_size(model)
        projector = make_projector("rademacher", raw_dim, self.embed_dim, self.seed) if raw_dim > self.embed_dim else None
        out = np.zeros((len(examples), min(raw_dim, self.embed_dim)), dtype=np.float32)
        was_training = model.training
        model.eval()  # dropout off
        try:
            with truncated(decoder, self.blocks) as kept:
                primals = tangent_parameters(decoder, kept)
                tangents = draw_tangents(primals, self.tangents, self.seed)
                for start in range(0, len(examples), batch_size):
                    chunk = examples[start : start + batch_size]
                    for part in length_halves(chunk):
                        items = [chunk[i] for i in part]
                        batch = {k: v.to(device) for k, v in collate(items, pad_token_id).items()}
                        raw = last_token_jvp(decoder, primals, tangents, batch)
                        embedded = projector.project(raw) if projector is not None else raw
                        out[start + part] = embedded.cpu().numpy()
                    if progress:
                        progress(len(chunk))
        finally:
            model.train(was_training)
        return out
