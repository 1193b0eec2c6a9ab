"""Adapter banks: one base model in memory answering every question a shop asks about a user, each with one small
adapter per platform or segment, switched per row.

    banks/shop/                     a bank of questions (``peftkit bank build``)
      bank.json                     base identity (sha256), quant, dtype, question -> folder
      intent/                       one question: bank.json (segments, fallback, adapters), global/, hotel/, ...
      churn/

    bank = AdapterBank.open("banks/shop")
    bank.score([{"user_id": 7, "platform": "app", "orders_90d": 3, "last_query": "..."}])
    # -> [{"intent": Score(label="strong", ...), "churn": Score(label="stay", ...)}]

A folder written by ``peftkit train --segment-column`` (or by peftkit before questions existed) is a bank of one
question, named ``default``; ``bank.predict(texts, segments)`` and the other one-question methods answer it as
before.

Opening a bank loads the base once and checks every adapter of every question against it. Each question runs on
its own module tree over the same base tensors (`peftkit.inference.shared_base`), so adapters of different methods
(LoRA for one question, bottleneck for another), heads of different widths and different poolings sit side by side
with one copy of the base weights. `score` builds each record's text per question the way that question's adapter
was trained to read it (its template, with the template's defaults for empty fields), routes it by the question's
segment column, and answers each question in one pass over all its rows (rows of different segments in one forward
pass where the method allows it). A record that cannot be answered for a question (a required field missing, a
segment with no adapter under ``fallback: error``) gets that question's error; the rest are answered.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from peftkit.artifacts.bank_file import BankEntry, BankFile, BankIndex, read_bank_file, read_bank_index
from peftkit.artifacts.versions import parse_key
from peftkit.data.template import is_missing
from peftkit.errors import PeftkitError
from peftkit.inference.bank_build import build_bank
from peftkit.inference.explain import DEFAULT_STEPS, DEFAULT_TOP_K, ExplainOptions, Explanation
from peftkit.inference.predictor import Prediction, prediction_columns
from peftkit.inference.question import Question, UnknownSegmentError

__all__ = ["AdapterBank", "Score", "ScorePlan", "Unit", "UnknownSegmentError", "build_bank"]


@dataclass(frozen=True)
class Score:
    """One question's answer for one record: ``label`` and ``probabilities`` (classification, ordinal) or ``score``
    (regression), the ``adapter`` and ``segment`` that answered; or ``error`` when the record could not be answered
    for this question (the other fields None). ``explanation``: why, token by token, when scoring was asked to
    explain (`peftkit.inference.explain`)."""

    label: str | None = None
    score: float | None = None
    probabilities: dict[str, float] | None = None
    adapter: str | None = None
    segment: str | None = None
    error: str | None = None
    explanation: Explanation | None = None
    version: str | None = None  # the adapter version that answered ("hotel@v3"); None without versions

    def to_json(self) -> dict[str, Any]:
        if self.error is not None:
            return {"error": self.error, "segment": self.segment}
        answer = {"score": self.score} if self.score is not None else {"label": self.label}
        if self.probabilities is not None:
            answer["probabilities"] = self.probabilities
        explained = {"explanation": self.explanation.to_json()} if self.explanation is not None else {}
        version = {"version": self.version} if self.version is not None else {}
        return {**answer, "adapter": self.adapter, **version, "segment": self.segment, **explained}


@dataclass(frozen=True)
class Unit:
    """One text for one question's adapter: what the bank's forward passes answer, and what the server batches."""

    question: str
    text: str
    adapter: str


@dataclass
class ScorePlan:
    """Records turned into `Unit`s (`AdapterBank.plan`): ``units`` to answer, and for each record and question either
    the index of its unit or the `Score` with its error."""

    questions: list[str]
    units: list[Unit]
    slots: list[dict[str, int | Score]]
    segments: list[dict[str, str | None]]


class AdapterBank:
    """A base model with a bank's questions and their adapters. Thread-safe. Build it with `AdapterBank.open`.

    ``questions`` maps question name -> `Question`. The one-question properties and methods (``segments``,
    ``adapters``, ``predict``, ``add``...) answer the only question, and name the questions when there are several.
    """

    def __init__(
        self,
        folder: Path,
        index: BankIndex,
        *,
        single: bool,
        quant: str | None,
        device: str | None,
        max_loaded: int,
        batch_size: int,
    ):
        from peftkit import models

        if max_loaded < 1:
            raise PeftkitError(f"max_loaded must be at least 1, got {max_loaded}")
        self.folder, self.index, self.single = folder, index, single
        self.max_loaded, self.batch_size = max_loaded, batch_size
        files = {name: read_bank_file(folder / q.path) for name, q in index.questions.items()}
        if not single:
            for name, file in files.items():
                index.check_question(name, file, folder / index.questions[name].path)
        ref = models.resolve(index.base.name)
        if ref.sha256 != index.base.sha256:
            raise PeftkitError(
                f"bank {folder} was built on base {index.base.name} with sha256 {index.base.sha256[:12]}, "
                f"but that base here has sha256 {ref.sha256[:12]}; install the matching base"
            )
        self.device = device or models.default_device()
        self.quant = quant or index.quant
        self.tokenizer = models.load_tokenizer(ref)
        # The pristine base: never attached to, so every question copies the same clean tree over its tensors.
        self._base, self._heads = models.load_base(
            ref,
            next(iter(files.values())).num_outputs,
            quant=self.quant,
            dtype=models.stored_dtype(index.dtype, self.device),
            device=self.device,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        self.questions: dict[str, Question] = {}
        for name, file in files.items():
            self.questions[name] = self._open_question(name, folder / index.questions[name].path, file)

    def _open_question(self, name: str, folder: Path, file: BankFile) -> Question:
        from peftkit.inference.shared_base import question_model

        model = question_model(self._base, self._heads, file.num_outputs, file.pooling)
        return Question(
            name,
            folder,
            file,
            model=model,
            tokenizer=self.tokenizer,
            max_loaded=self.max_loaded,
            batch_size=self.batch_size,
        )

    @classmethod
    def open(
        cls,
        folder: str | Path,
        *,
        quant: str | None = None,
        device: str | None = None,
        max_loaded: int = 8,
        batch_size: int = 64,
        preload: bool = False,
    ) -> AdapterBank:
        """Open a bank folder: load its base once and check every adapter of every question against it.

        Args:
            folder: a bank written by ``peftkit bank build`` or ``peftkit train --segment-column``.
            quant: ``"none"`` or ``"8bit"``; default: what the adapters were trained with.
            device: default CUDA when available.
            max_loaded: adapters of each question kept in memory at once; the least recently used is evicted
                beyond it.
            batch_size: rows per forward pass.
            preload: load adapters now (up to ``max_loaded`` per question) instead of on first use.
        """
        folder = Path(folder)
        index, single = read_bank_index(folder)
        bank = cls(
            folder,
            index,
            single=single,
            quant=quant,
            device=device,
            max_loaded=max_loaded,
            batch_size=batch_size,
        )
        if preload:
            for question in bank.questions.values():
                question.preload()
        return bank

    def question(self, name: str | None = None) -> Question:
        """Question `name`; with None, the only one (an error naming them when there are several)."""
        if name is None:
            if len(self.questions) == 1:
                return next(iter(self.questions.values()))
            raise PeftkitError(
                f"bank {self.folder} answers {len(self.questions)} questions ({', '.join(self.questions)}); "
                "name one, or score records with bank.score"
            )
        if name not in self.questions:
            raise PeftkitError(
                f"bank {self.folder} has no question {name!r}; its questions: {', '.join(self.questions)}"
            )
        return self.questions[name]

    # -- scoring records ------------------------------------------------------------------------------------------

    def score(
        self,
        records: pd.DataFrame | Iterable[dict[str, Any]],
        questions: list[str] | None = None,
        *,
        segment_column: str | None = None,
        segment: str | None = None,
        explain: bool = False,
        top_k: int = DEFAULT_TOP_K,
        n_steps: int = DEFAULT_STEPS,
    ) -> list[dict[str, Score]]:
        """Answer every question (or those named) for every record.

        Args:
            records: a DataFrame, or dicts of field -> value; each question builds its text from the fields its
                adapters were trained on.
            questions: question names; default all.
            segment_column: the record field naming each record's segment; default each question's own column.
            segment: answer every record with this segment's adapters instead.
            explain: also explain each answer (`Score.explanation`: top tokens, per-field sums where a template
                built the text); about ``n_steps`` forward and backward passes per answer.
            top_k, n_steps: see `peftkit.inference.explain.ExplainOptions`.

        Returns:
            Per record, question -> `Score` (a label or score with probabilities, the adapter and segment that
            answered; or the error that kept this question from answering this record).
        """
        options = ExplainOptions(top_k, n_steps) if explain else None  # bad options refused before any work
        rows = records.to_dict("records") if isinstance(records, pd.DataFrame) else list(records)
        plan = self.plan(rows, questions, segment_column=segment_column, segment=segment)
        scores = self.assemble(plan, self.answer(plan.units))
        if options is None:
            return scores
        from peftkit.inference.explain import explain_scores

        return explain_scores(self, plan, scores, rows, options)

    def explain(
        self,
        records: pd.DataFrame | Iterable[dict[str, Any]],
        questions: list[str] | None = None,
        *,
        top_k: int = DEFAULT_TOP_K,
        n_steps: int = DEFAULT_STEPS,
        segment_column: str | None = None,
        segment: str | None = None,
    ) -> list[dict[str, Score]]:
        """`score` with ``explain=True``: every answer with its `Score.explanation`."""
        return self.score(
            records,
            questions,
            segment_column=segment_column,
            segment=segment,
            explain=True,
            top_k=top_k,
            n_steps=n_steps,
        )

    def plan(
        self,
        records: pd.DataFrame | Iterable[dict[str, Any]],
        questions: list[str] | None = None,
        *,
        segment_column: str | None = None,
        segment: str | None = None,
    ) -> ScorePlan:
        """Records into the units `answer` computes (texts rendered, segments routed), errors kept per record."""
        rows = records.to_dict("records") if isinstance(records, pd.DataFrame) else list(records)
        bad = [i for i, r in enumerate(rows) if not isinstance(r, dict)]
        if bad:
            raise PeftkitError(
                f"record {bad[0]} is a {type(rows[bad[0]]).__name__}; give each record as a dict"
            )
        names = self.question_names(questions)
        plan = ScorePlan(names, [], [{} for _ in rows], [{} for _ in rows])
        for name in names:
            question = self.questions[name]
            column = segment_column or question.segment_column
            segments = [segment if segment is not None else segment_of(r, column) for r in rows]
            adapters: list[str | None] = []
            for i, seg in enumerate(segments):
                plan.segments[i][name] = seg
                try:
                    adapters.append(question.resolve(seg))
                except UnknownSegmentError as exc:
                    adapters.append(None)
                    plan.slots[i][name] = Score(segment=seg, error=str(exc))
            routed = [i for i, a in enumerate(adapters) if a is not None]
            # one snapshot of the question's version pointers for every record (a canary picks by record key)
            keys = question.pick([adapters[i] for i in routed], [rows[i] for i in routed])
            texts, errors = question.texts([rows[i] for i in routed], keys)
            for i, key, text, error in zip(routed, keys, texts, errors):
                if error is not None:
                    plan.slots[i][name] = Score(segment=segments[i], error=f"{error.message}; {error.fix}")
                    continue
                plan.slots[i][name] = len(plan.units)
                plan.units.append(Unit(name, text, key))
        return plan

    def answer(self, units: list[Unit]) -> list[Prediction | str]:
        """Each unit's `Prediction`, or its own error message: one pass per question over all its units (mixed
        segments in one forward pass where the method allows it); a unit that fails never fails the others."""
        out: list[Prediction | str] = [""] * len(units)
        for name in dict.fromkeys(u.question for u in units):
            rows = [i for i, u in enumerate(units) if u.question == name]
            answers = self.questions[name].answer(
                [units[i].text for i in rows], [units[i].adapter for i in rows]
            )
            for i, answer in zip(rows, answers):
                out[i] = answer
        return out

    def assemble(self, plan: ScorePlan, answers: list[Prediction | str]) -> list[dict[str, Score]]:
        """`plan`'s records with `answers` (from `answer(plan.units)`) put in place."""
        out = []
        for slots, segments in zip(plan.slots, plan.segments):
            record = {}
            for name in plan.questions:
                slot, seg = slots[name], segments[name]
                if isinstance(slot, Score):
                    record[name] = slot
                elif isinstance(answers[slot], str):
                    adapter = parse_key(plan.units[slot].adapter)[0]
                    record[name] = Score(segment=seg, adapter=adapter, error=answers[slot])
                else:
                    p = answers[slot]
                    record[name] = Score(p.label, p.score, p.probabilities, p.adapter, seg, version=p.version)
            out.append(record)
        return out

    def score_columns(self, scores: list[dict[str, Score]], questions: list[str]) -> dict[str, list]:
        """Columns for a scores file: per question ``q`` (label or score), ``q_prob_<label>`` per class,
        ``q_adapter``, ``q_error`` where some record could not be answered for it, and ``q_explanation`` (with
        ``q_explanation_fields`` where a template built the text) when the scores were explained."""
        cols: dict[str, list] = {}
        for name in questions:
            got = [record[name] for record in scores]
            cols[name] = [s.label if s.score is None else s.score for s in got]
            for label in self.questions[name].labels or []:
                cols[f"{name}_prob_{label}"] = [None if s.error else s.probabilities[label] for s in got]
            cols[f"{name}_adapter"] = [s.adapter for s in got]
            if any(s.version is not None for s in got):  # versioned banks only
                cols[f"{name}_version"] = [s.version for s in got]
            if any(s.error for s in got):
                cols[f"{name}_error"] = [s.error for s in got]
            if any(s.explanation is not None for s in got):
                from peftkit.inference.explain import explanation_columns

                cols.update(explanation_columns([s.explanation for s in got], prefix=f"{name}_"))
        return cols

    def question_names(self, questions: list[str] | None = None) -> list[str]:
        """`questions` checked against the bank's (one line naming the unknown ones), or all of them."""
        if not questions:
            return list(self.questions)
        unknown = [q for q in questions if q not in self.questions]
        if unknown:
            raise PeftkitError(
                f"no question {', '.join(map(repr, unknown))} in bank {self.folder}; its questions: "
                f"{', '.join(self.questions)}"
            )
        return list(dict.fromkeys(questions))

    # -- one question: texts in, predictions out (the API of one-question banks) ----------------------------------

    def predict(
        self, texts: list[str], segments: str | list[str | None] | None = None, *, question: str | None = None
    ) -> list[Prediction]:
        """One `Prediction` per text, in order, each answered by its segment's adapter (``.adapter`` says which).

        ``segments``: one per text, or one for all, or None for the global adapter. ``question``: which question
        answers (needed when the bank has several).
        """
        q = self.question(question)
        return q.predict(texts, self._adapter_names(q, texts, segments))

    def predict_columns(self, texts: list[str], segments, *, question: str | None = None) -> dict[str, list]:
        """Columns for a predictions file: ``prediction``, one ``prob_<label>`` per class, ``adapter``."""
        return prediction_columns(
            self.predict(texts, segments, question=question), self.question(question).labels
        )

    @staticmethod
    def _adapter_names(question: Question, texts, segments) -> list[str]:
        if isinstance(texts, str):
            raise TypeError("predict() takes a list of texts; wrap a single text in a list")
        if segments is None or isinstance(segments, str):
            return [question.resolve(segments)] * len(texts)
        if len(segments) != len(texts):
            raise PeftkitError(
                f"got {len(texts)} texts but {len(segments)} segments; give one segment per text"
            )
        return question.resolve_all(segments)

    def logits(self, texts: list[str], adapter_names: list[str]):
        """Head outputs (N, num_outputs) of the only question, row ``i`` through adapter ``adapter_names[i]``."""
        return self.question().logits(texts, adapter_names)

    def resolve(self, segment: str | None) -> str:
        """The adapter of the only question that answers `segment` (`Question.resolve`)."""
        return self.question().resolve(segment)

    def resolve_all(self, segments: list[str | None]) -> list[str]:
        return self.question().resolve_all(segments)

    def activate(self, name: str) -> None:
        """Make adapter `name` of the only question the active one (what the switch benchmark times)."""
        self.question().activate(name)

    @property
    def bank(self) -> BankFile:
        """The only question's bank file."""
        return self.question().bank

    @property
    def task(self):
        return self.question().task

    @property
    def labels(self) -> list[str] | None:
        return self.question().labels

    @property
    def adapters(self) -> dict[str, BankEntry]:
        return self.question().adapters

    @property
    def segments(self) -> dict[str, str]:
        return self.question().segments

    @property
    def fallback(self) -> str:
        return self.question().fallback

    @property
    def loaded(self) -> list[str]:
        return [a for q in self.questions.values() for a in q.loaded]

    @property
    def model(self):
        """The only question's model with its loaded adapters attached; None until the first one is loaded."""
        return self.question().model

    def add(
        self,
        name: str,
        folder: str | Path,
        *,
        segments: list[str] | None = None,
        persist: bool = False,
        question: str | None = None,
    ) -> None:
        """Add an adapter at runtime (no restart) and route `segments` (default: ``[name]``) to it.

        The adapter must share the question's base (same weights hash), method, task, labels and max_length. With
        ``persist`` the folder is copied into the question's folder and its ``bank.json`` rewritten, so the next
        open has it too.
        """
        self.question(question).add(name, folder, segments=segments, persist=persist)

    def remove(self, name: str, *, persist: bool = False, question: str | None = None) -> None:
        """Drop an adapter from memory and routing; its segments then follow the fallback."""
        self.question(question).remove(name, persist=persist)

    def describe(self) -> dict[str, Any]:
        """What the bank holds, as JSON: base, quant and each question's method, task, labels, segments, fallback,
        adapters with metrics (a one-question bank: that question's keys at the top, as before questions)."""
        head = {"bank": str(self.folder), "base": self.index.base.to_json()}
        # a one-question bank: the keys in their order from before questions (method, task, labels, quant, ...)
        if self.single:
            described = self.question().describe()
            first = {key: described.pop(key) for key in ("method", "task", "labels")}
            return {**head, **first, "quant": self.quant, **described}
        return {
            **head,
            "quant": self.quant,
            "questions": {n: q.describe() for n, q in self.questions.items()},
        }

    def close(self) -> None:
        """Drop the model and adapters from memory; the bank answers nothing after this."""
        for question in self.questions.values():
            question.close()
        self._base = None


def segment_of(record: dict[str, Any], column: str | None) -> str | None:
    """The record's segment value as text ("" for an empty one: the fallback answers); None without a column."""
    if column is None:
        return None
    value = record.get(column)
    if is_missing(value):
        return ""
    return str(value)
