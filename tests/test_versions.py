"""Adapter versions on a tiny bank: a bank from before versions opens and answers as before and its folder becomes v1;
promote then rollback gives back the exact logits; a promote killed (SIGKILL) at each step leaves the bank answering as
before or as after, and runs again; the history records every move; canary routing is deterministic by key and near
its share; a served bank follows promotions and rollbacks under 16 client threads, no request failing or mixing
versions; /metrics is Prometheus text and canary-report reads it."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from peftkit.artifacts import versions as v
from peftkit.artifacts.names import BANK_FILE
from peftkit.cli import app
from peftkit.errors import PeftkitError
from peftkit.inference.bank import AdapterBank
from peftkit.training.segments import train_bank
from tests.conftest import free_port
from tests.test_bank import TEXTS, bank_cfg

runner = CliRunner()
APP = ["app"] * len(TEXTS)


@pytest.fixture(scope="module")
def trained(tiny_models, tmp_path_factory) -> Path:
    """A one-question bank from before versions: global, app and web adapters on the tiny Llama (LoRA)."""
    return train_bank(bank_cfg(tiny_models, tmp_path_factory.mktemp("versions")), progress=False).output


@pytest.fixture(scope="module")
def reference(trained) -> dict[str, np.ndarray]:
    """Each adapter's logits on TEXTS, from the untouched bank."""
    bank = AdapterBank.open(trained)
    return {n: bank.logits(TEXTS, [n] * len(TEXTS)) for n in ("global", "app", "web")}


@pytest.fixture
def bank(trained, tmp_path) -> Path:
    return Path(shutil.copytree(trained, tmp_path / "bank"))


def _logits(folder: Path, adapter: str = "app") -> np.ndarray:
    return AdapterBank.open(folder).logits(TEXTS, [adapter] * len(TEXTS))


def test_a_bank_from_before_versions_answers_as_before_and_its_folder_becomes_v1(bank, reference):
    before = (bank / BANK_FILE).read_text()
    opened = AdapterBank.open(bank)
    preds = opened.predict(TEXTS, "app")
    assert all(p.version is None for p in preds) and "version" not in opened.predict_columns(TEXTS, "app")
    assert v.versions(bank, "app") == [1] and v.production(bank, "app") == 1
    assert (bank / BANK_FILE).read_text() == before  # opening moves nothing

    assert v.add_version(bank, "app", bank / "web", reason="web's weights as app v2") == 2
    entry = json.loads((bank / BANK_FILE).read_text())["adapters"]["app"]
    assert entry["version"] == 1 and entry["path"] == "versions/app/v1"
    assert (bank / "app" / "peftkit.json").is_file()  # the old folder stays until prune
    assert v.versions(bank, "app") == [1, 2] and v.production(bank, "app") == 1
    np.testing.assert_array_equal(_logits(bank), reference["app"])  # v1 is the same weights
    assert {p.version for p in AdapterBank.open(bank).predict(TEXTS, "app")} == {"app@v1"}
    assert [(h["action"], h["to"]) for h in v.history(bank)] == [("add", 1), ("add", 2)]


def test_promote_then_rollback_restores_the_exact_answers(bank, reference):
    v.add_version(bank, "app", bank / "web")
    v.add_version(bank, "app", bank / "global")
    v.promote(bank, "app", 2, reason="try web", report={"accuracy": 0.9})
    np.testing.assert_array_equal(_logits(bank), reference["web"])
    v.promote(bank, "app", 3)
    np.testing.assert_array_equal(_logits(bank), reference["global"])
    assert v.rollback(bank, "app", reason="worse") == {"app": (3, 2)}
    np.testing.assert_array_equal(_logits(bank), reference["web"])
    assert v.rollback(bank) == {"app": (2, 1)}
    np.testing.assert_array_equal(_logits(bank), reference["app"])
    with pytest.raises(PeftkitError, match="nothing to roll back"):
        v.rollback(bank, "app")
    moves = [(h["action"], h["adapter"], h["from"], h["to"]) for h in v.history(bank)]
    assert moves[3:] == [
        ("promote", "app", 1, 2),
        ("promote", "app", 2, 3),
        ("rollback", "app", 3, 2),
        ("rollback", "app", 2, 1),
    ]
    promoted = v.history(bank)[3]
    assert promoted["reason"] == "try web" and promoted["report"] == {"accuracy": 0.9}
    assert promoted["user"] and promoted["time"].endswith("+00:00")
    with pytest.raises(PeftkitError, match="its versions: v1, v2, v3"):
        v.promote(bank, "app", 9)
    with pytest.raises(PeftkitError, match="its adapters: global, app, web"):
        v.promote(bank, "shop", 1)


