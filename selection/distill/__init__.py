"""Influence Distillation's landmark approximation (docs/algorithms.md §14, Nikdan et al. 2025).

Accurate gradient influence for a few landmark examples, propagated to the whole pool through
cheap embeddings instead of a gradient per example:

- `embeddings`: JVP embeddings of every example (forward-mode, first blocks of the model).
- `landmarks`: the seeded landmark draw and the bias-corrected Adam preconditioner of their
  gradients.
- `propagate`: RBF kernel ridge regression from the landmarks to every example, in row blocks.

The selection itself (round robin over validation examples) is a reduction like the others:
`selection.reduce.influence_distillation`. The stages that run all this are in
`selection.jobs.distill`.
"""
