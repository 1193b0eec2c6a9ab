"""Ray: `peftkit predict --engine ray` writes exactly `peftkit predict`'s rows (one CSV file, a folder of Parquet
partitions, a worker killed mid-run), and `peftkit serve --engine ray` answers exactly as the bank does for mixed
segments from 16 concurrent clients, and keeps answering after a replica is killed.

One local Ray (`ray.init(num_cpus=2)`) is started for the module and shut down at its end.
"""

from __future__ import annotations

import builtins
import json
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from peftkit.cli import app
from peftkit.config import load_config
from peftkit.inference.bank import AdapterBank
from peftkit.inference.bank_build import build_questions
from peftkit.inference.table import predict_table
from peftkit.training.loop import train
from peftkit.training.segments import train_bank
from tests.conftest import free_port, intent_rows

ray = pytest.importorskip("ray", reason="the ray extra is not installed: pip install 'peftkit[ray]'")

runner = CliRunner()


def users(n: int, seed: int = 0) -> pd.DataFrame:
    """Records with an ``orders`` count that is empty for every fifth user and a leading-zero ``user_id``."""
    rows = intent_rows(n, seed)
    rows["orders"] = ["" if i % 5 == 0 else str(i % 7) for i in range(n)]
    rows["user_id"] = [f"{i:05d}" for i in range(n)]  # "00007" must stay text, as peftkit predict reads it
    return rows


@pytest.fixture(scope="module")
def shop(tiny_models, tmp_path_factory) -> dict[str, Path]:
    """Two questions on the tiny BERT: an ordinal LoRA read through a template with a default, and a LoRA
    segment bank by platform; and the bank of both."""
    root = tmp_path_factory.mktemp("shop")
    data = root / "users.csv"
    users(120).to_csv(data, index=False)
    common = {
        "model.name": str(tiny_models["bert"]),
        "data.train": str(data),
        "train.max_steps": 4,
        "train.batch_size": 8,
        "method.name": "lora",
    }
    intent = train(
        load_config(
            None,
            {
                **common,
                "task": "ordinal",
                "data.labels": ["weak", "medium", "strong"],
                "data.template": "orders {orders|0}: {text}",
                "output": str(root / "intent"),
            },
        ),
        progress=False,
    ).output
    tone = train_bank(
        load_config(
            None,
            {**common, "segments.column": "platform", "segments.min_rows": 10, "output": str(root / "tone")},
        ),
        progress=False,
    ).output
    return {
        "intent": intent,
        "tone": tone,
        "bank": build_questions(root / "shop", {"intent": intent, "tone": tone}),
        "root": root,
    }


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    try:
        from ray import serve

        serve.shutdown()
    finally:
        ray.shutdown()


def records(n: int, seed: int) -> pd.DataFrame:
    rows = users(n, seed).drop(columns=["label", "score"])
    rows.loc[3, "text"] = None  # a record that cannot be answered: its error, the others answered
    rows.loc[4, "platform"] = "tablet"  # no adapter: the fallback answers
    return rows


def same_rows(ray_frame: pd.DataFrame, expected: pd.DataFrame) -> None:
    """Ray's output equals predict_table's once its always-present error columns are dropped where all empty."""
    empty = [c for c in ray_frame if (c == "error" or c.endswith("_error")) and ray_frame[c].isna().all()]
    got = ray_frame.drop(columns=empty)
    assert list(got.columns) == list(expected.columns)
    pd.testing.assert_frame_equal(
        got.reset_index(drop=True), expected.reset_index(drop=True), check_dtype=False
    )


def test_ray_rows_equal_peftkit_predict_on_one_csv(shop, local_ray, tmp_path):
    from peftkit.inference.ray_data import predict_ray

    data = tmp_path / "records.csv"
    records(300, seed=1).to_csv(data, index=False)
    expected = predict_table(str(data), bank=shop["bank"]).frame
    assert "intent_error" in expected and expected["user_id"].iloc[7] == "00007"
    summary = predict_ray(
        str(data), tmp_path / "scores.parquet", bank=shop["bank"], workers=2, cpus_per_worker=0.5
    )
    assert summary["rows"] == 300 and summary["rows_with_errors"] == 1
    same_rows(pd.read_parquet(tmp_path / "scores.parquet"), expected)