_KILLED = """
import os, signal, sys
from pathlib import Path
from peftkit.artifacts import versions as v
step = sys.argv[2]
v.STEP = lambda s: os.kill(os.getpid(), signal.SIGKILL) if s == step else None
v.promote(Path(sys.argv[1]), "app", 2, reason="killed")
"""


@pytest.mark.parametrize("step", ["pending", "written"])
def test_a_killed_promote_leaves_before_or_after_and_runs_again(bank, reference, step):
    v.add_version(bank, "app", bank / "web")
    child = subprocess.run([sys.executable, "-c", _KILLED, str(bank), step], capture_output=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-2000:]
    after = step == "written"
    np.testing.assert_array_equal(_logits(bank), reference["web" if after else "app"])
    assert [h["action"] for h in v.history(bank)].count("promote") == int(after)
    v.promote(bank, "app", 2, reason="again")  # the command runs again: done, or a no-op when it was done
    np.testing.assert_array_equal(_logits(bank), reference["web"])
    promotes = [h for h in v.history(bank) if h["action"] == "promote"]
    assert len(promotes) == 1 and promotes[0]["reason"] == ("killed" if after else "again")
    lines = [json.loads(line) for line in (bank / v.HISTORY).read_text().splitlines()]
    assert all(
        r["status"] != "pending" or any(o["id"] == r["id"] and o is not r for o in lines) for r in lines
    )


def test_a_killed_first_add_keeps_the_old_bank_answering(bank, reference):
    script = _KILLED.replace(
        'v.promote(Path(sys.argv[1]), "app", 2, reason="killed")',
        "v.add_version(Path(sys.argv[1]), 'app', Path(sys.argv[1]) / 'web')",
    )
    child = subprocess.run(
        [sys.executable, "-c", script, str(bank), "copied"], capture_output=True, timeout=120
    )
    assert child.returncode == -signal.SIGKILL
    assert "version" not in json.loads((bank / BANK_FILE).read_text())["adapters"]["app"]
    np.testing.assert_array_equal(_logits(bank), reference["app"])
    assert v.add_version(bank, "app", bank / "global") == 3  # the killed run's v2 is whole and kept
    assert [(h["action"], h["to"]) for h in v.history(bank)] == [("add", 1), ("add", 2), ("add", 3)]


def test_prune_keeps_production_canary_and_the_rollback_path(bank):
    for source in ("web", "global", "web", "global"):
        v.add_version(bank, "app", bank / source)  # v2..v5
    v.promote(bank, "app", 2)
    v.promote(bank, "app", 3)
    v.set_canary(bank, "app", 4, share=0.2, key_column="user_id")
    assert v.prune(bank, keep=1) == {
        "app": [1]
    }  # kept: v5 newest, v3 production, v4 canary, v2 next rollback
    assert v.versions(bank, "app") == [2, 3, 4, 5] and not (bank / "app").exists()
    assert v.rollback(bank, "app") == {"app": (3, 2)}
    assert v.history(bank)[-2]["action"] == "retire" and v.history(bank)[-2]["from"] == 1


