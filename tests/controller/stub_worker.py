"""A stand-in for the worker image in operator tests: the stage contract, in milliseconds.

    python -m tests.controller.stub_worker <warmup|shard|reduce> <args.json>

It reads the same arguments document as `python -m selection.jobs`, so a test still checks that
the operator wires the ConfigMap, env and JOB_COMPLETION_INDEX correctly, but it skips the model
work: `reduce` commits a selection.json of DSEL_STUB_COUNT indices (default 6) out of
DSEL_STUB_POOL_SIZE (default 40), ascending or, with DSEL_STUB_ORDER=shuffled, in a seeded random
order; the other stages only sleep DSEL_STUB_DELAY seconds. DSEL_STUB_FAIL makes stages fail
like the real ones do (one error line on stderr, exit code DSEL_STUB_EXIT, default 1): a comma-
separated list of "<stage>" or "<stage>:<index>", each optionally prefixed by "<selection>/";
a failing stage first waits DSEL_STUB_FAIL_DELAY more seconds (so that, with maxFailedIndexes,
the other shards finish before the Job gives up on them).
"""

from __future__ import annotations

import json
import os
import sys
import time


def main(argv: list[str]) -> int:
    stage, arguments = argv
    document = json.loads(open(arguments, encoding="utf-8").read())
    index = os.environ.get("JOB_COMPLETION_INDEX")
    time.sleep(float(os.environ.get("DSEL_STUB_DELAY", "0")))
    name = document["resource"]["metadata"]["name"]
    targets = {stage, f"{stage}:{index}", f"{name}/{stage}", f"{name}/{stage}:{index}"}
    if targets & set(filter(None, os.environ.get("DSEL_STUB_FAIL", "").split(","))):
        time.sleep(float(os.environ.get("DSEL_STUB_FAIL_DELAY", "0")))
        where = f" of shard {index}" if index is not None else ""
        print(f"dsel {stage}: error: stub failure{where}: injected by the test", file=sys.stderr, flush=True)
        return int(os.environ.get("DSEL_STUB_EXIT", "1"))
    if stage == "shard" and index is None:
        from selection.contract import EXIT_BAD_INPUT

        print("dsel shard: error: no JOB_COMPLETION_INDEX", file=sys.stderr)
        return EXIT_BAD_INPUT
    if stage == "reduce":
        from selection import artifacts, storage

        pool = int(os.environ.get("DSEL_STUB_POOL_SIZE", "40"))
        count = int(os.environ.get("DSEL_STUB_COUNT", "6"))
        store = storage.open_store(document["storage"]["uri"], endpoint_url=document["storage"]["endpoint"])
        indices = list(range(count))
        if os.environ.get("DSEL_STUB_ORDER") == "shuffled":
            import random

            random.Random(0).shuffle(indices)
        selection = {
            "method": "bids", "budget": count, "indices": indices, "composition": {"stub": count},
            "parameters": {}, "poolSize": pool, "tasks": ["stub"],
            "subsetUri": store.uri_for(f"{artifacts.SELECTION_PREFIX}/{artifacts.SUBSET_FILE}"),
        }
        storage.commit_artifact(
            store, artifacts.SELECTION_PREFIX,
            {artifacts.SELECTION_FILE: json.dumps(selection).encode(), artifacts.SUBSET_FILE: b""},
            {"fingerprint": "stub"},
        )
    print(f"dsel {stage}: stub done", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
