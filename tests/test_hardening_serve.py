"""Issue 35's serving and loading findings, each as the probe that found it: bad requests isolated from their
batch-mates, body limits that count received bytes, API keys with scopes, Host and Content-Type checks, malformed
JSON answered 4xx and logged, log injection escaped, and damaged adapter folders refused in one line at load time
(a bank serving the rest)."""

from __future__ import annotations

import json
import shutil
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import peftkit
from peftkit.cli import app
from peftkit.errors import PeftkitError
from peftkit.inference.bank import AdapterBank
from peftkit.training.segments import train_bank
from tests.test_bank import TEXTS, bank_cfg
from tests.test_serve import Server

runner = CliRunner()
SCORE_KEY, ADMIN_KEY = "score-key-0123456789abcdef", "admin-key-0123456789abcdef"


@pytest.fixture(scope="module")
def bank_dir(tiny_models, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("hardening")
    return train_bank(bank_cfg(tiny_models, tmp, model="bert"), progress=False).output


@pytest.fixture(scope="module")
def offline(bank_dir) -> AdapterBank:
    return AdapterBank.open(bank_dir)


@pytest.fixture(scope="module")
def keyed(bank_dir, tmp_path_factory):
    """A server with API keys, a small body limit and a short body time-out."""
    root = tmp_path_factory.mktemp("keyed")
    keys = root / "keys.txt"
    keys.write_text(f"# scopes\nscore {SCORE_KEY}\nadmin {ADMIN_KEY}\n")
    s = Server(
        bank_dir, root / "server.log", "--api-keys", str(keys), "--max-body-kb", "8", "--body-timeout-s", "2"
    )
    yield s
    s.stop()


def call(
    server: Server, method: str, path: str, body: bytes | None = None, **headers: str
) -> tuple[int, dict]:
    """A raw HTTP/1.1 request, every header as given (urllib would add its own)."""
    head = [f"{method} {path} HTTP/1.1", f"Host: {headers.pop('Host', '127.0.0.1')}", "Connection: close"]
    head += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    if body is not None and "Transfer_Encoding" not in headers and "Content_Length" not in headers:
        head.append(f"Content-Length: {len(body)}")
    raw = ("\r\n".join(head) + "\r\n\r\n").encode() + (body or b"")
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(raw)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    payload = rest.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in rest else b""
    return int(status_line.split()[1]), json.loads(payload) if payload.startswith(b"{") else {}


JSON = {"Content_Type": "application/json"}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", **JSON}


# -- 3: authentication, scopes, Host, Content-Type ---------------------------------------------------------------


def test_api_keys_and_scopes(keyed):
    body = json.dumps({"segment": "app", "inputs": ["buy now"]}).encode()
    assert call(keyed, "POST", "/v1/predict", body, **JSON)[0] == 401
    assert call(keyed, "POST", "/v1/predict", body, **bearer("wrong-key-0123456789abcdef"))[0] == 401
    assert call(keyed, "POST", "/v1/predict", body, **bearer(SCORE_KEY))[0] == 200
    assert call(keyed, "POST", "/v1/predict", body, **bearer(ADMIN_KEY))[0] == 200
    add = json.dumps({"name": "web2", "path": "web", "segments": ["web2"]}).encode()
    status, answer = call(keyed, "POST", "/v1/adapters", add, **bearer(SCORE_KEY))
    assert status == 403 and "admin" in answer["detail"]
    assert call(keyed, "GET", "/v1/adapters", **{"Authorization": f"Bearer {SCORE_KEY}"})[0] == 200
    assert call(keyed, "GET", "/healthz")[0] == 200  # open
    log = keyed.log.read_text()
    assert SCORE_KEY not in log and ADMIN_KEY not in log


def test_foreign_host_and_browser_simple_requests_are_refused(keyed):
    body = json.dumps({"segment": "app", "inputs": ["buy now"]}).encode()
    status, _ = call(keyed, "POST", "/v1/predict", body, Host="attacker.example:8000", **bearer(SCORE_KEY))
    assert status == 403
    plain = {
        "Authorization": f"Bearer {SCORE_KEY}",
        "Content_Type": "text/plain",
        "Origin": "http://evil.example",
    }
    assert call(keyed, "POST", "/v1/predict", body, **plain)[0] == 415
    form = {**plain, "Content_Type": "application/x-www-form-urlencoded"}
    assert call(keyed, "POST", "/v1/predict", body, **form)[0] == 415


def test_a_non_loopback_bind_needs_keys_or_no_auth(bank_dir):
    result = runner.invoke(app, ["serve", "--bank", str(bank_dir), "--host", "0.0.0.0"])
    assert result.exit_code == 2 and "--api-keys" in result.stderr and "Traceback" not in result.stderr


def test_a_bad_keys_file_is_one_line(bank_dir, tmp_path):
    (tmp_path / "keys.txt").write_text("superuser abcdefghijklmnopqrstuvwxyz\n")
    result = runner.invoke(app, ["serve", "--bank", str(bank_dir), "--api-keys", str(tmp_path / "keys.txt")])
    assert result.exit_code == 2 and "line 1" in result.stderr and "score, admin" in result.stderr


# -- 2: body limits that hold ------------------------------------------------------------------------------------


def test_body_limit_counts_bytes_whatever_the_framing(keyed):
    auth = bearer(SCORE_KEY)
    big = json.dumps({"inputs": ["x" * 30_000]}).encode()
    chunked = b"".join(
        b"%x\r\n%s\r\n" % (len(big[i : i + 4096]), big[i : i + 4096]) for i in range(0, len(big), 4096)
    )
    chunked += b"0\r\n\r\n"
    started = time.perf_counter()
    status, _ = call(keyed, "POST", "/v1/predict", chunked, Transfer_Encoding="chunked", **auth)
    assert status == 413 and time.perf_counter() - started < 10
    both = {"Transfer_Encoding": "chunked", "Content_Length": "17", **auth}
    assert call(keyed, "POST", "/v1/predict", chunked, **both)[0] == 400


def test_a_body_that_stops_arriving_gets_408(keyed):
    head = (
        "POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {SCORE_KEY}\r\nContent-Length: 100\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", keyed.port), timeout=30) as sock:
        sock.sendall(head.encode() + b'{"inputs": [')  # and then nothing
        assert b" 408 " in sock.recv(4096).split(b"\r\n")[0]