def test_canary_routing_is_deterministic_by_key_and_near_its_share(bank, reference):
    v.add_version(bank, "app", bank / "web")
    v.set_canary(bank, "app", 2, share=0.25, key_column="user_id")
    opened = AdapterBank.open(bank)
    records = [{"text": TEXTS[i % 6], "platform": "app", "user_id": i} for i in range(2000)]
    keys = [u.adapter for u in opened.plan(records).units]
    assert set(keys) == {"app@v1", "app@v2"}
    assert abs(keys.count("app@v2") / len(keys) - 0.25) < 0.03
    assert keys == [
        u.adapter for u in AdapterBank.open(bank).plan(records).units
    ]  # the same in a new process
    assert keys == ["app@v2" if v.in_canary(i, 0.25) else "app@v1" for i in range(2000)]
    assert {u.adapter for u in opened.plan([{"text": "x", "platform": "app"}] * 5).units} == {"app@v1"}
    scores = opened.score(records[:12])
    for record, got in zip(records, scores):
        want = reference["web" if got["default"].version == "app@v2" else "app"][TEXTS.index(record["text"])]
        assert got["default"].adapter == "app"
        assert max(got["default"].probabilities.values()) == pytest.approx(
            float(np.max(np.exp(want) / np.exp(want).sum())), abs=1e-5
        )
    v.clear_canary(bank, "app")
    assert "canary" not in json.loads((bank / BANK_FILE).read_text())["adapters"]["app"]
    assert [h["to"] for h in v.history(bank) if h["action"] == "canary"] == [2, None]


def test_cli_history_promote_rollback_canary_prune(bank):
    def ok(*args):
        result = runner.invoke(app, ["bank", *map(str, args)])
        assert result.exit_code == 0, result.output
        return result.stdout

    v.add_version(bank, "app", bank / "web")
    assert "v1 -> v2" in ok("promote", bank, "app@v2", "--reason", "cli")
    assert "v2 -> v1" in ok("rollback", bank, "--all")
    assert "25%" in ok("canary", bank, "app@v2", "--share", "0.25", "--key-column", "user_id")
    assert "canary off" in ok("canary", bank, "app", "--off")
    assert "nothing to delete" in ok("prune", bank, "--keep", "1")  # v1 production, v2 newest
    assert not (bank / "app").exists()  # the folder from before versions, a spare copy of v1, is gone
    table = ok("history", bank)
    assert "promote" in table and "rollback" in table and "cli" in table
    moves = json.loads(ok("history", bank, "--json"))
    assert [m["action"] for m in moves][:4] == ["add", "add", "promote", "rollback"]
    for args, words in (
        (["promote", bank, "app@v7"], "its versions: v"),
        (["promote", bank, "shop@v1"], "its adapters: global, app, web"),
        (["promote", bank, "app"], "write ADAPTER@vN"),
        (["canary", bank, "app@v2"], "--share"),
        (["prune", bank, "--keep", "0"], "--keep 0"),
        (["rollback", bank], "or give --all"),
        (["history", bank, "--question", "intent"], "one-question bank"),
    ):
        result = runner.invoke(app, ["bank", *map(str, args)])
        assert result.exit_code == 2 and words in result.stderr, result.stderr
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_old_fixture_banks_still_open_with_version_one():
    folder = Path(__file__).parent / "fixtures" / "before-questions" / "bank-bottleneck"
    names = json.loads((folder / BANK_FILE).read_text())["adapters"]
    for name in names:
        assert v.versions(folder, name) == [1] and v.production(folder, name) == 1
    assert v.history(folder) == []


# -- serving that follows ------------------------------------------------------------------------------------------

SCORE_KEY, ADMIN_KEY = "score-key-0123456789", "admin-key-0123456789"


