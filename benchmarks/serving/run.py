"""Hot-swap serving: adapter switch latency, a bank against loading base + adapter per request, a mixed-segment
batch against serial per-segment passes, and `peftkit serve` throughput at 1, 8 and 32 concurrent clients.

    python benchmarks/serving/run.py --out benchmarks/serving/results/smollm2-135m_lora-r8.json

Eight LoRA r8 adapters are trained for a few steps each on the packaged real reviews (their accuracy is not the
point here: only their shapes and the work per request are) and bundled into a bank. Every figure is measured in
this run, and the comparisons are ratios of two measurements taken here, one after the other, on the same machine.
The HTTP clients run on the same machine as the server and take CPU from it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

import peftkit
from peftkit.artifacts.manifest import package_versions
from peftkit.config import load_config
from peftkit.data import read_table
from peftkit.inference.bank import AdapterBank, build_bank
from peftkit.runtime import quiet_libraries
from peftkit.training.loop import train


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def train_adapters(root: Path, model: str, method: str, n: int) -> dict[str, Path]:
    """A global and `n` segment adapters, each a few optimizer steps on a different seeded subset of the reviews."""
    folders = {}
    for i in range(n + 1):
        name = "global" if i == 0 else f"seg{i}"
        cfg = load_config(
            None,
            {
                "model.name": model,
                "method.name": method,
                "data.train": "builtin:reviews",
                "data.text_column": "text",
                "data.label_column": "label",
                "data.max_train_rows": 64,
                "data.max_eval_rows": 32,
                "data.max_length": 64,
                "train.max_steps": 2,
                "train.batch_size": 8,
                "train.seed": i,
                "output": str(root / name),
            },
        )
        train(cfg, progress=False)
        folders[name] = root / name
        print(f"trained adapter {name}", file=sys.stderr, flush=True)
    return folders


def time_switches(bank: AdapterBank, names: list[str], n: int) -> list[float]:
    """Milliseconds per switch between loaded adapters (always to a different one)."""
    rng = random.Random(0)
    current, out = names[0], []
    bank.activate(current)
    for _ in range(n):
        nxt = rng.choice([x for x in names if x != current])
        t = time.perf_counter()
        bank.activate(nxt)
        out.append(1000 * (time.perf_counter() - t))
        current = nxt
    return out


def time_calls(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(1000 * (time.perf_counter() - t))
    return out


def serve_load(
    bank_dir: Path, texts: list[str], segments: list[str], clients: list[int], seconds: float
) -> list:
    """Requests/s and latency of a real `peftkit serve` process under `c` concurrent clients, one input each."""
    import socket
    import subprocess

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-c", "from peftkit.cli import main; main()", "serve", "--bank", str(bank_dir)]
    proc = subprocess.Popen([*cmd, "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(url + "/healthz", timeout=2).read()
                break
            except OSError:
                time.sleep(0.2)
        results = []
        for c in clients:
            latencies: list[float] = []
            lock = threading.Lock()
            stop = time.perf_counter() + seconds

            def client(seed: int, stop=stop, lock=lock, latencies=latencies) -> None:
                rng = random.Random(seed)
                while time.perf_counter() < stop:
                    body = json.dumps(
                        {"segment": rng.choice(segments), "inputs": [rng.choice(texts)]}
                    ).encode()
                    t = time.perf_counter()
                    urllib.request.urlopen(
                        urllib.request.Request(
                            url + "/v1/predict", data=body, headers={"Content-Type": "application/json"}
                        ),
                        timeout=120,
                    ).read()
                    with lock:
                        latencies.append(1000 * (time.perf_counter() - t))

            batches_before = json.loads(urllib.request.urlopen(url + "/healthz").read())["batches"]
            started = time.perf_counter()
            threads = [threading.Thread(target=client, args=(i,)) for i in range(c)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            elapsed = time.perf_counter() - started
            batches = json.loads(urllib.request.urlopen(url + "/healthz").read())["batches"] - batches_before
            row = {
                "clients": c,
                "requests": len(latencies),
                "requests_per_second": len(latencies) / elapsed,
                "latency_ms_p50": percentile(latencies, 50),
                "latency_ms_p99": percentile(latencies, 99),
                "requests_per_batch": len(latencies) / max(1, batches),
            }
            results.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
        return results
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--method", default="lora")
    p.add_argument("--adapters", type=int, default=8, help="segment adapters (a global one is added)")
    p.add_argument("--switches", type=int, default=500)
    p.add_argument("--naive-repeats", type=int, default=5)
    p.add_argument("--seconds", type=float, default=20.0, help="per client count in the server load test")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    quiet_libraries()
    import torch

    reviews = read_table("builtin:reviews")
    texts = reviews["text"].sample(n=256, random_state=0).tolist()
    figures: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folders = train_adapters(root / "adapters", args.model, args.method, args.adapters)
        bank_dir = build_bank(root / "bank", folders)
        names = list(folders)
        segments = names[1:]

        bank = AdapterBank.open(bank_dir, max_loaded=len(names), preload=True)
        switches = time_switches(bank, names, args.switches)
        figures["switch_ms"] = {
            "p50": percentile(switches, 50),
            "p99": percentile(switches, 99),
            "n": len(switches),
        }
        print(json.dumps(figures), file=sys.stderr, flush=True)

        # One request, one segment: the warm bank vs loading base + adapter for it, for a short search-query-like
        # text and for a review of up to max_length (64) tokens.
        short = min((t for t in texts if len(t) >= 6), key=len)
        long = max(texts, key=len)
        figures["one_request"] = {}
        for label, text in (("short_text", short), ("review_64_tokens", long)):
            bank_ms = time_calls(lambda text=text: bank.predict([text], ["seg1"]), 30)
            naive_ms = time_calls(
                lambda text=text: peftkit.load(str(bank_dir / "seg1")).predict([text]), args.naive_repeats
            )
            figures["one_request"][label] = {
                "tokens": len(bank.tokenizer(text, truncation=True, max_length=64)["input_ids"]),
                "bank_ms_median": statistics.median(bank_ms),
                "naive_reload_ms_median": statistics.median(naive_ms),
                "naive_over_bank": statistics.median(naive_ms) / statistics.median(bank_ms),
            }
        print(json.dumps(figures["one_request"]), file=sys.stderr, flush=True)

        # A batch holding rows of every segment: one mixed pass vs serial passes per segment.
        mixed = {}
        shorts = sorted((t for t in texts if len(t) >= 6), key=len)[: len(segments)]
        cases = {
            "8_short_texts": [(s, shorts[i]) for i, s in enumerate(segments)],
            "8_reviews": [(s, texts[i * 7]) for i, s in enumerate(segments)],
            "64_reviews": [
                (s, texts[(i * 7 + j) % len(texts)]) for i, s in enumerate(segments) for j in range(8)
            ],
        }
        for case, rows in cases.items():
            b_texts, b_segs = [t for _, t in rows], [s for s, _ in rows]

            def serial(b_texts=b_texts, b_segs=b_segs):
                for s in segments:
                    bank.predict([t for t, x in zip(b_texts, b_segs) if x == s], s)

            def per_row(b_texts=b_texts, b_segs=b_segs):
                for t, s in zip(b_texts, b_segs):
                    bank.predict([t], [s])

            def same_adapter(b_texts=b_texts):  # the bound: the same rows through one adapter, one batch
                bank.predict(b_texts, segments[0])

            one = time_calls(lambda b_texts=b_texts, b_segs=b_segs: bank.predict(b_texts, b_segs), 10)
            ser = time_calls(serial, 10)
            row = time_calls(per_row, 3 if len(rows) > 8 else 10)
            same = time_calls(same_adapter, 10)
            mixed[case] = {
                "rows": len(rows),
                "segments": len(set(b_segs)),
                "max_tokens": max(
                    len(bank.tokenizer(t, truncation=True, max_length=64)["input_ids"]) for t in b_texts
                ),
                "mixed_batch_ms_median": statistics.median(one),
                "one_adapter_batch_ms_median": statistics.median(same),
                "serial_per_segment_ms_median": statistics.median(ser),
                "serial_per_row_ms_median": statistics.median(row),
                "serial_per_segment_over_mixed": statistics.median(ser) / statistics.median(one),
                "serial_per_row_over_mixed": statistics.median(row) / statistics.median(one),
            }
            print(json.dumps({case: mixed[case]}), file=sys.stderr, flush=True)
        figures["mixed_batch"] = mixed
        bank.close()  # frees the model before the server process loads its own

        figures["server"] = serve_load(bank_dir, texts, segments, [1, 8, 32], args.seconds)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "command": "python " + " ".join(sys.argv),
        "model": args.model,
        "method": args.method,
        "adapters": args.adapters,
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.is_available(),
        },
        "versions": package_versions(),
        "figures": figures,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
