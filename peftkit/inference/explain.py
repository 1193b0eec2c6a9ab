"""Explanations: which parts of a text moved an adapter's answer, token by token and template field by field.

    from peftkit.inference.explain import explain_texts
    model = peftkit.load("runs/reviews-multilingual-e5-small-lora")
    [e] = explain_texts(model, ["房间很干净，服务员很热情"], top_k=3)
    e.top_pairs()   # [["热情", 0.41], ["干净", 0.37], ["服务员", -0.05]]

Method: layer integrated gradients (Sundararajan et al. 2017, "Axiomatic Attribution for Deep Networks"), Captum's
``LayerIntegratedGradients``, over the output of the model's input embedding layer (``get_input_embeddings()`` of
the adapter-wrapped model). Every method explains alike: LoRA and AdaLoRA change weights behind the embeddings,
prefix tuning adds past key/values (not embeddings), bottleneck adapters sit inside the layers; encoders and decoders
alike (a decoder's head reads the last non-pad token).

What is attributed, one number per row (`Explanation.target` says which):

- classification: the logit of the predicted class;
- ordinal: the sum of the K-1 cumulative logits (each the log-odds of "above label k"): a positive attribution
  pushes towards higher labels, whichever label was predicted;
- regression: the score.

Baseline: the row's own token sequence with every token that is not special ([CLS], [SEP], BOS...) replaced by the
pad token's embedding. The model always reads the row's real token ids and attention mask, so positions, masks and
a decoder's last-token pooling are the row's at every step; only the embedding vectors move from the pad token's to
the tokens' own. Special tokens keep their embedding (their attribution is exactly 0). Completeness: the token
attributions sum to f(row) - f(baseline) up to the convergence delta (`Explanation.delta`, Captum's definition:
sum of attributions minus that difference), which shrinks as ``n_steps`` grows (Gauss-Legendre points, Captum's
default): on multilingual-e5-small its median is 17% of the difference at 8 steps, 6% at 16, 1% at 32.

Precision: the interpolated embeddings, their gradients and the sums are float32 whatever the base's dtype. A small
cast module sits between the embedding layer and the rest of the model (a forward hook on the embedding), Captum
attributes to its float32 input, and it casts to the base's dtype (bfloat16, or float32 under an 8-bit base whose
embeddings are never quantised) on the way in. Gradients are taken with ``torch.autograd.grad`` with respect to those
embeddings only: no weight gets a ``.grad``, and the model is back in its own train/eval mode afterwards.

Cost per row: ``n_steps`` forward and backward passes run as one batch (``internal_batch_size``), plus the two
single-row forwards Captum runs at the path's ends (the row's output picks the target; both give the delta, so the
delta costs no pass of its own). docs/explanations.md has the measured figures.

Threads: the hooks act only in the thread that explains, so another thread's predictions on the same model are
untouched; a bank's question is held (``Question.lock``) while it explains, as its forward passes are.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from peftkit.data.privacy import adapter_masks, mask_text
from peftkit.data.template import Template
from peftkit.errors import PeftkitError

if TYPE_CHECKING:
    from peftkit.inference.predictor import Predictor
    from peftkit.inference.question import Question

DEFAULT_STEPS = 16  # Gauss-Legendre points; cost against delta by steps: docs/explanations.md
DEFAULT_TOP_K = 5
MAX_STEPS = 256
Spans = dict[str, list[tuple[int, int]]]  # field -> [(start, end)] in the text the model read


@dataclass(frozen=True)
class ExplainOptions:
    """How to explain: ``top_k`` tokens listed per row, ``n_steps`` integration points (more: smaller delta,
    proportionally slower)."""

    top_k: int = DEFAULT_TOP_K
    n_steps: int = DEFAULT_STEPS

    def __post_init__(self) -> None:
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1:
            raise PeftkitError(f"top_k={self.top_k!r} (--top-k): give a whole number of tokens, at least 1")
        if (
            isinstance(self.n_steps, bool)
            or not isinstance(self.n_steps, int)
            or not 2 <= self.n_steps <= MAX_STEPS
        ):
            raise PeftkitError(
                f"n_steps={self.n_steps!r} (--explain-steps): give a whole number from 2 to {MAX_STEPS} "
                f"(default {DEFAULT_STEPS})"
            )


@dataclass(frozen=True)
class TokenScore:
    """One token the model read: its character span ``[start, end)`` in the text, that span, and its attribution."""

    start: int
    end: int
    text: str
    attribution: float


@dataclass(frozen=True)
class Explanation:
    """Why one row got its answer.

    ``text``: what the model read (personal data masked as the adapter's training masked it); ``target``: the scalar
    explained; ``label``: the predicted label (None for regression); ``tokens``: every non-special token in text
    order; ``fields``: per template field, the sum of its tokens' attributions (None when no template built the
    text); ``output``/``baseline_output``: the target at the row and at the baseline; ``delta``: Captum's convergence
    delta, sum of attributions minus (output - baseline_output); ``truncated``: the text ran past the adapter's
    max_length and its tail was not read; ``seconds``: the time this row took.
    """

    text: str
    target: str
    label: str | None
    tokens: list[TokenScore]
    top_k: int
    fields: dict[str, float] | None
    output: float
    baseline_output: float
    delta: float
    truncated: bool
    seconds: float = dataclasses.field(
        default=0.0, compare=False
    )  # two equal explanations may take different times

    @property
    def top(self) -> list[TokenScore]:
        """The ``top_k`` tokens with the largest |attribution| (ties: first in the text); tokens with no characters
        of their own (a lone SentencePiece "▁") are left out."""
        ranked = sorted(
            (t for t in self.tokens if t.end > t.start), key=lambda t: (-abs(t.attribution), t.start)
        )
        return ranked[: self.top_k]

    def top_pairs(self) -> list[list]:
        """``[[token_text, attribution], ...]``, largest |attribution| first: the ``explanation`` column."""
        return [[t.text, round(t.attribution, 6)] for t in self.top]

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "label": self.label,
            "top": self.top_pairs(),
            "fields": self.fields,
            "tokens": [[t.start, t.end, round(t.attribution, 6)] for t in self.tokens],
            "output": round(self.output, 6),
            "baseline_output": round(self.baseline_output, 6),
            "delta": round(self.delta, 6),
            "truncated": self.truncated,
        }


# -- entry points ---------------------------------------------------------------------------------------------------


def explain_texts(
    predictor: Predictor,
    texts: list[str],
    *,
    top_k: int = DEFAULT_TOP_K,
    n_steps: int = DEFAULT_STEPS,
    spans: list[Spans | None] | None = None,
) -> list[Explanation]:
    """Explain `predictor`'s answer for each text (masked first when its adapter was trained with ``data.mask_pii``).

    Args:
        predictor: from `peftkit.load`.
        texts: finished texts, as `Predictor.predict` takes them.
        top_k: tokens listed in `Explanation.top`.
        n_steps: integration points (`ExplainOptions`).
        spans: per text, where each template field lies in it (`template_text`), for per-field sums.
    """
    options = ExplainOptions(top_k, n_steps)
    if isinstance(texts, str):
        raise TypeError("explain_texts() takes a list of texts; wrap a single text in a list")
    manifest = predictor.manifest
    masks = manifest is not None and adapter_masks(manifest.config)
    return explain_model(
        predictor.model,
        predictor.tokenizer,
        [mask_text(t) if masks else t for t in texts],
        task=predictor.task,
        labels=predictor.labels,
        max_length=predictor.max_length,
        options=options,
        spans=spans,
        decision=getattr(predictor, "decision", None),
    )


def explain_records(
    predictor: Predictor,
    records: list[dict[str, Any]],
    *,
    template: str | None = None,
    top_k: int = DEFAULT_TOP_K,
    n_steps: int = DEFAULT_STEPS,
) -> list[Explanation]:
    """Explain `predictor`'s answer for records whose text a template builds (default: the adapter's training
    template), with per-field sums; a record that cannot be rendered is a `PeftkitError` naming it."""
    config = predictor.manifest.config if predictor.manifest is not None else {}
    template = template or config.get("data", {}).get("template")
    if template is None:
        raise PeftkitError(
            f"adapter {predictor.adapter!r} reads a text column, not a template; explain its texts with "
            "explain_texts, or give template="
        )
    built = [template_text(r, template, mask=adapter_masks(config)) for r in records]
    return explain_texts(
        predictor, [t for t, _ in built], top_k=top_k, n_steps=n_steps, spans=[s for _, s in built]
    )


def explain_question(
    question: Question,
    texts: list[str],
    adapters: list[str],
    options: ExplainOptions,
    spans: list[Spans | None] | None = None,
) -> list[Explanation]:
    """Explain each text through its adapter of a bank's question (``adapters[i]`` answers ``texts[i]``), masked as
    that adapter's training masked; the question is held (its lock) while each adapter explains."""
    out: list[Explanation | None] = [None] * len(texts)
    for name in dict.fromkeys(adapters):
        rows = [i for i, a in enumerate(adapters) if a == name]
        masks = adapter_masks(adapter_config(question, name))
        with question.lock:
            question.activate(name)
            got = explain_model(
                question.model,
                question.tokenizer,
                [mask_text(texts[i]) if masks else texts[i] for i in rows],
                task=question.task,
                labels=question.labels,
                max_length=question.bank.max_length,
                options=options,
                spans=[spans[i] for i in rows] if spans is not None else None,
                decision=getattr(question, "decisions", {}).get(name),
            )
        for i, explanation in zip(rows, got):
            out[i] = explanation
    return out