class Client:
    def __init__(self, bank: Path, log: Path, keys: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-c", "from peftkit.cli import main; main()", "serve", "--bank", str(bank)]
        cmd += ["--port", str(self.port), "--api-keys", str(keys), "--reload-interval-s", "0.2"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log.open("w"))
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
            try:
                self.request("GET", "/healthz")
                return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError("server did not start in 120 s")

    def request(self, method, path, body=None, key=SCORE_KEY):
        headers = {"Authorization": f"Bearer {key}"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                raw = resp.read()
                return resp.status, (json.loads(raw) if path != "/metrics" else raw.decode())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())


@pytest.fixture(scope="module")
def served(trained, tmp_path_factory):
    root = tmp_path_factory.mktemp("served-versions")
    bank = Path(shutil.copytree(trained, root / "bank"))
    v.add_version(bank, "app", bank / "web")
    v.add_version(bank, "web", bank / "app")
    (root / "keys.txt").write_text(f"score {SCORE_KEY}\nadmin {ADMIN_KEY}\n")
    client = Client(bank, root / "server.log", root / "keys.txt")
    client.bank = bank
    yield client
    client.proc.terminate()
    client.proc.wait(timeout=30)


def _versions_of(body) -> dict[str, set]:
    seen: dict[str, set] = {}
    for p in body["predictions"]:
        seen.setdefault(p["adapter"], set()).add(p.get("version"))
    return seen


def test_serving_follows_promotions_under_load_without_mixing_versions(served):
    items = [{"segment": s, "input": t} for s in ("app", "web", "app", "web") for t in TEXTS]
    stop, answers, failures = threading.Event(), [], []

    def client():
        while not stop.is_set():
            status, body = served.request("POST", "/v1/predict", {"items": items})
            (answers if status == 200 else failures).append((status, body))

    with ThreadPoolExecutor(max_workers=16) as pool:
        for _ in range(16):
            pool.submit(client)
        moves = 0
        deadline = time.time() + 6
        while time.time() < deadline:
            v.promote(served.bank, "app", 2)
            v.promote(served.bank, "web", 2)
            time.sleep(0.4)
            v.rollback(served.bank)
            time.sleep(0.4)
            moves += 2
        v.promote(served.bank, "app", 2)
        time.sleep(1.0)
        stop.set()
    assert not failures, failures[:2]
    assert len(answers) >= 16
    seen_versions = set()
    for _, body in answers:
        per_adapter = _versions_of(body)
        assert all(len(vs) == 1 and None not in vs for vs in per_adapter.values()), per_adapter
        seen_versions |= {x for vs in per_adapter.values() for x in vs}
    assert {"app@v1", "app@v2", "web@v1", "web@v2"} <= seen_versions  # both sides of the moves were served
    status, body = served.request("POST", "/v1/predict", {"items": items[:2]})
    assert status == 200 and body["predictions"][0]["version"] == "app@v2"  # the last promote is served


def test_reload_needs_an_admin_key_and_reports_the_versions(served):
    assert served.request("POST", "/v1/reload", {}, key=SCORE_KEY)[0] == 403
    status, body = served.request("POST", "/v1/reload", {}, key=ADMIN_KEY)
    assert status == 200 and body["versions"]["default"]["app"] == f"app@v{v.production(served.bank, 'app')}"


def test_metrics_are_prometheus_text_and_canary_report_reads_them(served, tmp_path):
    parser = pytest.importorskip("prometheus_client.parser")
    production = v.production(served.bank, "app")
    v.set_canary(served.bank, "app", 3 - production, share=0.5, key_column="user_id")
    served.request("POST", "/v1/reload", {}, key=ADMIN_KEY)
    records = [{"text": TEXTS[i % 6], "platform": "app", "user_id": i} for i in range(60)]
    status, body = served.request("POST", "/v1/score", {"records": records})
    assert status == 200
    got = {r["default"]["version"] for r in body["scores"]}
    assert got == {"app@v1", "app@v2"}
    status, text = served.request("GET", "/metrics")
    assert status == 200
    families = {f.name: f for f in parser.text_string_to_metric_families(text)}
    assert {"peftkit_answers", "peftkit_score", "peftkit_version_role"} <= set(families)
    (tmp_path / "scrape.txt").write_text(text)
    result = runner.invoke(
        app, ["bank", "canary-report", "--metrics-file", str(tmp_path / "scrape.txt"), "--json"]
    )
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert row["adapter"] == "app" and row["canary"] == f"app@v{3 - production}"
    assert row["canary_count"] > 0 and row["production_count"] > 0 and row["psi"] >= 0
    live = runner.invoke(app, ["bank", "canary-report", "--url", served.url, "--api-key", SCORE_KEY])
    assert live.exit_code == 0 and "PSI" in live.stdout
    v.clear_canary(served.bank, "app")
