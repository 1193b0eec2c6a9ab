"""The lock: what `make setup` installs covers every declared dependency, and drift from it is reported by
`peftkit doctor` and recorded in every manifest."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import pytest
import tomllib

import peftkit.lock
from peftkit import doctor
from peftkit.lock import drift, lock_file, read_pins

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", requirement)[0]).lower()


def test_the_lock_pins_every_declared_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_name(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]}
    pins = read_pins(ROOT / "lock" / "requirements.txt") | read_pins(ROOT / "lock" / "pins.txt")
    assert declared - pins.keys() == set(), "run `make lock`: pyproject.toml declares packages the lock lacks"
    assert lock_file() == ROOT / "lock" / "requirements.txt"


def test_every_locked_file_carries_a_hash():
    for name in ("requirements.txt", "assets.txt"):
        text = (ROOT / "lock" / name).read_text()
        pinned = re.findall(r"^[A-Za-z0-9][^\s]*==[^\s]+", text, flags=re.M)
        assert pinned and len(
            re.findall(r"^[A-Za-z0-9][^\n]*\\\n\s+--hash=sha256:", text, flags=re.M)
        ) == len(pinned)


def _fake_lock(tmp_path: Path, lines: list[str], torch: str | None = None) -> Path:
    lock = tmp_path / "requirements.txt"
    lock.write_text(
        "# made by hand\n" + "".join(f"{line} \\\n    --hash=sha256:{'0' * 64}\n" for line in lines)
    )
    if torch:
        (tmp_path / "pins.txt").write_text(f"# why\n{torch}\ntransformers<99\n")
    return lock


def test_drift_names_each_difference_and_ignores_the_torch_build(tmp_path):
    installed = importlib.metadata.version
    torch_base = installed("torch").split("+")[0]
    lock = _fake_lock(
        tmp_path,
        [f"numpy=={installed('numpy')}", "pandas==0.0.1", "no-such-package-peftkit==1.0"],
        torch=f"torch=={torch_base}+cu999",  # another build of the installed version: not drift
    )
    result = drift(lock)
    assert result.checked == 4  # numpy, pandas, the missing one, and torch from pins.txt (a range is no pin)
    assert set(result.differs) == {"pandas", "no-such-package-peftkit"}
    assert result.differs["pandas"] == (installed("pandas"), "0.0.1")
    assert not result.matches
    assert "pandas " + installed("pandas") + " (locked 0.0.1)" in result.summary()
    assert "no-such-package-peftkit missing (locked 1.0)" in result.summary()
    assert result.to_json()["differs"]["pandas"] == {"installed": installed("pandas"), "locked": "0.0.1"}


def test_doctor_lock_row_warns_with_the_fix(tmp_path, monkeypatch):
    lock = _fake_lock(tmp_path, ["pandas==0.0.1"])
    monkeypatch.setattr(peftkit.lock, "lock_file", lambda: lock)
    row = doctor.check_lock()
    assert row.status == doctor.WARN and "1 of 1 packages differ from the lock: pandas" in row.detail
    assert "make setup" in row.fix
    ok = _fake_lock(tmp_path, [f"pandas=={importlib.metadata.version('pandas')}"])
    monkeypatch.setattr(peftkit.lock, "lock_file", lambda: ok)
    assert doctor.check_lock().status == doctor.OK


def test_the_manifest_records_drift_from_the_lock(tiny_models, intent_csv, tmp_path, monkeypatch):
    from peftkit.config import load_config
    from peftkit.training.loop import train

    lock = _fake_lock(tmp_path, ["pandas==0.0.1"])
    monkeypatch.setattr(peftkit.lock, "lock_file", lambda: lock)
    cfg = load_config(
        None,
        {
            "model.name": str(tiny_models["bert"]),
            "data.train": str(intent_csv),
            "train.max_steps": 1,
            "output": str(tmp_path / "out"),
        },
    )
    recorded = train(cfg, progress=False).manifest.versions_vs_lock
    assert recorded["lock"] == str(lock) and recorded["matches"] is False
    assert recorded["differs"]["pandas"]["locked"] == "0.0.1"


@pytest.mark.parametrize("line", ["torch==2.13.0+cpu", "transformers==5.23.0 ; python_version >= '3.10' \\"])
def test_read_pins_takes_exact_pins_only(tmp_path, line):
    path = tmp_path / "r.txt"
    path.write_text(f"# comment\n{line}\n    --hash=sha256:abc\ntransformers<5.24\n")
    name, version = re.match(r"([a-z]+)==([^\s;]+)", line).groups()
    assert read_pins(path) == {name: version}
