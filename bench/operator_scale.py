"""The operator at scale on the Kubernetes API emulator; run by hand, prints a table.

    .venv/bin/python bench/operator_scale.py                  # 1 x 1000 shards, then 100 selections
    .venv/bin/python bench/operator_scale.py --selections 20 --output bench/results/operator_scale.md

What runs: the real operator (`kopf run -m selection_operator`, a separate process, default
settings: resync every 30 s) against `tests.support.kube_emulator.KubeEmulator` with the DataSelection
CRD, and a SeaweedFS S3 server (`tests.support.s3server`) for the artifacts the operator reads. Instead
of the local job runner, a *status driver* plays the Job controller: it watches Jobs and, after
`--job-seconds`, patches each Job's status to complete the way the Job controller does
(succeeded, completedIndexes "0-<n-1>" for an Indexed Job, SuccessCriteriaMet and Complete
conditions). Each selection's selection.json is committed to S3 before the scenario starts (as
its reduce stage would write it; up front, so that the boto3 work, which would run in this
process beside the emulator, does not slow the emulator during the measurement; the operator
reads it only once the reduce Job is complete). No pods run.

Scenarios:
1. one selection with `--shards` (1000) extraction shards: the API objects the operator
   creates per stage (it must be one Indexed Job with 1000 completions, not 1000 Jobs);
2. `--selections` (100) selections created at once (16 shards each), all in flight together.

Measured: "phase advance" = time from the driver's completion patch of a Job (its response) to
the operator's creation of the next phase's Job (the watch event's arrival at the driver), and
for the reduce Job to the resource's phase Succeeded; p50/p95/max over all selections. Operator
RSS: sampled every 50 ms from /proc (peak), and the kernel's high-water mark; operator CPU
time (user + system) per selection. API requests per
selection: requests the operator process sent (told apart by User-Agent), total / selections,
and by verb + resource. To tell a slow operator from a slow stand-in API server: the emulator's
time to answer each request, and how late this process's event loop (emulator and driver share
it) wakes up.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import kmock  # noqa: E402

from bench.reporting import publish  # noqa: E402
from selection import artifacts, storage  # noqa: E402
from selection.crd import build_crd  # noqa: E402
from tests.support.kube_emulator import KubeEmulator  # noqa: E402
from tests.support.processes import stop_process  # noqa: E402
from tests.support.s3server import SeaweedS3  # noqa: E402

NAMESPACE = "default"
SECRET = "dsel-s3"
STAGES = ("warmup", "extract", "reduce")
DRIVER_AGENT = "kmock"  # the emulator's own client (the driver) sends kmock/<version>


REQUEST_LOG_KEPT = 16  # requests kmock keeps in its log (see CountingEmulator)
PY_SPY = Path(sys.executable).with_name("py-spy")  # for --py-spy, installed in the same environment


class CountingEmulator(KubeEmulator):
    """The emulator, tallying every request by (client, verb, resource), with a bounded request log.

    kmock matches every list, watch and discovery request against its reactions by scanning its
    whole request log (`request in payload._source`), so its cost per request grows with all the
    requests served before: profiled at 100 selections, that scan took 70% of this process's time
    and delayed answers by seconds. Tests assert on the log; this benchmark does not, so the log
    keeps only the last REQUEST_LOG_KEPT requests (the one being served is always among them: the
    scan runs right after it is logged, with no await in between).
    """

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.tally: collections.Counter = collections.Counter()
        self.handling: list[float] = []  # seconds to answer each non-watch request

    async def __call__(self, raw_request):
        agent = raw_request.headers.get("User-Agent", "")
        client = "driver" if agent.startswith(DRIVER_AGENT) else "operator"
        parts = [p for p in raw_request.path.split("/") if p]
        resource = next((p for p in reversed(parts) if p in {
            "jobs", "configmaps", "events", "dataselections", "pods", "secrets", "status", "namespaces",
            "customresourcedefinitions"}), "/".join(parts[:2]) or "/")
        if resource == "status" and len(parts) >= 3:
            resource = f"{parts[-3]}/status"
        verb = raw_request.method
        if verb == "GET" and raw_request.query.get("watch") in ("true", "1", "True"):
            verb = "WATCH"
        elif verb == "GET" and parts and parts[-1] in ("jobs", "dataselections", "configmaps", "pods", "events"):
            verb = "LIST"
        self.tally[(client, verb, resource)] += 1
        del self._requests[:-REQUEST_LOG_KEPT]
        started = time.monotonic()
        try:
            return await super().__call__(raw_request)
        finally:
            if verb != "WATCH":
                self.handling.append(time.monotonic() - started)


def selection(name: str, bucket: str, endpoint: str, shards: int) -> dict:
    return {
        "apiVersion": "dsel.dev/v1alpha1", "kind": "DataSelection",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "model": {"source": "tiny:llama-demo"},
            "data": {"train": f"s3://{bucket}/data/train.jsonl",
                     "validation": [{"task": "t", "uri": f"s3://{bucket}/data/validation.jsonl"}]},
            "gradients": {"shards": shards},
            "selection": {"budget": 6},
            "storage": {"uri": f"s3://{bucket}/{name}", "endpoint": endpoint, "region": "us-east-1",
                        "credentialsSecret": SECRET},
        },
    }


class StatusDriver:
    """Completes every Job the operator creates, as the Job controller would, and times phases."""

    def __init__(self, kube: CountingEmulator, s3: SeaweedS3, job_seconds: float):
        self.kube, self.s3, self.job_seconds = kube, s3, job_seconds
        self.created: dict[tuple[str, str], float] = {}  # (selection, stage) -> Job ADDED seen
        self.completed: dict[tuple[str, str], float] = {}  # (selection, stage) -> completion patched
        self.succeeded: dict[str, float] = {}  # selection -> phase Succeeded seen
        self.job_specs: dict[tuple[str, str], dict] = {}
        self._tasks: set[asyncio.Task] = set()

    async def _watch(self, path: str, on_event) -> None:
        since = ""
        while True:
            params = {"watch": "true", **({"resourceVersion": since} if since else {})}
            timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
            async with self.kube.get(path, params=params, timeout=timeout) as response:
                async for line in response.content:
                    if line.strip():
                        event = json.loads(line)
                        since = event["object"].get("metadata", {}).get("resourceVersion", since)
                        on_event(event["type"], event["object"])

    def _on_job(self, kind: str, job: dict) -> None:
        labels = job["metadata"].get("labels") or {}
        key = (labels.get("dsel.dev/selection"), labels.get("dsel.dev/stage"))
        if kind != "ADDED" or key in self.created:
            return
        self.created[key] = time.monotonic()
        self.job_specs[key] = job["spec"]
        task = asyncio.create_task(self._complete(job, key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_selection(self, kind: str, resource: dict) -> None:
        name = resource["metadata"]["name"]
        if (resource.get("status") or {}).get("phase") == "Succeeded" and name not in self.succeeded:
            self.succeeded[name] = time.monotonic()

    async def _complete(self, job: dict, key: tuple[str, str]) -> None:
        meta, spec = job["metadata"], job["spec"]
        path = f"/apis/batch/v1/namespaces/{meta['namespace']}/jobs/{meta['name']}"
        await asyncio.sleep(self.job_seconds)
        completions = int(spec.get("completions") or 1)
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        status = {
            "startTime": now, "completionTime": now, "active": 0, "ready": 0, "terminating": 0,
            "succeeded": completions, "failed": 0, "uncountedTerminatedPods": {},
            "conditions": [
                {"type": t, "status": "True", "reason": "CompletionsReached",
                 "message": "Reached expected number of succeeded pods", "lastProbeTime": now,
                 "lastTransitionTime": now}
                for t in ("SuccessCriteriaMet", "Complete")
            ],
        }
        if spec.get("completionMode") == "Indexed":
            status["completedIndexes"] = "0" if completions == 1 else f"0-{completions - 1}"
            if spec.get("backoffLimitPerIndex") is not None:
                status["failedIndexes"] = ""
        headers = {"Content-Type": "application/merge-patch+json"}
        async with self.kube.request("PATCH", f"{path}/status", json={"status": status}, headers=headers) as response:
            if response.status >= 400:
                raise RuntimeError(f"PATCH {path}/status: {response.status} {await response.text()}")
        self.completed[key] = time.monotonic()

    def write_selection(self, name: str) -> None:
        store = storage.open_store(f"s3://{self.bucket}/{name}", client=self.s3_client)
        document = {
            "method": "bids", "budget": 6, "indices": list(range(6)), "composition": {"t": 6},
            "parameters": {}, "poolSize": 40, "tasks": ["t"],
            "subsetUri": store.uri_for(f"{artifacts.SELECTION_PREFIX}/{artifacts.SUBSET_FILE}"),
        }
        storage.commit_artifact(
            store, artifacts.SELECTION_PREFIX,
            {artifacts.SELECTION_FILE: json.dumps(document).encode(), artifacts.SUBSET_FILE: b""},
            {"fingerprint": "bench"},
        )

    def start(self, bucket: str) -> list[asyncio.Task]:
        self.bucket = bucket
        # One client for all writes: making one per write costs this process (which also serves
        # the emulator) tens of ms of CPU each, and delayed every answer of the emulator.
        self.s3_client = storage.s3_client(self.s3.endpoint_url)
        return [
            asyncio.create_task(self._watch("/apis/batch/v1/jobs", self._on_job)),
            asyncio.create_task(self._watch("/apis/dsel.dev/v1alpha1/dataselections", self._on_selection)),
        ]

    def advances(self, names: list[str]) -> dict[str, list[float]]:
        """Seconds from each Job's completion to the next phase's Job (or Succeeded), by transition."""
        out: dict[str, list[float]] = collections.defaultdict(list)
        for name in names:
            for stage, following in zip(STAGES, STAGES[1:]):
                if (name, stage) in self.completed and (name, following) in self.created:
                    out[f"{stage} -> {following}"].append(
                        self.created[(name, following)] - self.completed[(name, stage)])
            if (name, "reduce") in self.completed and name in self.succeeded:
                out["reduce -> Succeeded"].append(self.succeeded[name] - self.completed[(name, "reduce")])
        return out


class LoopLag:
    """How late this process's event loop (emulator and driver) wakes from 50 ms sleeps."""

    def __init__(self, interval: float = 0.05):
        self.interval, self.lags = interval, []

    async def run(self) -> None:
        while True:
            started = time.monotonic()
            await asyncio.sleep(self.interval)
            self.lags.append(time.monotonic() - started - self.interval)