def test_one_question_bank_to_csv_through_the_cli(shop, local_ray, tmp_path):
    data = tmp_path / "records.csv"
    records(80, seed=2).to_csv(data, index=False)
    expected = predict_table(str(data), bank=shop["tone"]).frame
    out = tmp_path / "scores.csv"
    result = runner.invoke(
        app,
        ["predict", "--bank", str(shop["tone"]), "--data", str(data), "--output", str(out), "--engine", "ray",
         "--workers", "1", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["rows"] == 80
    got = pd.read_csv(out, dtype=str, keep_default_na=False, na_values=[""])
    want = expected.astype(str).where(expected.notna(), None)
    same_rows(
        got, pd.read_csv(_csv(want, tmp_path / "want.csv"), dtype=str, keep_default_na=False, na_values=[""])
    )


def _csv(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_csv(path, index=False)
    return path


def test_folder_of_parquet_partitions_with_a_worker_killed_mid_run(shop, local_ray, tmp_path):
    from peftkit.inference.ray_data import BankScorer, predict_ray

    parts = tmp_path / "users"
    parts.mkdir()
    frames = [records(90, seed=10 + i) for i in range(4)]
    for i, frame in enumerate(frames):
        frame.to_parquet(parts / f"part-{i}.parquet", index=False)
    expected = pd.concat(
        [predict_table(str(parts / f"part-{i}.parquet"), bank=shop["bank"]).frame for i in range(4)],
        ignore_index=True,
    )
    marker = tmp_path / "killed"

    class Dying(BankScorer):
        def __call__(self, batch):
            # the second batch of the run kills its worker, once: Ray restarts it and answers the batch again
            calls = tmp_path / f"calls-{os.getpid()}"
            calls.write_text(str(int(calls.read_text()) + 1 if calls.exists() else 1))
            if int(calls.read_text()) == 2 and not marker.exists():
                marker.write_text(str(os.getpid()))
                os._exit(1)
            return super().__call__(batch)

    summary = predict_ray(
        str(parts), tmp_path / "scores", bank=shop["bank"], workers=2, cpus_per_worker=0.5, rows_per_batch=40,
        rows_per_file=200, scorer=Dying,
    )  # fmt: skip
    assert marker.exists(), "no worker was killed"
    assert summary["rows"] == 360 and summary["files"] == 4
    written = sorted((tmp_path / "scores").iterdir())
    assert [p.name for p in written] == ["part-00000.parquet", "part-00001.parquet"]
    same_rows(pd.concat([pq.read_table(p).to_pandas() for p in written], ignore_index=True), expected)


def test_one_adapter_with_a_template_given_on_the_command_line(shop, local_ray, tmp_path):
    from peftkit.inference.ray_data import predict_ray
    from peftkit.inference.table import TextSpec

    data = tmp_path / "records.csv"
    records(120, seed=4).to_csv(data, index=False)
    template = "{text} / {orders|none}"
    expected = predict_table(str(data), adapter=shop["intent"], text=TextSpec(template=template)).frame
    predict_ray(str(data), tmp_path / "o.parquet", adapter=shop["intent"], template=template, workers=1)
    same_rows(pd.read_parquet(tmp_path / "o.parquet"), expected)


def test_unreachable_address_is_one_line(shop, tmp_path):
    data = tmp_path / "r.csv"
    records(10, seed=3).to_csv(data, index=False)
    result = runner.invoke(
        app,
        ["predict", "--bank", str(shop["bank"]), "--data", str(data), "--output", str(tmp_path / "o.parquet"),
         "--engine", "ray", "--address", f"127.0.0.1:{free_port()}"],
    )  # fmt: skip
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "no Ray cluster answers" in result.stderr
    assert "Traceback" not in result.output


def test_missing_extra_names_the_install(monkeypatch, tmp_path):
    real = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real(name, *args, **kwargs)

    data = tmp_path / "r.csv"
    records(10, seed=3).to_csv(data, index=False)
    monkeypatch.setattr(builtins, "__import__", no_ray)
    result = runner.invoke(
        app,
        ["predict", "--bank", str(tmp_path), "--data", str(data), "--output", str(tmp_path / "o.parquet"),
         "--engine", "ray"],
    )  # fmt: skip
    assert result.exit_code == 2
    assert (
        result.stderr == "error: --engine ray needs Ray, which is not installed: pip install 'peftkit[ray]'\n"
    )
    result = runner.invoke(app, ["serve", "--bank", str(tmp_path), "--engine", "ray"])
    assert result.exit_code == 2 and "pip install 'peftkit[ray]'" in result.stderr


# -- Ray Serve -----------------------------------------------------------------------------------------------------


def post(url: str, path: str, payload: dict, tries: int = 1) -> tuple[int, dict]:
    """POST JSON; with `tries` > 1 a connection error or a 5xx is retried, as a client of a cluster would."""
    raw = json.dumps(payload).encode()
    for attempt in range(tries):
        req = urllib.request.Request(url + path, data=raw, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            if err.code < 500 or attempt == tries - 1:
                return err.code, json.loads(err.read() or b"{}")
        except OSError:
            if attempt == tries - 1:
                raise
        time.sleep(0.5)
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def ray_server(shop, local_ray):
    from ray import serve

    from peftkit.inference.ray_serve import serve_ray

    port = free_port()
    serve_ray(shop["bank"], host="127.0.0.1", port=port, replicas=2, cpus_per_replica=0.5, blocking=False)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=5) as resp:
                if resp.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    yield url
    serve.shutdown()


def mixed_requests(n: int) -> list[dict]:
    """`n` /v1/score requests of 1-4 records, their platforms mixed (app, web, and tablet: the fallback)."""
    frame = records(4 * n, seed=7)
    rows = json.loads(frame.to_json(orient="records"))
    return [{"records": rows[i * 4 : i * 4 + 1 + i % 4]} for i in range(n)]


def expected_scores(shop, requests: list[dict]) -> list[list[dict]]:
    bank = AdapterBank.open(shop["bank"])
    return [[{q: s.to_json() for q, s in r.items()} for r in bank.score(req["records"])] for req in requests]


def same_scores(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.keys() == w.keys()
        for q in w:
            probs = w[q].pop("probabilities", None)
            got_probs = g[q].pop("probabilities", None)
            assert g[q] == w[q]  # label, adapter, segment, error: exactly
            if probs is not None:
                assert got_probs.keys() == probs.keys()
                assert all(abs(got_probs[k] - probs[k]) < 1e-5 for k in probs)


def test_ray_serve_answers_as_the_bank_for_16_concurrent_clients(shop, ray_server):
    requests = mixed_requests(48)
    want = expected_scores(shop, requests)
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda r: post(ray_server, "/v1/score", r), requests))
    for (status, body), expected in zip(answers, want):
        assert status == 200, body
        same_scores(body["scores"], expected)
    status, body = post(ray_server, "/v1/predict", {"question": "tone", "items": [
        {"segment": "web", "input": "great value 1"}, {"segment": "app", "input": "too slow 2"}]})  # fmt: skip
    assert status == 200 and [p["segment"] for p in body["predictions"]] == ["web", "app"]
    assert post(ray_server, "/v1/predict", {"question": "nope", "inputs": ["x"]})[0] == 422


def test_ray_serve_adapter_added_at_runtime_reaches_the_replicas(shop, ray_server):
    payload = {"name": "web-v2", "path": "tone/web", "segments": ["kiosk"], "question": "tone"}
    status, body = post(ray_server, "/v1/adapters", payload)
    assert status == 201, body
    record = {"text": "great value 9", "platform": "kiosk"}
    want = AdapterBank.open(shop["bank"]).score([{**record, "platform": "web"}], ["tone"])[0]["tone"]
    for _ in range(4):
        status, body = post(ray_server, "/v1/score", {"records": [record], "questions": ["tone"]})
        assert status == 200, body
        got = body["scores"][0]["tone"]
        assert (got["adapter"], got["label"]) == ("web-v2", want.label)
        assert all(abs(got["probabilities"][k] - p) < 1e-5 for k, p in want.probabilities.items())


def test_ray_serve_keeps_answering_after_a_replica_is_killed(shop, ray_server):
    requests = mixed_requests(64)
    want = expected_scores(shop, requests)
    replicas = [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["namespace"] == "serve" and "BankModel" in a["name"]
    ]
    assert len(replicas) == 2, replicas
    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(post, ray_server, "/v1/score", r, 5) for r in requests]
        time.sleep(1.0)  # under load
        ray.kill(ray.get_actor(replicas[0], namespace="serve"), no_restart=True)
        answers = [f.result() for f in futures]
    for (status, body), expected in zip(answers, want):
        assert status == 200, body
        same_scores(body["scores"], expected)
    status, body = post(ray_server, "/v1/score", requests[0], tries=5)  # and after it
    assert status == 200
