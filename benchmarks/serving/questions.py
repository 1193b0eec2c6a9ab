"""One process serving a bank of 4 questions x 3 segments over one base, against 4 one-question processes and against
one question alone: peak RSS, records/s for every question, per-record latency under concurrent clients, and the
identical-answers check.

    python benchmarks/serving/questions.py --out benchmarks/serving/results/questions_multilingual-e5-small.json

Four shopper questions (purchase intent: ordinal LoRA; churn: bottleneck; value segment: LoRA; conversion: prefix)
are trained on synthetic shoppers (`builtin:synth/<task>`, the recipes' template), each as a global adapter plus one
per platform (app, mini_program, web), a few optimizer steps each: their accuracy is not the point, only their shapes
and the work per record are. They are bundled with ``peftkit bank build``. Records are fresh synthetic shoppers
(another seed), a tenth of them without a search query (scored through the template's default).

Each configuration is a real ``peftkit serve`` process (or four), started alone and loaded with `clients` threads
that each send one record per request to ``/v1/score`` (to all four servers at once in the four-process setup, a
record's latency being the slowest of the four). Peak RSS is the server's ``VmHWM`` (summed over the four processes).
Every figure comes from this run; ratios compare two configurations measured one after the other on this machine.
The clients run on the same 2 cores as the servers.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

QUESTIONS = {  # question -> (synthetic task, method)
    "intent": ("purchase_intent", "lora"),
    "churn": ("churn", "bottleneck"),
    "value": ("value_segment", "lora"),
    "conversion": ("conversion", "prefix"),
}
FEATURES = [
    "user_id", "platform", "device", "tenure_days", "recency_days", "frequency_90d", "monetary_90d",
    "sessions_30d", "cart_adds_30d", "category_mix", "last_query", "chat", "review",
]  # fmt: skip


def train_questions(root: Path, model: str, steps: int) -> dict[str, Path]:
    """One one-question bank (global + a per-platform adapter) per question."""
    from peftkit.config import load_config
    from peftkit.data.synth import SYNTH_TASKS
    from peftkit.training.segments import train_bank

    banks = {}
    for name, (task, method) in QUESTIONS.items():
        spec = SYNTH_TASKS[task]  # the recipes' template: the same record fields for every question
        cfg = load_config(
            None,
            {
                "task": spec.task,
                "data.label_column": spec.label_column,
                "data.labels": spec.labels,
                "model.name": model,
                "method.name": method,
                "data.train": f"builtin:synth/{task}?rows=480&seed=0",
                "data.template": spec.template,
                "data.max_eval_rows": 48,
                "data.max_length": 128,
                "train.max_steps": steps,
                "train.batch_size": 8,
                "segments.column": "platform",
                "segments.min_rows": 20,
                "output": str(root / name),
            },
        )
        banks[name] = train_bank(cfg, progress=False).output
        print(f"trained question {name} ({method})", file=sys.stderr, flush=True)
    return banks


def records(n: int) -> list[dict]:
    from peftkit.data.synth import synthesize

    frame = synthesize("churn", n, seed=1)[FEATURES]
    frame.loc[frame.index % 10 == 0, "last_query"] = None  # new users: no search yet
    return json.loads(frame.to_json(orient="records"))


class Server:
    """A real `peftkit serve` process."""

    def __init__(self, bank: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        cmd = [sys.executable, "-c", "from peftkit.cli import main; main()", "serve", "--bank", str(bank)]
        self.proc = subprocess.Popen(
            [*cmd, "--port", str(self.port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        for _ in range(1200):
            try:
                urllib.request.urlopen(f"{self.url}/healthz", timeout=2).read()
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"peftkit serve --bank {bank} exited with {self.proc.returncode}"
                    ) from None
                time.sleep(0.25)
        raise RuntimeError("server did not start")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def score(self, recs: list[dict], questions: list[str] | None = None) -> list[dict]:
        body = json.dumps({"records": recs, "questions": questions}).encode()
        req = urllib.request.Request(
            f"{self.url}/v1/score", data=body, headers={"Content-Type": "application/json"}
        )
        return json.loads(urllib.request.urlopen(req, timeout=300).read())["scores"]

    def memory(self) -> dict[str, int]:
        status = Path(f"/proc/{self.proc.pid}/status").read_text().splitlines()
        fields = dict(line.split(":", 1) for line in status if ":" in line)
        return {key: int(fields[key].split()[0]) * 1024 for key in ("VmRSS", "VmHWM")}

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


def load(servers: list[Server], recs: list[dict], clients: int, names: list[str] | None = None) -> dict:
    """Every record sent by `clients` threads to every server at once; records/s and per-record latency.

    ``names``: the question each server answers, for one-question banks (which call their question ``default``).
    """
    queue = list(range(len(recs)))
    lock = threading.Lock()
    latencies: list[float] = []
    answers: dict[int, dict] = {}

    def client() -> None:
        with ThreadPoolExecutor(len(servers)) as fan:
            while True:
                with lock:
                    if not queue:
                        return
                    i = queue.pop()
                t = time.perf_counter()
                parts = list(fan.map(lambda s, i=i: s.score([recs[i]])[0], servers))
                if names is not None:
                    parts = [{names[k]: part["default"]} for k, part in enumerate(parts)]
                merged = {q: a for part in parts for q, a in part.items()}
                with lock:
                    latencies.append(1000 * (time.perf_counter() - t))
                    answers[i] = merged

    for s in servers:  # warm-up: adapters loaded, first batches run
        s.score(recs[:4])
    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    elapsed = time.perf_counter() - started
    memory = [s.memory() for s in servers]
    return {
        "processes": len(servers),
        "records": len(recs),
        "clients": clients,
        "seconds": elapsed,
        "records_per_s": len(recs) / elapsed,
        "latency_ms_p50": float(np.percentile(latencies, 50)),
        "latency_ms_p99": float(np.percentile(latencies, 99)),
        "peak_rss_bytes": sum(m["VmHWM"] for m in memory),
        "rss_after_bytes": sum(m["VmRSS"] for m in memory),
        "answers": [answers[i] for i in range(len(recs))],
    }


def same(a: dict, b: dict, tol: float = 1e-5) -> bool:
    """Two answers to one question for one record: same label (or score), adapter, and probabilities within tol."""
    if "error" in a or "error" in b:
        return a.get("error") == b.get("error")
    if a.get("label") != b.get("label") or a.get("adapter") != b.get("adapter"):
        return False
    if "score" in a:
        return abs(a["score"] - b["score"]) <= tol
    return prob_gap(a, b) <= tol


def prob_gap(a: dict, b: dict) -> float:
    """The largest difference between two answers' class probabilities (or scores)."""
    if "score" in a:
        return abs(a["score"] - b["score"])
    return max(abs(a["probabilities"][k] - b["probabilities"][k]) for k in a["probabilities"])


