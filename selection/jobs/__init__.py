"""One entrypoint per stage: `python -m selection.jobs.<stage> <args.json>`.

`python -m selection.jobs <stage> <args.json>` dispatches to the same functions; it is the
worker image's entrypoint. Each stage reads and writes only through the artifact store, skips
work whose artifact is already finished, and exits non-zero with a one-line reason on bad input.

Stages import torch-side modules (warmup, gradients, distill) inside functions: `python -m
selection.jobs` and `dsel` import every stage module, and the reduce stage, `dsel validate` and
`dsel --help` start without torch.
"""