# -- 8, 9: malformed input is 4xx and logged; client values cannot forge log lines -------------------------------


@pytest.mark.parametrize(
    "payload, status",
    [
        (b'{"inputs": ' + b"[" * 2000 + b"]" * 2000 + b"}", 422),  # RecursionError before
        (b'{"inputs": ["a"], "segment": ' + b"9" * 5000 + b"}", 422),  # int over 4,300 digits
        (b'{"name": "x", "path": "a\\u0000b"}', 422),  # NUL in a path (to /v1/adapters below)
    ],
)
def test_malformed_json_is_422_and_logged(keyed, payload, status):
    path = "/v1/adapters" if b"path" in payload else "/v1/predict"
    got, body = call(keyed, "POST", path, payload, **bearer(ADMIN_KEY))
    assert got == status, body
    time.sleep(0.2)
    log = keyed.log.read_text()
    assert f"POST {path} {status}" in log and "Traceback" not in log


def test_log_lines_escape_what_clients_send(keyed):
    segment = "app\nFORGED POST /v1/adapters 201 \x1b[2J" + "z" * 5000
    body = json.dumps({"segment": segment, "inputs": ["x"]}).encode()
    call(keyed, "POST", "/v1/predict", body, **bearer(SCORE_KEY))
    time.sleep(0.2)
    lines = keyed.log.read_text().splitlines()
    assert not any(line.startswith("FORGED") for line in lines)
    assert not any("\x1b" in line for line in lines)
    assert all(len(line) < 2000 for line in lines)
    assert any("\\n" in line and "FORGED" in line for line in lines)


# -- 1: one bad request never fails the others ------------------------------------------------------------------


def test_two_bad_clients_never_fail_eight_good_ones(bank_dir, offline, tmp_path):
    folder = shutil.copytree(bank_dir, tmp_path / "bank")
    server = Server(folder, tmp_path / "server.log", "--no-preload", "--batch-wait-ms", "20")
    try:
        # web's weights break after the server checked them: its adapter fails to load at its first request
        weights = folder / "web" / "adapter_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:200])
        good = [{"segment": s, "inputs": TEXTS[:3]} for s in ("app", "global", None)]
        bad = [
            b'{"segment": "app", "inputs": ["\\ud800"]}',
            json.dumps({"segment": "web", "inputs": ["x"]}).encode(),
        ]

        def client(i: int) -> list[tuple[int, dict, int]]:
            out = []
            for j in range(6):
                if i < 2:
                    out.append((*server.post("/v1/predict", bad[i]), -1))
                else:
                    k = (i + j) % len(good)
                    out.append((*server.post("/v1/predict", good[k]), k))
            return out

        with ThreadPoolExecutor(10) as pool:
            results = [r for rs in pool.map(client, range(10)) for r in rs]
        for status, body, k in results:
            if k < 0:
                assert status == 422 and "error" in body["predictions"][0]
                continue
            assert status == 200, body
            want = offline.predict(TEXTS[:3], good[k]["segment"])
            assert [p["label"] for p in body["predictions"]] == [p.label for p in want]
            assert [p["adapter"] for p in body["predictions"]] == [p.adapter for p in want]
    finally:
        server.stop()


# -- 6, 7, 12: damaged adapter folders ---------------------------------------------------------------------------