def explain_scores(
    bank, plan, scores: list[dict], records: list[dict[str, Any]], options: ExplainOptions
) -> list:
    """`scores` (from ``bank.assemble(plan, ...)``) with each answered `Score` carrying its `Explanation`; field sums
    where the answering adapter's template built the text. `records` are the records `plan` was made from."""
    from dataclasses import replace

    wanted: dict[int, tuple[int, str]] = {}  # unit -> (record, question)
    for r, record in enumerate(scores):
        for name, score in record.items():
            if score.error is None:
                wanted[plan.slots[r][name]] = (r, name)
    explained: dict[int, Explanation] = {}
    for name in plan.questions:
        units = [u for u, (_, q) in wanted.items() if q == name]
        question = bank.questions[name]
        spans = []
        for u in units:
            data = adapter_config(question, plan.units[u].adapter).get("data", {})
            spans.append(record_spans(records[wanted[u][0]], data, plan.units[u].text))
        got = explain_question(
            question,
            [plan.units[u].text for u in units],
            [plan.units[u].adapter for u in units],
            options,
            spans,
        )
        explained.update(zip(units, got))
    return [
        {
            name: replace(score, explanation=explained[plan.slots[r][name]]) if score.error is None else score
            for name, score in record.items()
        }
        for r, record in enumerate(scores)
    ]


