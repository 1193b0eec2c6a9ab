"""Scaling out with Ray: `peftkit predict` in one process against `--engine ray` with 1 and 2 workers on the same
file, a two-node Ray cluster on one machine (blocks on both nodes), and `peftkit serve --engine ray` with 1 and 2
replicas under 16 concurrent clients.

    python benchmarks/scaling/run.py --out benchmarks/scaling/results/multilingual-e5-small_cpu.json

A segment bank (global + book, hotel, laptop LoRA r8 adapters, a few steps each: only their shapes and the work per
row matter here) is trained on the packaged reviews; the input is `--rows` real reviews with their platform. Every
run scores the same file and its rows are compared with the single-process rows. The Ray cluster is started before
the timed part (on a real cluster it is already running); its start-up is reported apart. Threads are matched:
the single process and the 1-worker pool use 2 torch threads, the 2-worker pool 1 thread per worker.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd

from peftkit.artifacts.manifest import package_versions
from peftkit.config import load_config
from peftkit.data import read_table
from peftkit.inference.ray_data import BankScorer, predict_ray
from peftkit.inference.table import predict_table
from peftkit.runtime import quiet_libraries
from peftkit.training.segments import train_bank

NODES_FILE = "nodes.txt"
LOCK = threading.Lock()
FIRST_ERROR: list[str] = []


class NodeRecordingScorer(BankScorer):
    """The scorer, appending the Ray node that answered each batch to a file (for the two-node run)."""

    def __call__(self, batch):
        import ray

        with open(self.options["nodes_file"], "a") as f:
            f.write(f"{ray.get_runtime_context().get_node_id()} {batch.num_rows}\n")
        return super().__call__(batch)


def make_bank(root: Path, model: str, steps: int, dtype: str) -> Path:
    cfg = load_config(
        None,
        {
            "model.name": model,
            "model.dtype": dtype,
            "method.name": "lora",
            "data.train": "builtin:reviews",
            "data.max_train_rows": 400,
            "data.max_eval_rows": 64,
            "data.max_length": 64,
            "segments.column": "platform",
            "segments.min_rows": 20,
            "train.max_steps": steps,
            "train.batch_size": 8,
            "output": str(root / "bank"),
        },
    )
    return train_bank(cfg, progress=False).output


def same_rows(ray_file: Path, expected: pd.DataFrame) -> dict:
    """Ray's rows against `peftkit predict`'s: exactly equal (floats to 1e-5 relative), and if not, whether every
    label and adapter is equal and how far the probabilities are (bf16 rounds differently with batch make-up)."""
    got = pd.read_parquet(ray_file)
    empty = [c for c in got if (c == "error" or c.endswith("_error")) and got[c].isna().all()]
    got, want = got.drop(columns=empty), expected.reset_index(drop=True)
    probs = [c for c in want if "prob_" in c]
    others = [c for c in want if c not in probs]
    out = {
        "same_columns": list(got.columns) == list(want.columns),
        "same_rows_count": len(got) == len(want),
        "labels_adapters_inputs_equal": bool(got[others].astype(str).equals(want[others].astype(str))),
        "max_abs_prob_diff": float((got[probs] - want[probs]).abs().max().max()) if probs else 0.0,
    }
    try:
        pd.testing.assert_frame_equal(got, want, check_dtype=False)
        out["identical"] = True
    except AssertionError:
        out["identical"] = False
    return out


def ray_start(*args: str) -> subprocess.Popen:
    """`ray start ARGS --block` in its own process group: stopped by `ray_stop` with everything it started, and
    nothing else (no `ray stop`, which would stop every Ray process on the machine)."""
    ray = str(Path(sys.executable).parent / "ray")
    cmd = [ray, "start", *args, "--block", "--disable-usage-stats"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    time.sleep(8)  # the node registers with the head
    return proc


def ray_stop(procs: list[subprocess.Popen]) -> None:
    for proc in reversed(procs):
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)


def scoring(bank: Path, data: Path, root: Path, rows_per_batch: int) -> dict:
    import ray
    import torch

    out: dict = {}
    single = {}
    for threads in (
        2,
        1,
    ):  # the single process at 2 torch threads, and at 1 (beside the 1-worker, 1-CPU pool)
        torch.set_num_threads(threads)
        t = time.perf_counter()
        expected = predict_table(str(data), bank=bank).frame
        single[threads] = time.perf_counter() - t
        out[f"single_process_{threads}_threads"] = {
            "seconds": round(single[threads], 2),
            "rows_per_s": round(len(expected) / single[threads], 1),
        }
    torch.set_num_threads(2)
    rows = out["rows"] = len(expected)
    for workers, cpus in ((1, 2), (2, 1), (1, 1)):
        t = time.perf_counter()
        ray.init(address="local", num_cpus=workers * cpus + 1, include_dashboard=False, log_to_driver=False)
        started = time.perf_counter() - t
        target = root / f"ray-{workers}x{cpus}.parquet"
        t = time.perf_counter()
        summary = predict_ray(
            str(data), target, bank=bank, workers=workers, cpus_per_worker=cpus, rows_per_batch=rows_per_batch
        )
        seconds = time.perf_counter() - t
        ray.shutdown()
        baseline = single[2 if workers * cpus == 2 else 1]
        out[f"ray_{workers}_worker_{cpus}_cpu"] = {
            "torch_threads_per_worker": cpus,
            "cluster_start_s": round(started, 2),
            "seconds": round(seconds, 2),
            "rows_per_s": round(rows / seconds, 1),
            "vs_single_process_same_threads": round(baseline / seconds, 3),
            "rows_written": summary["rows"],
            "rows_vs_single_process": same_rows(target, expected),
        }
        print(json.dumps(out[f"ray_{workers}_worker_{cpus}_cpu"]), file=sys.stderr, flush=True)
    return out, expected


def two_nodes(bank: Path, data: Path, root: Path, expected: pd.DataFrame) -> dict:
    """`ray start --head` plus a second `ray start --address` on this machine; which node answered each batch."""
    import ray

    port = 6390
    procs = [ray_start("--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false")]
    procs.append(ray_start(f"--address=127.0.0.1:{port}", "--num-cpus=1"))
    nodes_file = root / NODES_FILE
    nodes_file.write_text("")

    class Recording(NodeRecordingScorer):
        def __init__(self, options):
            super().__init__({**options, "nodes_file": str(nodes_file)})

    target = root / "ray-2-nodes.parquet"
    try:
        ray.init(address=f"127.0.0.1:{port}", log_to_driver=False)
        for _ in range(120):  # until the second node has registered
            if sum(n["Alive"] for n in ray.nodes()) == 2:
                break
            time.sleep(0.5)
        t = time.perf_counter()
        predict_ray(str(data), target, address=f"127.0.0.1:{port}", bank=bank, workers=2, cpus_per_worker=1,
                    scorer=Recording)  # fmt: skip
        seconds = time.perf_counter() - t
        alive = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    finally:
        ray.shutdown()
        ray_stop(procs)
    per_node: dict[str, int] = {}
    for line in nodes_file.read_text().splitlines():
        node, n = line.split()
        per_node[node] = per_node.get(node, 0) + int(n)
    return {
        "nodes": len(alive),
        "rows_per_node": {node[:12]: rows for node, rows in per_node.items()},
        "batches_on_both_nodes": len(per_node) == 2,
        "seconds": round(seconds, 2),
        "rows_vs_single_process": same_rows(target, expected),
    }


def serving(bank: Path, data: Path, clients: int, seconds: float) -> dict:
    """Ray Serve with 1 and 2 replicas: `clients` threads post /v1/score with 1-4 mixed-platform records each."""
    import ray
    from ray import serve

    from peftkit.inference.bank import AdapterBank
    from peftkit.inference.ray_serve import serve_ray

    frame = read_table(str(data)).head(400)
    rows = json.loads(frame.to_json(orient="records"))
    requests = [{"records": rows[i : i + 1 + i % 4]} for i in range(0, len(rows) - 4, 4)]
    offline = AdapterBank.open(bank)
    want = [
        [{q: s.to_json() for q, s in r.items()} for r in offline.score(req["records"])] for req in requests
    ]
    offline.close()
    out = {}
    for replicas in (1, 2):
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        port = 8123 + replicas
        serve_ray(
            bank,
            host="127.0.0.1",
            port=port,
            replicas=replicas,
            cpus_per_replica=2 / replicas,
            blocking=False,
        )
        url = f"http://127.0.0.1:{port}/v1/score"
        for _ in range(600):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).read()
                break
            except OSError:
                time.sleep(0.2)
        latencies, mismatches, errors, diffs = [], [0], [0], [0.0]
        stop = time.perf_counter() + seconds

        def client(
            k: int, stop=stop, latencies=latencies, mismatches=mismatches, errors=errors, diffs=diffs, url=url
        ) -> None:
            i = k
            while time.perf_counter() < stop:
                req = requests[i % len(requests)]
                t = time.perf_counter()
                raw = json.dumps(req).encode()
                r = urllib.request.Request(url, data=raw, headers={"Content-Type": "application/json"})
                try:
                    with urllib.request.urlopen(r, timeout=120) as resp:
                        body = json.loads(resp.read())
                except OSError as exc:
                    detail = exc.read().decode()[:300] if isinstance(exc, urllib.error.HTTPError) else ""
                    with LOCK:
                        errors[0] += 1
                        FIRST_ERROR.append(f"{exc} {detail}")
                    continue
                ms = 1000 * (time.perf_counter() - t)
                with LOCK:
                    latencies.append(ms)
                    same, diff = _compare(body["scores"], want[i % len(requests)])
                    mismatches[0] += not same
                    diffs[0] = max(diffs[0], diff)
                i += clients

        client(
            0, stop=time.perf_counter() + 5, latencies=[], mismatches=[0], errors=[0], diffs=[0.0]
        )  # warm-up
        stop = time.perf_counter() + seconds
        threads = [threading.Thread(target=client, args=(k, stop)) for k in range(clients)]
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        elapsed = time.perf_counter() - t
        serve.shutdown()
        ray.shutdown()
        out[f"{replicas}_replica"] = {
            "clients": clients,
            "requests": len(latencies),
            "requests_per_s": round(len(latencies) / elapsed, 2),
            "p50_ms": round(float(np.percentile(latencies, 50)), 1) if latencies else None,
            "p99_ms": round(float(np.percentile(latencies, 99)), 1) if latencies else None,
            "answers_with_a_label_adapter_or_segment_unlike_the_bank": mismatches[0],
            "max_abs_prob_diff_vs_the_bank": diffs[0],
            "failed_requests": errors[0],
            "first_error": FIRST_ERROR[0] if FIRST_ERROR else None,
        }
        print(json.dumps(out[f"{replicas}_replica"]), file=sys.stderr, flush=True)
    return out


def _compare(got: list[dict], want: list[dict]) -> tuple[bool, float]:
    """(every label, score, adapter, segment and error equal; the largest probability difference)."""
    same, diff = len(got) == len(want), 0.0
    for g, w in zip(got, want):
        for q in w:
            a, b = dict(g[q]), dict(w[q])
            pa, pb = a.pop("probabilities", None) or {}, b.pop("probabilities", None) or {}
            same = same and a == b and pa.keys() == pb.keys()
            diff = max([diff, *(abs(pa[k] - pb[k]) for k in pb if k in pa)])
    return same, diff


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="multilingual-e5-small")
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument(
        "--dtype", default="auto", help="the bank's dtype: auto (bf16 on CPUs with bf16 units), float32"
    )
    parser.add_argument("--rows-per-batch", type=int, default=512, help="rows per Ray Data batch")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: scoring,two_nodes,serving")
    args = parser.parse_args()
    quiet_libraries()
    # Ray 2.60 turns token authentication on for the clusters it starts (token in ~/.ray/auth_token); a node
    # joining with `ray start --address` and a driver connecting to it need token mode set explicitly.
    os.environ["RAY_AUTH_MODE"] = "token"
    skip = set(args.skip.split(","))
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bank = make_bank(root, args.model, args.steps, args.dtype)
        reviews = read_table("builtin:reviews").sample(args.rows, random_state=0)[["text", "platform"]]
        data = root / "reviews.csv"
        reviews.to_csv(data, index=False)
        result: dict = {
            "command": " ".join(["python", *sys.argv]),
            "model": args.model,
            "dtype": args.dtype,
            "rows_per_batch": args.rows_per_batch,
            "bank": "global + book, hotel, laptop LoRA r8 (peftkit train --segment-column platform)",
            "input": f"{args.rows} packaged reviews (text, platform), CSV",
            "cpu_count": os.cpu_count(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "versions": package_versions(),
        }
        expected = predict_table(str(data), bank=bank).frame
        if "scoring" not in skip:
            result["scoring"], expected = scoring(bank, data, root, args.rows_per_batch)
        if "two_nodes" not in skip:
            result["two_nodes"] = two_nodes(bank, data, root, expected)
            print(json.dumps(result["two_nodes"]), file=sys.stderr, flush=True)
        if "serving" not in skip:
            result["serving"] = serving(bank, data, args.clients, args.seconds)
        result["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    result["quiet"] = statistics.mean(result["loadavg_before"][:1] + result["loadavg_after"][:1]) < 2.5
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