def _damage(folder: Path, how: str) -> None:
    weights, config, manifest = (
        folder / "adapter_model.safetensors",
        folder / "adapter_config.json",
        folder / "peftkit.json",
    )
    tensors = load_file(str(weights))
    meta = json.loads(manifest.read_text())
    if how == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif how == "empty":
        weights.write_bytes(b"")
    elif how == "corrupt":
        weights.write_bytes(b"\x07" * 64 + weights.read_bytes()[64:])
    elif how == "nan":
        key = next(k for k in tensors if "lora_A" in k)
        tensors[key][0, 0] = float("nan")
        save_file(tensors, str(weights))
    elif how == "integer-tensor":
        key = next(k for k in tensors if "lora_A" in k)
        tensors[key] = tensors[key].to(torch.int32)
        save_file(tensors, str(weights))
    elif how == "no-head":
        save_file({k: t for k, t in tensors.items() if "classifier" not in k}, str(weights))
    elif how == "head-shape":
        tensors = {k: (t[:2] if "classifier" in k else t) for k, t in tensors.items()}
        save_file(tensors, str(weights))
    elif how == "lora-shape":
        key = next(k for k in tensors if "lora_A" in k)
        tensors[key] = torch.zeros(tensors[key].shape[0], tensors[key].shape[1] + 3)
        save_file(tensors, str(weights))
    elif how == "no-config":
        config.unlink()
    elif how == "bad-config":
        config.write_text("{not json")
    elif how == "manifest-not-utf8":
        manifest.write_bytes(manifest.read_text().replace("classification", "分类").encode("gbk"))
    elif how == "manifest-mistyped":
        manifest.write_text(json.dumps({**meta, "num_outputs": "three"}))
    elif how == "unknown-task":
        manifest.write_text(json.dumps({**meta, "task": "clustering"}))
    elif how == "labels-mismatch":
        manifest.write_text(json.dumps({**meta, "labels": meta["labels"][:2], "num_outputs": 2}))
    else:
        raise AssertionError(how)


DAMAGES = [
    "truncated", "empty", "corrupt", "nan", "integer-tensor", "no-head", "head-shape", "lora-shape", "no-config",
    "bad-config", "manifest-not-utf8", "manifest-mistyped", "unknown-task", "labels-mismatch",
]  # fmt: skip


@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_adapter_folder_is_one_line_at_load(bank_dir, tiny_models, tmp_path, how):
    folder = shutil.copytree(bank_dir / "app", tmp_path / "app")
    _damage(folder, how)
    with pytest.raises(PeftkitError) as err:
        peftkit.load(str(folder), base=str(tiny_models["bert"]))
    assert "\n" not in str(err.value) and str(folder) in str(err.value)
    (tmp_path / "rows.csv").write_text("text,platform\nbuy now,app\n")
    result = runner.invoke(app, ["predict", "--adapter", str(folder), "--data", str(tmp_path / "rows.csv")])
    assert result.exit_code == 2 and "Traceback" not in result.stderr and result.stderr.startswith("error: ")


def test_a_bank_with_one_damaged_adapter_serves_the_others(bank_dir, offline, tmp_path):
    folder = shutil.copytree(bank_dir, tmp_path / "bank")
    _damage(folder / "web", "nan")
    bank = AdapterBank.open(folder)
    assert set(bank.question().broken) == {"web"}
    scores = bank.score([{"text": t, "platform": p} for t, p in zip(TEXTS[:3], ["app", "web", "tablet"])])
    assert scores[0]["default"].label == offline.predict(TEXTS[:1], "app")[0].label
    assert "damaged" in scores[1]["default"].error and scores[2]["default"].adapter == "global"
    server = Server(folder, tmp_path / "server.log")
    try:
        status, body = server.post(
            "/v1/predict", {"items": [{"segment": "app", "input": "x"}, {"segment": "web", "input": "y"}]}
        )
        assert (
            status == 200
            and "label" in body["predictions"][0]
            and "damaged" in body["predictions"][1]["error"]
        )
        assert "damaged" in server.get("/v1/adapters")["adapters"]["web"]
        assert "set aside" in server.log.read_text()
        # 12: POST /v1/adapters checks the weights before answering 201
        shutil.copytree(folder / "app", folder / "app-bad")
        _damage(folder / "app-bad", "truncated")
        status, body = server.post("/v1/adapters", {"name": "app-bad", "path": "app-bad"})
        assert status == 422 and "safetensors" in body["detail"]
    finally:
        server.stop()


def test_non_finite_outputs_are_an_error_not_a_label(bank_dir, tiny_models, tmp_path):
    model = peftkit.load(str(bank_dir / "app"), base=str(tiny_models["bert"]))
    with torch.no_grad():
        for name, p in model.model.named_parameters():
            if "classifier" in name:  # the head copies peft keeps (original and the adapter's own)
                p.fill_(float("nan"))
    with pytest.raises(PeftkitError, match="non-finite"):
        model.predict(["buy now"])