def agreement(x: list[dict], y: list[dict]) -> dict:
    """How two runs' answers to the same records compare: exactly equal (within 1e-5), same label and adapter, and
    the largest probability gap. Requests batched with different neighbours pad differently, which moves a bf16
    base's outputs in the last digits; labels are the answer a caller acts on."""
    pairs = [(a[q], b[q]) for a, b in zip(x, y) for q in QUESTIONS]
    labels = [a.get("label") == b.get("label") and a.get("adapter") == b.get("adapter") for a, b in pairs]
    return {
        "answers": len(pairs),
        "equal_within_1e-5": sum(same(a, b) for a, b in pairs),
        "same_label_and_adapter": sum(labels),
        "max_probability_gap": max(prob_gap(a, b) for a, b in pairs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="multilingual-e5-small")
    parser.add_argument("--records", type=int, default=240)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per adapter")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--work",
        type=Path,
        help="keep the trained questions here and reuse them on the next run (default: a temp dir)",
    )
    args = parser.parse_args()

    from peftkit.artifacts.manifest import package_versions
    from peftkit.inference.bank import AdapterBank
    from peftkit.inference.bank_build import build_questions
    from peftkit.runtime import quiet_libraries

    quiet_libraries()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.work or Path(tmp)
        if (root / "shop").exists():
            banks = {name: root / "questions" / name for name in QUESTIONS}
        else:
            banks = train_questions(root / "questions", args.model, args.steps)
            build_questions(root / "shop", banks)
        shop = root / "shop"
        base_dtype = json.loads((shop / "bank.json").read_text())["dtype"]
        recs = records(args.records)

        # Offline: every record and question from the bank of questions equals its own one-question bank's answer.
        together = AdapterBank.open(shop).score(recs)
        offline_equal = 0
        for name, folder in banks.items():
            alone = AdapterBank.open(folder).score(recs)
            offline_equal += sum(
                same(t[name].to_json(), a["default"].to_json()) for t, a in zip(together, alone)
            )
        cold = sum(1 for r in recs if r["last_query"] is None)
        cold_answered = sum(
            1
            for r, t in zip(recs, together)
            if r["last_query"] is None and all(s.error is None for s in t.values())
        )
        print(f"offline identical: {offline_equal}/{len(recs) * len(banks)}", file=sys.stderr, flush=True)

        runs = {}
        for label, folders, names in (
            ("one_question", [banks["intent"]], ["intent"]),
            ("bank_of_4_questions", [shop], None),
            ("four_processes", list(banks.values()), list(banks)),
        ):
            servers = [Server(f) for f in folders]
            try:
                load_before = os.getloadavg()[0]  # the machine should be quiet: other jobs distort the ratios
                runs[label] = load(servers, recs, args.clients, names)
                runs[label]["load_average_1min_before"] = load_before
            finally:
                for s in servers:
                    s.stop()
            r = runs[label]
            print(
                f"{label}: {r['records_per_s']:.1f} records/s, p50 {r['latency_ms_p50']:.0f} ms, "
                f"p99 {r['latency_ms_p99']:.0f} ms, peak RSS {r['peak_rss_bytes'] / 2**20:.0f} MiB",
                file=sys.stderr,
                flush=True,
            )

    offline_json = [{q: s.to_json() for q, s in record.items()} for record in together]
    http_vs_split = agreement(runs["bank_of_4_questions"]["answers"], runs["four_processes"]["answers"])
    http_vs_offline = agreement(runs["bank_of_4_questions"]["answers"], offline_json)
    one = runs["one_question"]
    result = {
        "command": "python benchmarks/serving/questions.py " + " ".join(sys.argv[1:]),
        "model": args.model,
        "base_dtype": base_dtype,
        "questions": {q: {"task": t, "method": m} for q, (t, m) in QUESTIONS.items()},
        "segments": ["app", "mini_program", "web"],
        "steps_per_adapter": args.steps,
        "records": args.records,
        "clients": args.clients,
        "runs": {k: {kk: vv for kk, vv in v.items() if kk != "answers"} for k, v in runs.items()},
        "rss_ratio_vs_one_question": {
            k: runs[k]["peak_rss_bytes"] / one["peak_rss_bytes"]
            for k in ("bank_of_4_questions", "four_processes")
        },
        "identical_answers": {
            "offline_bank_vs_each_question_alone": f"{offline_equal}/{len(recs) * len(banks)}",
            "http_bank_vs_four_processes": http_vs_split,
            "http_bank_vs_offline_bank": http_vs_offline,
        },
        "cold_start_records": {"without_last_query": cold, "answered_for_every_question": cold_answered},
        "machine": {"cpus": len(os.sched_getaffinity(0)), "versions": package_versions()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("rss_ratio_vs_one_question", "identical_answers")}, indent=2))


if __name__ == "__main__":
    main()
