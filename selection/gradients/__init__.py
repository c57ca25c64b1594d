"""Per-example gradient features: computers (reference loop, batched engine) and projectors.

A feature is the LoRA gradient of one example's loss, Adam-preconditioned for training examples
(or plain), randomly projected to d dimensions, L2-normalized and stored as fp16
(docs/algorithms.md §4-§7). Computers and projectors are swappable; the plain reference implementation
stays as the oracle that faster ones are tested against.
"""