def adapter_config(question: Question, adapter: str) -> dict[str, Any]:
    """The stored run config of one of `question`'s adapters (its manifest's ``config``)."""
    # Question keeps its adapters' manifests privately; a public accessor there would replace this one read.
    return question._manifests[adapter].config or {}


# -- texts with their fields ----------------------------------------------------------------------------------------


def template_text(record: dict[str, Any], template: str, *, mask: bool) -> tuple[str, Spans | None]:
    """The text `template` builds from `record` exactly as scoring builds it (rendered, stripped, personal data
    masked when `mask`), and where each field's value lies in it. The spans are None when masking replaced
    something that crosses a field's edge (a phone number split over two fields), so no field owns it."""
    pieces = Template.parse(template).render_pieces(record)
    full = "".join(text for _, text in pieces)
    want = mask_text(full.strip()) if mask else full.strip()
    if mask:
        pieces = [(field, mask_text(text)) for field, text in pieces]
    joined = "".join(text for _, text in pieces)
    lead = len(joined) - len(joined.lstrip())
    if joined.strip() != want:
        return want, None
    spans: Spans = {}
    at = -lead
    for field, text in pieces:
        start, end = max(at, 0), min(at + len(text), len(want))
        if field is not None and end > start:
            spans.setdefault(field, []).append((start, end))
        elif field is not None:
            spans.setdefault(field, [])
        at += len(text)
    return want, spans


def record_spans(record: dict[str, Any], data: dict[str, Any], text: str) -> Spans | None:
    """Where each template field lies in `text`, the text an adapter's data config (``template``, ``mask_pii``) built
    from `record`; None when no template built it."""
    template = data.get("template")
    if template is None:
        return None
    masks = adapter_masks({"data": data})
    built, spans = template_text(record, template, mask=masks)
    return spans if built == (mask_text(text) if masks else text) else None


def field_sums(tokens: list[TokenScore], spans: Spans) -> dict[str, float]:
    """Per field, the attributions of the tokens inside its spans; a token that straddles a field's edge counts in
    proportion to the characters it shares with the field."""
    sums = {}
    for field, ranges in spans.items():
        total = 0.0
        for t in tokens:
            width = t.end - t.start
            if width <= 0:
                continue
            shared = sum(max(0, min(t.end, e) - max(t.start, s)) for s, e in ranges)
            total += t.attribution * shared / width
        sums[field] = total
    return sums


# -- the attribution ------------------------------------------------------------------------------------------------


