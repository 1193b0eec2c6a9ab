"""`peftkit serve` as a real server process answering real HTTP clients: predictions equal the offline bank's under
concurrent mixed-segment load, and every error case gets its status code and a message that says what to fix."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from peftkit.artifacts.names import BANK_FILE
from peftkit.inference.bank import AdapterBank
from peftkit.training.segments import train_bank
from tests.conftest import free_port
from tests.test_bank import TEXTS, bank_cfg


class Server:
    def __init__(self, bank: Path, log: Path, *flags: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        cmd = [sys.executable, "-c", "from peftkit.cli import main; main()", "serve", "--bank", str(bank)]
        cmd += ["--port", str(self.port), *flags]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log.open("w"))
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {log.read_text()[-2000:]}")
            try:
                self.get("/healthz")
                return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError("server did not start in 120 s")

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, dict]:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def get(self, path: str) -> dict:
        status, body = self.request("GET", path)
        assert status == 200, body
        return body

    def post(self, path: str, payload) -> tuple[int, dict]:
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        return self.request("POST", path, raw)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def bank_dir(tiny_models, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("served")
    return train_bank(bank_cfg(tiny_models, tmp), progress=False).output


@pytest.fixture(scope="module")
def server(bank_dir, tmp_path_factory):
    srv = Server(
        bank_dir, tmp_path_factory.mktemp("log") / "server.log", "--max-items", "64", "--max-body-kb", "4"
    )
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def offline(bank_dir) -> AdapterBank:
    return AdapterBank.open(bank_dir)


def test_one_segment_for_all_inputs(server, offline):
    status, body = server.post("/v1/predict", {"segment": "web", "inputs": TEXTS})
    assert status == 200
    expected = offline.predict(TEXTS, "web")
    assert [p["adapter"] for p in body["predictions"]] == ["web"] * len(TEXTS)
    assert [p["label"] for p in body["predictions"]] == [p.label for p in expected]
    for got, want in zip(body["predictions"], expected):
        assert got["probabilities"] == pytest.approx(want.probabilities, abs=1e-5)


def test_per_item_segments_and_the_fallback(server, offline):
    items = [{"segment": s, "input": t} for s, t in zip(["app", "web", "tablet"], TEXTS)]
    status, body = server.post("/v1/predict", {"items": items})
    assert status == 200
    assert [p["adapter"] for p in body["predictions"]] == [
        "app",
        "web",
        "global",
    ]  # tablet: the global adapter
    expected = offline.predict(TEXTS[:3], ["app", "web", "tablet"])
    assert [p["label"] for p in body["predictions"]] == [p.label for p in expected]


def test_many_concurrent_mixed_requests_each_get_their_own_adapters(server, offline):
    rng = random.Random(0)
    requests = []
    for _ in range(96):
        n = rng.randint(1, 5)
        requests.append([(rng.choice(["app", "web", "tablet", None]), rng.choice(TEXTS)) for _ in range(n)])

    def send(rows):
        return server.post("/v1/predict", {"items": [{"segment": s, "input": t} for s, t in rows]})

    with ThreadPoolExecutor(max_workers=32) as pool:
        answers = list(pool.map(send, requests))
    for rows, (status, body) in zip(requests, answers):
        assert status == 200, body
        expected = offline.predict([t for _, t in rows], [s for s, _ in rows])
        assert [p["adapter"] for p in body["predictions"]] == [p.adapter for p in expected]
        for got, want in zip(body["predictions"], expected):
            assert got["label"] == want.label
            assert got["probabilities"] == pytest.approx(want.probabilities, abs=1e-4)
    health = server.get("/healthz")
    assert 0 < health["batches"] <= 96 + 10  # the requests above, plus the other tests' requests at most


def test_adapters_endpoint_lists_segments_and_metrics(server):
    body = server.get("/v1/adapters")
    assert body["segments"] == {"app": "app", "web": "web"} and body["fallback"] == "global"
    assert set(body["adapters"]) == {"global", "app", "web"}
    assert "accuracy" in body["adapters"]["app"]["metrics"]
    assert body["segment_evaluation"]["app"]["adapter"] == "app"


@pytest.mark.parametrize(
    "payload, fragment",
    [
        (b'{"inputs": ["a"', "not valid JSON"),
        ({"inputs": "just a string"}, "inputs: Input should be a valid list"),
        ({"inputs": []}, "the list is empty"),
        ({"inputs": ["a"], "items": [{"input": "b"}]}, 'give either "inputs"'),
        ({"items": [{"text": "b"}]}, "items.0.input: Field required"),
        ({"items": [{"input": "b"}], "segment": "web"}, '"segment" goes inside each item'),
    ],
)
def test_malformed_payloads_get_422_saying_what_is_wrong(server, payload, fragment):
    status, body = server.post("/v1/predict", payload)
    assert status == 422 and fragment in body["detail"]


def test_oversize_requests_get_413(server):
    status, body = server.post("/v1/predict", {"inputs": ["x"] * 65})
    assert status == 413 and "65 inputs" in body["detail"] and "limit is 64" in body["detail"]
    status, body = server.post("/v1/predict", {"inputs": ["x" * 5000]})
    assert status == 413 and "limit is 4,096" in body["detail"]


def test_adding_adapters_only_from_inside_the_bank(server, bank_dir, tmp_path):
    status, body = server.post("/v1/adapters", {"name": "evil", "path": "../../etc"})
    assert status == 403 and "outside the bank folder" in body["detail"]
    status, body = server.post("/v1/adapters", {"name": "evil", "path": "/etc"})
    assert status == 403
    status, body = server.post("/v1/adapters", {"name": "x", "path": "nope"})
    assert status == 404
    pickle = bank_dir / "pickled"
    pickle.mkdir(exist_ok=True)
    (pickle / "adapter_model.bin").write_bytes(b"not loaded")
    status, body = server.post("/v1/adapters", {"name": "pickled", "path": "pickled"})
    assert status == 422 and "safetensors only" in body["detail"]
    status, body = server.post("/v1/adapters", {"name": "global", "path": "web"})
    assert status == 409
    # a copy of the web adapter, routed to a new segment
    shutil.copytree(bank_dir / "web", bank_dir / "web-copy", dirs_exist_ok=True)
    status, body = server.post(
        "/v1/adapters", {"name": "web-copy", "path": "web-copy", "segments": ["kiosk"]}
    )
    assert status == 201, body
    status, body = server.post("/v1/predict", {"segment": "kiosk", "inputs": TEXTS[:2]})
    _, web = server.post("/v1/predict", {"segment": "web", "inputs": TEXTS[:2]})
    assert [p["adapter"] for p in body["predictions"]] == ["web-copy"] * 2
    for a, b in zip(body["predictions"], web["predictions"]):
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-6)


def test_each_request_logs_one_line(server):
    server.post("/v1/predict", {"segment": "app", "inputs": ["log me"]})
    time.sleep(0.2)
    lines = [line for line in server.log.read_text().splitlines() if "POST /v1/predict 200" in line]
    assert lines and "segments=app:1" in lines[-1] and "adapters=app:1" in lines[-1] and "ms" in lines[-1]


def test_fallback_error_gets_404_with_the_known_segments(bank_dir, tmp_path):
    folder = tmp_path / "strict"
    shutil.copytree(bank_dir, folder, ignore=shutil.ignore_patterns("web-copy", "pickled"))
    data = json.loads((folder / BANK_FILE).read_text())
    data["fallback"] = "error"
    (folder / BANK_FILE).write_text(json.dumps(data))
    srv = Server(folder, tmp_path / "strict.log", "--no-preload")
    try:
        status, body = srv.post("/v1/predict", {"segment": "tablet", "inputs": ["x"]})
        assert status == 404 and body["known_segments"] == ["app", "web"] and "'tablet'" in body["detail"]
        status, body = srv.post("/v1/predict", {"segment": "app", "inputs": ["x"]})
        assert status == 200 and body["predictions"][0]["adapter"] == "app"
    finally:
        srv.stop()
