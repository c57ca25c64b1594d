"""Influence Distillation's landmark approximation (docs/algorithms.md §14, Nikdan et al. 2025).

Accurate gradient influence for a few landmark examples, propagated to the whole pool through
cheap embeddings instead of a gradient per example:

- `embeddings`: JVP embeddings of every example (forward-mode, first blocks of the model).
- `landmarks`: the seeded landmark draw (their gradients use the bias-corrected Adam
  preconditioner of `selection.gradients.preconditioners`).
- `propagate`: RBF kernel ridge regression from the landmarks to every example, in row blocks.
- `scores`: p_L from the landmark and validation features, and p_hat written to a file.

The selection itself (round robin over validation examples) is a reduction like the others:
`selection.reduce.influence_distillation`. The stage steps that run all this are in
`selection.jobs.distill`, behind the influence-method seam `selection.jobs.methods`.
"""
