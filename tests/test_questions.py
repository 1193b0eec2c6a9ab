"""Banks of questions over one base, scored from raw records: four questions of different tasks and methods (an
ordinal LoRA adapter read through a template with a default, a classification bottleneck adapter, a prefix
one-question bank with segments, an AdaLoRA adapter) answer every record exactly as each question's own adapter does,
share one copy of the base weights, and give per-record errors instead of failing a file."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import peftkit
from peftkit.cli import app
from peftkit.config import load_config
from peftkit.data.template import MissingField, Template
from peftkit.errors import PeftkitError
from peftkit.inference.bank import AdapterBank
from peftkit.inference.bank_build import add_question, build_questions, remove_question
from peftkit.training.loop import train
from peftkit.training.segments import train_bank
from tests.conftest import intent_rows

runner = CliRunner()
INTENT_TEMPLATE = "orders {orders|0}: {text}"
CHURN_TEMPLATE = "{text} via {platform}"


def users(n: int, seed: int = 0) -> pd.DataFrame:
    """`intent_rows` plus an ``orders`` count that is empty for every fifth user, and a binary ``buyer`` label."""
    rows = intent_rows(n, seed)
    rows["orders"] = ["" if i % 5 == 0 else str(i % 7) for i in range(n)]
    rows["buyer"] = np.where(rows["label"] == "strong", "yes", "no")
    return rows


@pytest.fixture(scope="module")
def shop(tiny_models, tmp_path_factory) -> dict[str, Path]:
    """Four questions trained on the tiny BERT, and the bank of questions built from them."""
    root = tmp_path_factory.mktemp("shop")
    users(160).to_csv(root / "users.csv", index=False)

    def fit(name: str, keys: dict, run=train) -> Path:
        common = {"model.name": str(tiny_models["bert"]), "data.train": str(root / "users.csv")}
        common |= {"train.max_steps": 6, "train.batch_size": 8, "train.lr": 5e-2, "output": str(root / name)}
        return run(load_config(None, {**common, **keys}), progress=False).output

    folders = {
        "intent": fit(  # every fifth row has no orders: the template's default renders 0
            "intent",
            {
                "task": "ordinal",
                "data.labels": ["weak", "medium", "strong"],
                "data.template": INTENT_TEMPLATE,
            },
        ),
        "churn": fit(
            "churn",
            {"data.label_column": "buyer", "data.template": CHURN_TEMPLATE, "method.name": "bottleneck"},
        ),
        "tone": fit(
            "tone",
            {"method.name": "prefix", "segments.column": "platform", "segments.min_rows": 10},
            run=train_bank,
        ),
        "power": fit("power", {"data.template": INTENT_TEMPLATE, "method.name": "adalora"}),
    }
    return {**folders, "bank": build_questions(root / "shop", folders), "root": root}


@pytest.fixture(scope="module")
def opened(shop) -> AdapterBank:
    return AdapterBank.open(shop["bank"])


RECORDS = users(12, seed=3).drop(columns=["label", "score", "buyer"]).to_dict("records")


# -- templates with defaults -------------------------------------------------------------------------------------


def test_template_defaults_render_missing_values_and_required_fields_are_named():
    t = Template.parse("orders {orders|0}, spend {spend|0:.2f}; q: {q|} {{literal}} {text}")
    assert t.fields == {"orders": "0", "spend": "0", "q": "", "text": None}
    assert (
        t.render({"text": "hi", "spend": "3.5", "orders": float("nan")})
        == "orders 0, spend 3.50; q:  {literal} hi"
    )
    assert t.render({"text": "hi", "orders": 4, "q": None}) == "orders 4, spend 0.00; q:  {literal} hi"
    with pytest.raises(MissingField, match="'text'"):
        t.render({"orders": 1})
    with pytest.raises(PeftkitError, match="two different defaults"):
        Template.parse("{a|0} {a|1}")


def test_training_renders_defaults_and_saves_them_with_the_adapter(shop):
    manifest = json.loads((shop["intent"] / "peftkit.json").read_text())
    assert manifest["config"]["data"]["template"] == INTENT_TEMPLATE
    assert (
        manifest["data"]["train_rows"] + manifest["data"]["eval_rows"] == 160
    )  # no row refused for empty orders


def test_training_still_refuses_an_empty_field_without_a_default(tiny_models, tmp_path):
    rows = users(40)
    rows.loc[3, "platform"] = None
    rows.to_csv(tmp_path / "u.csv", index=False)
    cfg = load_config(
        None,
        {
            "model.name": str(tiny_models["bert"]),
            "data.train": str(tmp_path / "u.csv"),
            "data.template": CHURN_TEMPLATE,
            "train.max_steps": 1,
            "output": str(tmp_path / "out"),
        },
    )
    with pytest.raises(
        PeftkitError, match=r"u\.csv row 4: column 'platform' .* is empty .*\{platform\|\.\.\.\}"
    ):
        train(cfg, progress=False)
    assert not (tmp_path / "out").exists()


# -- one base, every question ------------------------------------------------------------------------------------


def test_questions_share_one_copy_of_the_base_weights(opened):
    models = {}
    for name, question in opened.questions.items():
        question.preload()
        models[name] = question.model
    embeddings = {
        name: next(p for n, p in m.named_parameters() if n.endswith("word_embeddings.weight"))
        for name, m in models.items()
    }
    pointers = {p.data_ptr() for p in embeddings.values()}
    assert len(pointers) == 1, "each question holds its own copy of the base"
    heads = {name: opened.questions[name].bank.num_outputs for name in models}
    assert heads == {"intent": 2, "churn": 2, "tone": 3, "power": 3}  # ordinal: K-1 outputs
    assert {q.bank.method for q in opened.questions.values()} == {"lora", "bottleneck", "prefix", "adalora"}


def test_score_equals_each_questions_own_adapter(shop, opened):
    scores = opened.score(RECORDS)
    intent_texts = [Template.parse(INTENT_TEMPLATE).render(r) for r in RECORDS]
    churn_texts = [Template.parse(CHURN_TEMPLATE).render(r) for r in RECORDS]
    for name, folder, texts in (
        ("intent", shop["intent"], intent_texts),
        ("churn", shop["churn"], churn_texts),
        ("power", shop["power"], intent_texts),
    ):
        alone = peftkit.load(str(folder)).predict(texts)
        for record, want in zip(scores, alone):
            got = record[name]
            assert got.error is None and got.label == want.label
            for label, p in want.probabilities.items():
                assert math.isclose(got.probabilities[label], p, abs_tol=1e-5)
    tone = AdapterBank.open(shop["tone"])
    want = tone.predict([r["text"] for r in RECORDS], [r["platform"] for r in RECORDS])
    assert [s["tone"].label for s in scores] == [p.label for p in want]
    assert [s["tone"].adapter for s in scores] == [p.adapter for p in want]
    assert {s["tone"].adapter for s in scores} >= {"app", "web"}


def test_every_answer_equals_the_record_and_question_alone(opened):
    together = opened.score(RECORDS)
    for record, got in zip(RECORDS[:6], together):
        for name in opened.questions:
            alone = opened.score([record], [name])[0][name]
            assert alone.label == got[name].label and alone.adapter == got[name].adapter
            for label, p in alone.probabilities.items():
                assert math.isclose(got[name].probabilities[label], p, abs_tol=1e-5)


def test_a_record_missing_a_required_field_gets_its_own_error(opened):
    records = [dict(RECORDS[0]), dict(RECORDS[1]), dict(RECORDS[2])]
    del records[1][
        "platform"
    ]  # churn's template needs it; tone routes by it (an empty segment: the fallback)
    records[2]["orders"] = None  # intent's default renders 0
    scores = opened.score(records)
    assert scores[1]["churn"].error is not None and "'platform'" in scores[1]["churn"].error
    assert scores[1]["intent"].error is None and scores[1]["tone"].adapter == "global"
    assert all(s.error is None for s in scores[2].values())
    assert all(s.error is None for s in scores[0].values())


def test_unknown_questions_are_named(opened):
    with pytest.raises(PeftkitError, match=r"no question 'nope'.*intent, churn, tone, power"):
        opened.score(RECORDS[:1], ["nope"])
    with pytest.raises(PeftkitError, match="answers 4 questions"):
        opened.predict(["x"])


def test_a_question_on_another_base_is_refused_naming_both_hashes(shop, tiny_models, tmp_path):
    other = train(
        load_config(
            None,
            {
                "model.name": str(tiny_models["bert-other"]),
                "data.train": str(shop["root"] / "users.csv"),
                "train.max_steps": 1,
                "output": str(tmp_path / "other"),
            },
        ),
        progress=False,
    ).output
    ours = json.loads((shop["intent"] / "peftkit.json").read_text())["base"]["sha256"][:12]
    theirs = json.loads((other / "peftkit.json").read_text())["base"]["sha256"][:12]
    with pytest.raises(PeftkitError, match=rf"{theirs}.*{ours}"):
        build_questions(tmp_path / "mixed", {"intent": shop["intent"], "other": other})
    assert not (tmp_path / "mixed").exists()
    with pytest.raises(PeftkitError, match="one base only"):
        add_question(shop["bank"], "other", other)


def test_add_and_remove_a_question(shop, tmp_path):
    import shutil

    bank = shutil.copytree(shop["bank"], tmp_path / "shop")
    add_question(bank, "intent2", shop["intent"])
    assert set(AdapterBank.open(bank).questions) == {"intent", "churn", "tone", "power", "intent2"}
    remove_question(bank, "intent2")
    assert not (bank / "intent2").exists()
    assert set(json.loads((bank / "bank.json").read_text())["questions"]) == {
        "intent",
        "churn",
        "tone",
        "power",
    }
    with pytest.raises(PeftkitError, match="one-question bank"):
        add_question(shop["tone"], "x", shop["intent"])


# -- the command line --------------------------------------------------------------------------------------------


def invoke(args: list[str]):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_cli_build_predict_and_inspect_match_each_adapter(shop, tmp_path):
    bank = tmp_path / "shop"
    built = invoke(
        [
            "bank",
            "build",
            bank,
            "--question",
            f"intent={shop['intent']}",
            "--question",
            f"churn={shop['churn']}",
        ]
    )
    assert built.exit_code == 0, built.stderr
    records = pd.DataFrame(RECORDS)
    records.loc[4, "text"] = None  # every question needs the text: this row gets errors, the others answers
    records.to_csv(tmp_path / "users.csv", index=False)
    result = invoke(
        ["predict", "--bank", bank, "--data", tmp_path / "users.csv", "--output", tmp_path / "s.csv"]
    )
    assert result.exit_code == 0, result.stderr
    scores = pd.read_csv(tmp_path / "s.csv", dtype=str, keep_default_na=False)
    assert {"intent", "intent_prob_weak", "intent_adapter", "churn", "churn_prob_yes", "churn_error"} <= set(
        scores
    )
    assert "'text'" in scores.loc[4, "churn_error"] and scores.loc[3, "churn_error"] == ""
    for name in ("intent", "churn"):
        alone = invoke(
            [
                "predict",
                "--adapter",
                shop[name],
                "--data",
                tmp_path / "users.csv",
                "--output",
                tmp_path / f"{name}.csv",
            ]
        )
        assert alone.exit_code == 0, alone.stderr
        want = pd.read_csv(tmp_path / f"{name}.csv", dtype=str, keep_default_na=False)
        assert list(scores[name]) == list(want["prediction"])
        assert want.loc[4, "error"] != "" and want.loc[3, "error"] == ""
    info = json.loads(invoke(["inspect", bank, "--json"]).stdout)
    assert {n: q["method"] for n, q in info["questions"].items()} == {"intent": "lora", "churn": "bottleneck"}
    assert info["questions"]["intent"]["task"] == "ordinal"
    human = runner.invoke(app, ["inspect", str(bank)], env={"COLUMNS": "200"})
    assert "2 questions" in human.stdout
    assert all(word in human.stdout for word in ("intent", "ordinal", "lora", "churn", "bottleneck"))


def test_cli_predict_fails_only_when_no_row_can_be_answered(shop, tmp_path):
    pd.DataFrame({"text": [None, None], "platform": ["app", "web"]}).to_csv(
        tmp_path / "empty.csv", index=False
    )
    result = runner.invoke(
        app,
        [
            "predict",
            "--bank",
            str(shop["bank"]),
            "--data",
            str(tmp_path / "empty.csv"),
            "--output",
            str(tmp_path / "o.csv"),
        ],
    )
    assert result.exit_code == 2 and "no row could be answered" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "o.csv").exists()


def test_cli_bank_errors_are_one_line(shop, tmp_path):
    result = runner.invoke(app, ["bank", "build", str(tmp_path / "b"), "--question", "intent"])
    assert result.exit_code == 2 and "NAME=PATH" in result.stderr
    result = runner.invoke(app, ["bank", "build", str(tmp_path / "b"), "--question", f"x={shop['bank']}"])
    assert result.exit_code == 2 and "bank of questions" in result.stderr and "Traceback" not in result.stderr


# -- over HTTP ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(shop, tmp_path_factory):
    from tests.test_serve import Server

    s = Server(shop["bank"], tmp_path_factory.mktemp("log") / "server.log", "--batch-wait-ms", "20")
    yield s
    s.stop()


def _plain(scores) -> list[dict]:
    return [{q: (s.label, s.adapter, s.error is None) for q, s in record.items()} for record in scores]


def test_http_score_equals_the_offline_bank(server, opened):
    status, body = server.post("/v1/score", {"records": RECORDS})
    assert status == 200, body
    got = [
        {q: (s.get("label"), s.get("adapter"), "error" not in s) for q, s in r.items()}
        for r in body["scores"]
    ]
    assert got == _plain(opened.score(RECORDS))
    status, body = server.post("/v1/score", {"records": RECORDS[:2], "questions": ["churn"]})
    assert status == 200 and list(body["scores"][0]) == ["churn"]
    assert set(body["scores"][0]["churn"]["probabilities"]) == {"no", "yes"}


def test_http_score_errors_are_per_record_and_422_only_when_all_fail(server):
    bad = {k: v for k, v in RECORDS[0].items() if k != "platform"}
    status, body = server.post("/v1/score", {"records": [RECORDS[1], bad], "questions": ["churn", "intent"]})
    assert status == 200
    assert "label" in body["scores"][0]["churn"] and "'platform'" in body["scores"][1]["churn"]["error"]
    assert "label" in body["scores"][1]["intent"]
    status, body = server.post("/v1/score", {"records": [{"platform": "app"}]})
    assert status == 422 and all("error" in s for s in body["scores"][0].values())
    status, body = server.post("/v1/score", {"records": [RECORDS[0]], "questions": ["nope"]})
    assert status == 422 and "no question 'nope'" in body["detail"]


def test_http_predict_names_the_question(server, opened):
    status, body = server.post("/v1/predict", {"inputs": ["buy now"]})
    assert status == 422 and "answers 4 questions" in body["detail"]
    status, body = server.post("/v1/predict", {"question": "tone", "segment": "app", "inputs": ["buy now"]})
    assert status == 200
    assert body["predictions"][0]["label"] == opened.predict(["buy now"], "app", question="tone")[0].label
    described = server.get("/v1/adapters")
    assert set(described["questions"]) == {"intent", "churn", "tone", "power"}


def test_a_bad_request_never_fails_its_batch_mates(server, opened):
    from concurrent.futures import ThreadPoolExecutor

    good = {"records": RECORDS[:3], "questions": ["intent", "tone"]}
    want = _plain(opened.score(RECORDS[:3], ["intent", "tone"]))
    bad = b'{"question": "tone", "inputs": ["\\ud800 lone surrogate"]}'  # a text no tokenizer can encode

    def send(i: int):
        return server.post("/v1/predict", bad) if i % 5 == 0 else server.post("/v1/score", good)

    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(send, range(40)))
    for i, (status, body) in enumerate(results):
        if i % 5 == 0:
            assert status == 422 and "error" in body["predictions"][0]
        else:
            assert status == 200, body
            got = [{q: (s["label"], s["adapter"], True) for q, s in r.items()} for r in body["scores"]]
            assert got == want


def test_scoring_masks_personal_data_as_training_did(shop, opened):
    from peftkit.data.privacy import mask_text

    manifest = json.loads((shop["intent"] / "peftkit.json").read_text())
    assert manifest["config"]["data"]["mask_pii"] is True  # on by default
    record = {
        "text": "call me on 13812345678 or mail a.b@shop.example, buy now",
        "orders": "2",
        "platform": "app",
    }
    got = opened.score([record], ["intent"])[0]["intent"]
    masked = mask_text(Template.parse(INTENT_TEMPLATE).render(record))
    assert "13812345678" not in masked and "a.b@shop.example" not in masked
    model = peftkit.load(str(shop["intent"]))
    want = model.predict([masked])[0]
    for label, p in want.probabilities.items():
        assert math.isclose(got.probabilities[label], p, abs_tol=1e-6)
    raw = model.predict([Template.parse(INTENT_TEMPLATE).render(record)])[0]  # a finished text is masked too
    assert raw.probabilities == want.probabilities
    texts = opened.predict([Template.parse(INTENT_TEMPLATE).render(record)], question="intent")[0]
    assert texts.probabilities == pytest.approx(want.probabilities, abs=1e-6)
