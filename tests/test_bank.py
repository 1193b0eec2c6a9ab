"""Adapter banks on tiny models: segment training, mixed batches equal to one-by-one answers (every method, 8-bit
on and off), lazy loading with LRU eviction, add/remove at runtime, fallbacks, and refusal of a foreign base."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import peftkit
from peftkit.artifacts.names import BANK_FILE
from peftkit.config import load_config
from peftkit.errors import PeftkitError
from peftkit.inference.bank import AdapterBank, UnknownSegmentError
from peftkit.training.loop import train
from peftkit.training.segments import train_bank
from tests.conftest import intent_rows

TEXTS = [
    "buy now the blue shirt",
    "just browsing phones maybe later",
    "compare prices of laptop gift",
    "order two shoes now please",
    "maybe later",
    "read reviews of the cheap delivery app",
]
SEGMENTS = ["app", "web", "app", "tablet", "web", None]  # tablet has no adapter: the global one answers


def bank_cfg(tiny_models, tmp_path, method="lora", quant="none", model="llama", **extra):
    data = tmp_path / "intent.csv"
    if not data.exists():
        intent_rows(160).to_csv(data, index=False)
    return load_config(
        None,
        {
            "model.name": str(tiny_models[model]),
            "data.train": str(data),
            "method.name": method,
            "model.quant": quant,
            "train.max_steps": 6,
            "train.batch_size": 8,
            "train.lr": 5e-2,  # large steps, so that the segment adapters clearly differ from the global one
            "output": str(tmp_path / "bank"),
            "segments.column": "platform",
            "segments.min_rows": 10,
            **extra,
        },
    )


@pytest.fixture(scope="module")
def banks(tiny_models, tmp_path_factory):
    """One trained bank per (method, quant), built on first use."""
    built = {}

    def get(method, quant):
        if (method, quant) not in built:
            tmp = tmp_path_factory.mktemp(f"bank-{method}-{quant}")
            built[method, quant] = train_bank(
                bank_cfg(tiny_models, tmp, method, quant), progress=False
            ).output
        return built[method, quant]

    return get


PARAMS = [
    pytest.param(m, q, marks=[pytest.mark.bnb] if q == "8bit" else [], id=f"{m}-{q}")
    for m in ("lora", "adalora", "prefix", "bottleneck")
    for q in ("none", "8bit")
]


@pytest.mark.parametrize("method,quant", PARAMS)
def test_mixed_batch_equals_each_row_alone_with_its_own_adapter(banks, method, quant):
    folder = banks(method, quant)
    bank = AdapterBank.open(folder)
    names = [bank.resolve(s) for s in SEGMENTS]
    assert names == ["app", "web", "app", "global", "web", "global"]

    mixed = bank.logits(TEXTS, names)
    one_by_one = np.concatenate([bank.logits([t], [n]) for t, n in zip(TEXTS, names)])
    # An independent load of each adapter folder, as `peftkit.load` does for a single adapter.
    alone = np.concatenate([peftkit.load(str(folder / n)).logits([t]) for t, n in zip(TEXTS, names)])
    np.testing.assert_allclose(mixed, one_by_one, atol=1e-5)
    np.testing.assert_allclose(mixed, alone, atol=1e-5)

    # The adapters really differ, so a row answered by the wrong adapter would have failed the checks above.
    per_adapter = {n: bank.logits(TEXTS, [n] * len(TEXTS)) for n in ("global", "app", "web")}
    assert np.abs(per_adapter["app"] - per_adapter["web"]).max() > 1e-2
    assert np.abs(per_adapter["app"] - per_adapter["global"]).max() > 1e-2

    preds = bank.predict(TEXTS, SEGMENTS)
    assert [p.adapter for p in preds] == names


def test_bank_file_records_segments_and_global_vs_own_metrics(banks):
    folder = banks("lora", "none")
    bank = json.loads((folder / BANK_FILE).read_text())
    assert bank["segments"] == {"app": "app", "web": "web"} and bank["fallback"] == "global"
    assert set(bank["adapters"]) == {"global", "app", "web"}
    for value in ("app", "web"):
        ev = bank["segment_evaluation"][value]
        assert ev["adapter"] == value and ev["train_rows"] >= 10 and ev["eval_rows"] > 0
        assert ev["delta"]["accuracy"] == pytest.approx(ev["own"]["accuracy"] - ev["global"]["accuracy"])
        manifest = json.loads((folder / value / "peftkit.json").read_text())
        assert manifest["segment"] == {"column": "platform", "value": value}
        assert manifest["warm_start_from"] == "global"
        # the segment adapter trained on its own rows only
        assert manifest["data"]["train_rows"] == ev["train_rows"]
    # the global adapter trained on the union of every segment's rows
    glob = json.loads((folder / "global" / "peftkit.json").read_text())
    assert glob["data"]["train_rows"] == sum(e["train_rows"] for e in bank["segment_evaluation"].values())


def test_global_metrics_per_segment_match_a_hand_computed_accuracy(banks, tmp_path):
    folder = banks("lora", "none")
    bank_file = json.loads((folder / BANK_FILE).read_text())
    # Rebuild the held-out rows exactly as the run split them, then score the global adapter on each platform.
    cfg = load_config(None, bank_file["config"])
    from peftkit.data import load_splits

    splits = load_splits(cfg.data, cfg.task, cfg.train.seed)
    glob = peftkit.load(str(folder / "global"))
    for value in ("app", "web"):
        idx = [i for i, p in enumerate(splits.eval_frame["platform"]) if p == value]
        labels = [
            glob.labels[int(np.argmax(row))] for row in glob.logits([splits.eval_texts[i] for i in idx])
        ]
        truth = [splits.labels[splits.eval_labels[i]] for i in idx]
        hand = sum(a == b for a, b in zip(labels, truth)) / len(idx)
        assert bank_file["segment_evaluation"][value]["global"]["accuracy"] == pytest.approx(hand)


def test_lru_keeps_at_most_max_loaded_and_answers_stay_the_same(banks):
    folder = banks("prefix", "none")
    full = AdapterBank.open(folder, max_loaded=8)
    expected = full.logits(TEXTS, [full.resolve(s) for s in SEGMENTS])
    small = AdapterBank.open(folder, max_loaded=1)
    assert small.loaded == []  # lazy: nothing loaded until asked
    small.activate("app")
    small.activate("web")
    assert small.loaded == ["web"]
    # three adapters in one batch with room for one: answered one adapter at a time, same numbers
    got = small.logits(TEXTS, [small.resolve(s) for s in SEGMENTS])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert len(small.loaded) == 1
    two = AdapterBank.open(folder, max_loaded=2)
    two.activate("global")
    two.activate("app")
    two.activate("global")  # global is now the most recent; loading web evicts app
    two.activate("web")
    assert two.loaded == ["global", "web"]


def test_add_and_remove_at_runtime(banks, tiny_models, tmp_path):
    folder = banks("lora", "none")
    bank = AdapterBank.open(folder)
    before = bank.predict(TEXTS[:2], ["app", "app"])
    # A new adapter for "app" trained separately: routed to it without reopening the bank.
    cfg = bank_cfg(tiny_models, tmp_path, output=str(tmp_path / "app-v2"), **{"train.seed": 7})
    cfg = cfg.model_copy(update={"segments": None})
    train(cfg, progress=False)
    bank.add("app-v2", tmp_path / "app-v2", segments=["app"])
    after = bank.predict(TEXTS[:2], ["app", "app"])
    assert [p.adapter for p in after] == ["app-v2", "app-v2"]
    np.testing.assert_allclose(
        bank.logits(TEXTS[:2], ["app-v2"] * 2),
        peftkit.load(str(tmp_path / "app-v2")).logits(TEXTS[:2]),
        atol=1e-5,
    )
    assert [p.probabilities for p in after] != [p.probabilities for p in before]
    with pytest.raises(PeftkitError, match="already has an adapter named 'app-v2'"):
        bank.add("app-v2", tmp_path / "app-v2")
    bank.remove("app-v2")
    assert bank.resolve("app") == "app"  # the adapter named "app" still answers for its name
    bank.remove("app")
    assert bank.resolve("app") == "global"  # and once it is gone, the segment follows the fallback
    # removing every loaded adapter leaves a bank that still loads and answers
    for name in list(bank.adapters):
        if name != "web":
            bank.remove(name)
    assert bank.predict(["x"], ["web"])[0].adapter == "web"
    bank.remove("web")
    bank.add("web2", folder / "web", segments=["web"])
    np.testing.assert_allclose(
        bank.logits(TEXTS, ["web2"] * len(TEXTS)), peftkit.load(str(folder / "web")).logits(TEXTS), atol=1e-5
    )


def test_add_with_persist_copies_into_the_bank(banks, tmp_path):
    folder = tmp_path / "bank"
    shutil.copytree(banks("bottleneck", "none"), folder)
    bank = AdapterBank.open(folder)
    bank.add("web-copy", folder / "web", persist=True)
    assert (folder / "web-copy" / "adapter_model.safetensors").is_file()
    reopened = AdapterBank.open(folder)
    assert reopened.resolve("web-copy") == "web-copy"
    np.testing.assert_allclose(
        reopened.logits(TEXTS, ["web-copy"] * 6), reopened.logits(TEXTS, ["web"] * 6), atol=1e-6
    )


def test_fallback_error_refuses_unknown_segments_naming_the_known_ones(banks, tmp_path):
    folder = tmp_path / "bank"
    shutil.copytree(banks("lora", "none"), folder)
    data = json.loads((folder / BANK_FILE).read_text())
    data["fallback"] = "error"
    (folder / BANK_FILE).write_text(json.dumps(data))
    bank = AdapterBank.open(folder)
    with pytest.raises(UnknownSegmentError, match=r"'tablet'.*known segments: app, web"):
        bank.predict(["x"], ["tablet"])
    assert bank.predict(["x"], ["web"])[0].adapter == "web"


def test_a_bank_on_another_base_is_refused(banks, tiny_models, tmp_path):
    folder = tmp_path / "bank"
    shutil.copytree(banks("lora", "none"), folder)
    data = json.loads((folder / BANK_FILE).read_text())
    data["base"]["name"] = str(tiny_models["llama-other"])  # same shapes, other weights
    (folder / BANK_FILE).write_text(json.dumps(data))
    with pytest.raises(PeftkitError, match="built on base .* but that base here has sha256"):
        AdapterBank.open(folder)


def test_an_adapter_of_another_base_is_refused(banks, tiny_models, tmp_path):
    other = bank_cfg(tiny_models, tmp_path, model="llama-other", output=str(tmp_path / "other"))
    train(other.model_copy(update={"segments": None}), progress=False)
    bank = AdapterBank.open(banks("lora", "none"))
    with pytest.raises(PeftkitError, match="trained on base .*a bank holds adapters of one base only"):
        bank.add("other", tmp_path / "other")
    # and inside the bank folder: opening checks every adapter up front
    folder = tmp_path / "bank"
    shutil.copytree(banks("lora", "none"), folder)
    shutil.rmtree(folder / "web")
    shutil.copytree(tmp_path / "other", folder / "web")
    with pytest.raises(PeftkitError, match=r"adapter .*web was trained on base"):
        AdapterBank.open(folder)


def test_an_adapter_of_another_method_is_refused(banks):
    bank = AdapterBank.open(banks("lora", "none"))
    with pytest.raises(PeftkitError, match="has method 'prefix', the bank 'lora'"):
        bank.add("p", banks("prefix", "none") / "web")


def test_segment_training_errors_name_the_column(tiny_models, tmp_path):
    with pytest.raises(
        PeftkitError, match=r"--segment-column 'country': no such column .*columns: text, label"
    ):
        train_bank(bank_cfg(tiny_models, tmp_path, **{"segments.column": "country"}), progress=False)
    with pytest.raises(PeftkitError, match=r"segments.values \['tv'\] do not occur"):
        train_bank(bank_cfg(tiny_models, tmp_path, **{"segments.values": ["tv"]}), progress=False)
    assert not (tmp_path / "bank").exists()  # nothing half-written


def test_small_segments_fall_back_and_no_warm_start_trains_from_scratch(tiny_models, tmp_path):
    cfg = bank_cfg(
        tiny_models, tmp_path, method="bottleneck", **{"segments.min_rows": 70, "segments.warm_start": False}
    )
    bank = train_bank(cfg, progress=False).bank
    ev = bank.segment_evaluation
    small = [v for v, r in ev.items() if r["train_rows"] < 70]
    assert small and all(ev[v]["adapter"] is None and "min_rows 70" in ev[v]["skipped"] for v in small)
    assert all(v not in bank.segments for v in small)
    for v in bank.segments:
        manifest = json.loads((tmp_path / "bank" / v / "peftkit.json").read_text())
        assert manifest["warm_start_from"] is None
    with pytest.raises(PeftkitError, match="already holds a bank; pass --overwrite"):
        train_bank(cfg, progress=False)


@pytest.mark.parametrize("method", ["lora", "adalora", "prefix", "bottleneck"])
def test_warm_start_begins_at_the_global_adapter(tiny_models, tmp_path, method):
    """A warm-started adapter before any step answers exactly as the adapter it starts from."""
    from peftkit.data import load_splits
    from peftkit.inference.predictor import Predictor
    from peftkit.training.model_setup import setup_model

    cfg = bank_cfg(tiny_models, tmp_path, method=method).model_copy(update={"segments": None})
    cfg = cfg.model_copy(update={"output": str(tmp_path / "global")})
    trained = train(cfg, progress=False)
    splits = load_splits(cfg.data, cfg.task, cfg.train.seed)
    run = setup_model(cfg, splits, init_from=tmp_path / "global")
    fresh = Predictor(
        run.model, run.tokenizer, task=cfg.task, labels=splits.labels, max_length=64, adapter="x"
    )
    np.testing.assert_allclose(fresh.logits(TEXTS), trained.predictor.logits(TEXTS), atol=1e-5)


@pytest.mark.parametrize("method", ["lora", "adalora"])
def test_switching_the_active_adapter_matches_per_row_selection(banks, method):
    """`activate` (the switch path the fast cached-layer switch serves) gives each adapter's own answers."""
    from peftkit.inference.predictor import Predictor

    folder = banks(method, "none")
    bank = AdapterBank.open(folder)
    bank.logits(TEXTS, ["app", "web", "global", "app", "web", "global"])  # all three loaded
    plain = Predictor(
        bank.model, bank.tokenizer, task="classification", labels=bank.labels, max_length=64, adapter=""
    )
    for name in ("web", "app", "global", "web"):
        bank.activate(name)
        np.testing.assert_allclose(
            plain.logits(TEXTS), peftkit.load(str(folder / name)).logits(TEXTS), atol=1e-5, err_msg=name
        )


def test_build_bank_bundles_separately_trained_adapters(banks, tiny_models, tmp_path):
    from peftkit.inference.bank import build_bank

    src = banks("bottleneck", "none")
    folder = build_bank(
        tmp_path / "bundle", {"global": src / "global", "web": src / "web"}, segment_column="platform"
    )
    bank = AdapterBank.open(folder)
    assert bank.segments == {"web": "web"} and bank.resolve("app") == "global"
    np.testing.assert_allclose(
        bank.logits(TEXTS, ["web"] * 6), AdapterBank.open(src).logits(TEXTS, ["web"] * 6), atol=1e-6
    )
    with pytest.raises(PeftkitError, match="has method 'lora', the bank 'bottleneck'"):
        build_bank(tmp_path / "mixed", {"global": src / "global", "x": banks("lora", "none") / "web"})
    assert not (tmp_path / "mixed").exists()
    with pytest.raises(PeftkitError, match="already exists"):
        build_bank(folder, {"global": src / "global"})