def explain_model(
    model,
    tokenizer,
    texts: list[str],
    *,
    task,
    labels: list[str] | None,
    max_length: int,
    options: ExplainOptions,
    spans: list[Spans | None] | None = None,
    decision=None,
) -> list[Explanation]:
    """Explain `model`'s answer for each (already masked) text; see the module docstring. `task` is the adapter's
    task spec (``Predictor.task``: its ``name`` and ``decode``); `decision`, when the adapter has one (a fitted
    threshold), picks the predicted label as `predict` does. The caller holds whatever lock guards the model's
    adapters."""
    from captum.attr import LayerIntegratedGradients

    if not getattr(tokenizer, "is_fast", False):
        raise PeftkitError(
            "explanations need a fast tokenizer (character offsets of each token); this base's tokenizer is not"
        )
    swap = _EmbeddingSwap(model)
    handle = swap.embedding.register_forward_hook(swap.hook)
    was_training = model.training
    model.eval()
    try:
        lig = LayerIntegratedGradients(swap.forward, swap.cast)
        return [
            _explain_one(
                swap,
                lig,
                tokenizer,
                text,
                (task, labels, decision),
                max_length,
                options,
                spans[i] if spans else None,
            )
            for i, text in enumerate(texts)
        ]
    finally:
        handle.remove()
        model.train(was_training)


def _explain_one(swap, lig, tokenizer, text, head, max_length, options, spans) -> Explanation:
    import torch

    started = time.perf_counter()
    enc = tokenizer(
        text,
        truncation=True,
        max_length=max_length,
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
    )
    device = swap.device
    ids = torch.tensor([enc["input_ids"]], device=device)  # (1, T)
    mask = torch.tensor([enc["attention_mask"]], device=device)
    types = torch.tensor([enc["token_type_ids"]], device=device) if "token_type_ids" in enc else None
    special = torch.tensor(enc["special_tokens_mask"], dtype=torch.bool, device=device)
    baseline = ids.clone()
    baseline[0, ~special] = swap.pad_id(tokenizer)
    swap.row = _Row(head)
    try:
        attributions = lig.attribute(
            ids,
            baselines=baseline,
            additional_forward_args=(ids, mask, types),
            n_steps=options.n_steps,
            internal_batch_size=options.n_steps,  # every step of a row in one batch
            attribute_to_layer_input=True,
        )
        row = swap.row
    finally:
        swap.row = None
    per_token = attributions[0].float().sum(-1).detach().cpu().tolist()  # (T,)
    output, baseline_output = row.scalar(row.ends["input"]), row.scalar(row.ends["baseline"])
    total = float(sum(per_token))
    target, label = row.target, row.label
    tokens = _merged(
        [
            (s, e, a)
            for (s, e), a, sp in zip(enc["offset_mapping"], per_token, enc["special_tokens_mask"])
            if not sp
        ],
        text,
    )
    read = max((t.end for t in tokens), default=0)
    return Explanation(
        text=text,
        target=target,
        label=label,
        tokens=tokens,
        top_k=options.top_k,
        fields=field_sums(tokens, spans) if spans is not None else None,
        output=output,
        baseline_output=baseline_output,
        delta=total - (output - baseline_output),  # Captum's convergence delta
        truncated=read < len(text.rstrip()) and len(enc["input_ids"]) >= max_length,
        seconds=time.perf_counter() - started,
    )


_UNDECIDED = object()


class _Row:
    """One row's explanation in progress: the head (task, labels, decision), the explained output once the row's
    own forward pass has picked it, and the outputs at both ends of the path."""

    def __init__(self, head):
        self.head = head
        self.column = _UNDECIDED
        self.target = self.label = None
        self.ends: dict = {}

    def decide(self, logits) -> None:
        self.column, self.target, self.label = _target(*self.head, logits[0].detach())

    def scalar(self, logits) -> float:
        return float(logits[self.column]) if self.column is not None else float(logits.sum())


def _same(a, b) -> bool:
    import torch

    return a.shape == b.shape and bool(torch.equal(a, b))


def _no_grad():
    import torch

    return torch.no_grad()


def _merged(pieces: list[tuple[int, int, float]], text: str) -> list[TokenScore]:
    """Tokens in text order, those that share characters merged into one (attributions summed): byte-level BPE
    splits one Chinese character over several tokens, which cannot be shown apart."""
    merged: list[list] = []
    for start, end, attribution in pieces:
        if merged and start < merged[-1][1] and end > start:
            merged[-1][1] = max(merged[-1][1], end)
            merged[-1][2] += attribution
        else:
            merged.append([start, end, attribution])
    return [TokenScore(s, e, text[s:e], a) for s, e, a in merged]