class RssSampler:
    """Peak VmRSS of a process, sampled from /proc every `interval` seconds."""

    def __init__(self, pid: int, interval: float = 0.05):
        self.pid, self.interval, self.peak = pid, interval, 0

    def read(self, field: str) -> int:
        with open(f"/proc/{self.pid}/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        return 0

    def cpu_seconds(self) -> float:
        """User + system CPU time the process has used so far."""
        with open(f"/proc/{self.pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    async def run(self) -> None:
        while True:
            try:
                self.peak = max(self.peak, self.read("VmRSS"))
            except OSError:
                return
            await asyncio.sleep(self.interval)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def post(kube, path: str, body: dict) -> None:
    async with kube.post(path, json=body) as response:
        if response.status != 201:
            raise RuntimeError(f"POST {path}: {response.status} {await response.text()}")


async def wait_until(probe, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout:.0f} s")
        await asyncio.sleep(0.05)


async def run(args) -> dict:
    work = Path(tempfile.mkdtemp(prefix="dsel-operator-scale-"))
    results: dict = {"scenarios": []}
    with SeaweedS3(work / "s3") as s3:
        bucket = s3.make_bucket(f"bench-{uuid.uuid4().hex[:12]}")
        os.environ.update(s3.env(), AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)  # the driver
        kube = CountingEmulator(strict=True)
        async with kube, kmock.Server(kube):
            kube.declare(build_crd())
            kubeconfig = work / "kubeconfig"
            from tests.controller.harness import credentials_secret, write_kubeconfig

            write_kubeconfig(kubeconfig, str(kube.url).rstrip("/"))
            await post(kube, f"/api/v1/namespaces/{NAMESPACE}/secrets", credentials_secret(s3.access_key, s3.secret_key))
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith(("DSEL_", "AWS_"))},
                **s3.env(), "KUBECONFIG": str(kubeconfig), "DSEL_METRICS_PORT": "0",
                "DSEL_WORKER_IMAGE": "dsel-worker:bench", "PYTHONPATH": f"{ROOT}:{ROOT / 'operator'}",
                "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            }
            log = open(work / "operator.log", "wb")
            operator = subprocess.Popen(
                [sys.executable, "-m", "kopf", "run", "-m", "selection_operator", "--standalone",
                 "--namespace", NAMESPACE],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            )
            profiler = subprocess.Popen(  # samples the operator's threads without pausing them
                [str(PY_SPY), "record", "--pid", str(operator.pid), "--rate", "200",
                 "--nonblocking", "--threads", "--format", "raw", "--output", str(args.py_spy)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) if args.py_spy else None
            rss, lag = RssSampler(operator.pid), LoopLag()
            sampler = asyncio.create_task(rss.run())
            lagger = asyncio.create_task(lag.run())
            driver = StatusDriver(kube, s3, args.job_seconds)
            watches = driver.start(bucket)
            try:
                await wait_until(  # kopf's start-up: discovery, then its watches
                    lambda: ("operator", "WATCH", "dataselections") in kube.tally, 120, "the operator's watch")
                await asyncio.sleep(args.settle)
                idle_rss = rss.read("VmRSS")
                endpoint = s3.endpoint_url
                scenarios = [("wide", 1, args.shards), ("many", args.selections, args.many_shards)]
                for label, count, shards in scenarios:
                    names = [f"{label}-{i:03d}" for i in range(count)]
                    before = collections.Counter(kube.tally)
                    handled, lagged = len(kube.handling), len(lag.lags)
                    await asyncio.to_thread(lambda names=names: [driver.write_selection(n) for n in names])
                    cpu_before, bench_cpu_before = rss.cpu_seconds(), time.process_time()
                    started = time.monotonic()
                    for name in names:
                        await post(kube, f"/apis/dsel.dev/v1alpha1/namespaces/{NAMESPACE}/dataselections",
                                   selection(name, bucket, endpoint, shards))
                    await wait_until(lambda names=names: all(n in driver.succeeded for n in names), args.timeout,
                                     f"{count} selection(s) Succeeded")
                    seconds = time.monotonic() - started
                    await asyncio.sleep(1.0)  # let the last status writes land in the tally
                    cpu, bench_cpu = rss.cpu_seconds() - cpu_before, time.process_time() - bench_cpu_before
                    used = kube.tally - before
                    operator_requests = {k: v for k, v in used.items() if k[0] == "operator"}
                    jobs = [j for j in kube.live_objects("batch/v1/jobs", NAMESPACE)
                            if (j["metadata"].get("labels") or {}).get("dsel.dev/selection") in set(names)]
                    by_transition = driver.advances(names)
                    advances = [x for values in by_transition.values() for x in values]
                    results["scenarios"].append({
                        "label": label, "selections": count, "shards": shards, "seconds": seconds,
                        "jobs": len(jobs), "jobs_by_stage": dict(collections.Counter(
                            j["metadata"]["labels"]["dsel.dev/stage"] for j in jobs)),
                        "extract_completions": [driver.job_specs[(n, "extract")].get("completions") for n in names][:1],
                        "extract_mode": driver.job_specs[(names[0], "extract")].get("completionMode"),
                        "created_by_operator": {
                            f"{verb} {resource}": n for (_, verb, resource), n in operator_requests.items()
                            if verb == "POST"},
                        "requests_by_operator": sum(operator_requests.values()),
                        "requests_breakdown": {f"{verb} {resource}": n for (_, verb, resource), n
                                               in sorted(operator_requests.items())},
                        "advance_p50": percentile(advances, 0.5), "advance_p95": percentile(advances, 0.95),
                        "advance_max": max(advances), "advances": len(advances),
                        "by_transition": {k: [percentile(v, 0.5), percentile(v, 0.95), max(v), len(v)]
                                          for k, v in by_transition.items()},
                        "rss_peak": rss.peak, "operator_cpu_seconds": cpu, "bench_cpu_seconds": bench_cpu,
                        "emulator_answer_p50_p95_max": [
                            percentile(kube.handling[handled:], q) for q in (0.5, 0.95, 1.0)],
                        "bench_loop_lag_p95_max": [percentile(lag.lags[lagged:], q) for q in (0.95, 1.0)],
                    })
                    print(f"  {label}: {count} selection(s) x {shards} shards done in {seconds:.1f} s", flush=True)
                results["rss_idle"] = idle_rss
                results["rss_hwm"] = rss.read("VmHWM")
                results["rss_peak"] = rss.peak
            finally:
                for task in (*watches, sampler, lagger, *driver._tasks):
                    task.cancel()
                await asyncio.gather(*watches, sampler, lagger, *driver._tasks, return_exceptions=True)
                if profiler is not None:
                    profiler.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
                    profiler.wait(timeout=60)
                stop_process(operator, 20)
                log.close()
    results["log"] = str(work / "operator.log")
    return results


def table(results: dict, args, loads: tuple[float, float]) -> str:
    lines = [
        f"Operator scale on the API emulator (real operator process, status driver instead of pods, "
        f"Jobs complete {args.job_seconds:g} s after creation).",
        f"Machine: {os.cpu_count()} CPUs, load average {loads[0]:.1f} at start, {loads[1]:.1f} at end "
        "(shared with other jobs; the emulator and driver share the machine with the operator).",
        "",
        "| scenario | selections x shards | Jobs (by stage) | extract Job | wall s | phase advance p50 / p95 / max s "
        "| operator requests / selection | operator CPU s / selection | operator peak RSS MiB |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in results["scenarios"]:
        stages = ", ".join(f"{k} {v}" for k, v in sorted(row["jobs_by_stage"].items()))
        lines.append(
            f"| {row['label']} | {row['selections']} x {row['shards']} | {row['jobs']} ({stages}) | "
            f"{row['extract_mode']}, {row['extract_completions'][0]} completions | {row['seconds']:.1f} | "
            f"{row['advance_p50']:.2f} / {row['advance_p95']:.2f} / {row['advance_max']:.2f} | "
            f"{row['requests_by_operator'] / row['selections']:.1f} | "
            f"{row['operator_cpu_seconds'] / row['selections']:.2f} | {row['rss_peak'] / 2**20:.0f} |"
        )
    lines += ["", f"Operator RSS: {results['rss_idle'] / 2**20:.0f} MiB idle after start-up, peak "
              f"{results['rss_peak'] / 2**20:.0f} MiB (sampled), high-water mark {results['rss_hwm'] / 2**20:.0f} MiB.",
              ""]
    for row in results["scenarios"]:
        transitions = "; ".join(f"{k}: {a:.2f} / {b:.2f} / {c:.2f} (n={n})"
                                for k, (a, b, c, n) in row["by_transition"].items())
        lines.append(f"- {row['label']}: phase advance p50 / p95 / max s by transition: {transitions}")
        answer, lagging = row["emulator_answer_p50_p95_max"], row["bench_loop_lag_p95_max"]
        lines.append(f"  the emulator's answer time p50 / p95 / max: {answer[0] * 1000:.0f} / {answer[1] * 1000:.0f} / "
                     f"{answer[2] * 1000:.0f} ms; the bench process's event-loop lag p95 / max: "
                     f"{lagging[0] * 1000:.0f} / {lagging[1] * 1000:.0f} ms; its CPU (emulator and driver): "
                     f"{row['bench_cpu_seconds']:.1f} s")
    for row in results["scenarios"]:
        created = ", ".join(f"{k}: {v}" for k, v in sorted(row["created_by_operator"].items()))
        lines.append(f"- {row['label']}: objects the operator created (POST): {created}")
        per = ", ".join(f"{k} {v / row['selections']:.1f}" for k, v in row["requests_breakdown"].items())
        lines.append(f"  requests per selection: {per}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=1000, help="shards of the single wide selection")
    parser.add_argument("--selections", type=int, default=100, help="selections in flight together")
    parser.add_argument("--many-shards", type=int, default=16, help="shards of each of those selections")
    parser.add_argument("--job-seconds", type=float, default=0.5, help="how long each Job 'runs'")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds of quiet after the operator's watches start")
    parser.add_argument("--timeout", type=float, default=2400.0, help="per scenario, seconds")
    parser.add_argument("--output", type=Path, help="also write the table (markdown) here")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--py-spy", type=Path, help="sample the operator with py-spy (pip install py-spy) into "
                        "this file (collapsed stacks, all threads)")
    args = parser.parse_args(argv)
    if args.py_spy and not PY_SPY.exists():
        parser.error(f"--py-spy needs {PY_SPY} (pip install py-spy)")
    load_start = os.getloadavg()[0]
    results = asyncio.run(run(args))
    text = table(results, args, (load_start, os.getloadavg()[0]))
    publish(text, results, args.output, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