def _target(task, labels: list[str] | None, decision, logits) -> tuple[int | None, str, str | None]:
    """(head output to explain, None for the sum of all; its description; the predicted label)."""
    if task.name == "regression":
        return 0, "score", None
    row = logits[None].cpu().numpy()  # (1, num_outputs)
    decoded = task.decode(row) if decision is None else task.decode(row, decision)
    index = int(decoded.index[0])  # the label `predict` gives
    if task.name == "ordinal":
        return None, "sum of the ordinal logits (up: towards higher labels)", labels[index]
    return index, f"logit of {labels[index]!r}", labels[index]


class _EmbeddingSwap:
    """The hooks an explanation runs through. In the explaining thread, the input embedding's output is replaced by
    the embedding of ``ids`` (the row's or the baseline's tokens), in float32, passed through `cast` (the layer Captum
    attributes to, whose input it interpolates); the model itself is always called with the row's real ids."""

    def __init__(self, model):
        import torch
        from torch import nn

        class Cast(nn.Module):
            dtype = torch.float32

            def forward(self, x):  # (B, T, d) float32 -> the base's dtype
                return x.to(self.dtype)

        self.model = model
        self.embedding = _input_embeddings(model)
        self.cast = Cast()
        self.device = self.embedding.weight.device
        self.thread = threading.get_ident()
        self.ids = None
        self.row: _Row | None = None

    def hook(self, module, args, output):
        if threading.get_ident() != self.thread or self.ids is None:
            return None  # another thread's forward pass: untouched
        self.cast.dtype = output.dtype
        return self.cast(module.forward(self.ids).float())

    def forward(self, ids, real_ids, mask, types):
        """The explained scalar per row, (B,) float32: what Captum differentiates.

        Captum runs the row and the baseline alone first (to read the layer's input at both ends): their outputs
        are kept (`_Row.ends`), the row's picks the target, so the endpoints cost no forward pass of their own.
        """
        logits = self.logits(ids, real_ids, mask, types)  # (B, num_outputs)
        row = self.row
        if ids.shape[0] == 1:
            end = "input" if _same(ids, real_ids) else "baseline"
            if row.column is _UNDECIDED:
                with _no_grad():
                    row.decide(logits if end == "input" else self.logits(real_ids, real_ids, mask, types))
            row.ends[end] = logits.detach()[0]
        return logits[:, row.column] if row.column is not None else logits.sum(-1)

    def logits(self, ids, real_ids, mask, types):
        self.ids = ids
        try:
            kwargs = {"token_type_ids": types} if types is not None else {}
            return self.model(
                input_ids=real_ids, attention_mask=mask, **kwargs
            ).logits.float()  # (B, num_outputs)
        finally:
            self.ids = None

    def pad_id(self, tokenizer) -> int:
        for token_id in (tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.eos_token_id):
            if token_id is not None:
                return token_id
        raise PeftkitError(
            "the base's tokenizer has no pad, unk or eos token to build the explanation's baseline"
        )


def _input_embeddings(model):
    """The token embedding layer: ``get_input_embeddings()`` of the model, or of the HF model that peftkit's own
    method wrappers (prefix, bottleneck: plain modules without attribute forwarding) hold as ``.model``."""
    inner = model
    for _ in range(4):
        if hasattr(inner, "get_input_embeddings"):
            return inner.get_input_embeddings()
        inner = getattr(inner, "model", None)
    raise PeftkitError(
        f"cannot find the input embeddings of a {type(model).__name__}; it cannot be explained"
    )


# -- columns for a predictions file ---------------------------------------------------------------------------------


def explanation_columns(explanations: list[Explanation | None], prefix: str = "") -> dict[str, list]:
    """``<prefix>explanation`` (the top tokens as a JSON list of ``[token_text, attribution]``) and, when a template
    built some text, ``<prefix>explanation_fields`` (a JSON object field -> attribution); None where a row has
    none."""
    cols = {
        f"{prefix}explanation": [
            None if e is None else json.dumps(e.top_pairs(), ensure_ascii=False) for e in explanations
        ]
    }
    if any(e is not None and e.fields is not None for e in explanations):
        cols[f"{prefix}explanation_fields"] = [
            None if e is None or e.fields is None else json.dumps(_rounded(e.fields), ensure_ascii=False)
            for e in explanations
        ]
    return cols


def _rounded(fields: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 6) for k, v in fields.items()}
