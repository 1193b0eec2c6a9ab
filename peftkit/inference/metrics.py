"""Live answer metrics for ``GET /metrics`` (Prometheus text exposition format 0.0.4), per question, adapter and
version: requests, answers, errors, and a histogram of each answer's score, the figure a canary is compared on.

The score of an answer: the regression score; the probability of the last label for two labels (the positive
class: "yes" of ["no", "yes"]); the top label's probability otherwise. Buckets are fixed at 0.05 steps over [0, 1],
so two versions' histograms line up bucket for bucket (a regression score outside [0, 1] lands in an end bucket).
`compare_versions` reads two versions' histograms back (from a scrape) into counts, means and the PSI.
"""

from __future__ import annotations

import math
import re
import threading
from collections import defaultdict
from typing import Any

BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 21))  # upper bounds; +Inf is added
_LABELS = ("question", "adapter", "version")


class Metrics:
    """Counters and histograms by (question, adapter, version); thread-safe."""

    def __init__(self):
        self._lock = threading.Lock()
        self.requests: dict[tuple, int] = defaultdict(int)
        self.answers: dict[tuple, int] = defaultdict(int)
        self.errors: dict[tuple, int] = defaultdict(int)
        self.buckets: dict[tuple, list[int]] = {}
        self.sums: dict[tuple, float] = defaultdict(float)
        self.roles: dict[tuple, str] = {}  # (question, adapter, version) -> production | canary, as last seen

    def observe(self, question: str, answers: list[Any], labels: list[str] | None) -> None:
        """Count one request's answers of `question` (`Score`s or `Prediction`s, an error as a str or ``.error``)."""
        seen = set()
        with self._lock:
            for a in answers:
                error = a if isinstance(a, str) else getattr(a, "error", None)
                adapter = "" if isinstance(a, str) else (a.adapter or "")
                key = (question, adapter, ("" if isinstance(a, str) else a.version) or adapter)
                seen.add(key)
                if error is not None:
                    self.errors[key] += 1
                    continue
                self.answers[key] += 1
                value = answer_value(a, labels)
                counts = self.buckets.setdefault(key, [0] * (len(BUCKETS) + 1))
                counts[next((i for i, b in enumerate(BUCKETS) if value <= b), len(BUCKETS))] += 1
                self.sums[key] += value
            for key in seen:
                self.requests[key] += 1

    def set_roles(self, roles: dict[tuple, str]) -> None:
        with self._lock:
            self.roles = dict(roles)

    def render(self) -> str:
        """The Prometheus text exposition of every series."""
        with self._lock:
            lines = []
            for name, kind, help_, series in (
                (
                    "peftkit_requests_total",
                    "counter",
                    "requests answered in part by the version",
                    self.requests,
                ),
                ("peftkit_answers_total", "counter", "answers given by the version", self.answers),
                ("peftkit_errors_total", "counter", "rows the version could not answer", self.errors),
            ):
                lines += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}"]
                lines += [f"{name}{{{_labels(k)}}} {v}" for k, v in sorted(series.items())]
            lines += [
                "# HELP peftkit_score answer score: regression score, positive or top-label probability",
                "# TYPE peftkit_score histogram",
            ]
            for key, counts in sorted(self.buckets.items()):
                total = 0
                for bound, n in zip([*map(str, BUCKETS), "+Inf"], counts):
                    total += n
                    lines.append(f'peftkit_score_bucket{{{_labels(key)},le="{bound}"}} {total}')
                lines.append(f"peftkit_score_sum{{{_labels(key)}}} {self.sums[key]!r}")
                lines.append(f"peftkit_score_count{{{_labels(key)}}} {total}")
            lines += [
                "# HELP peftkit_version_role 1 for the version's role now",
                "# TYPE peftkit_version_role gauge",
            ]
            lines += [
                f'peftkit_version_role{{{_labels(k)},role="{r}"}} 1' for k, r in sorted(self.roles.items())
            ]
        return "\n".join(lines) + "\n"


def answer_value(answer: Any, labels: list[str] | None) -> float:
    if answer.score is not None:
        return float(answer.score)
    probs = answer.probabilities or {}
    if labels and len(labels) == 2:
        return float(probs[labels[-1]])
    return float(max(probs.values()))


def _labels(key: tuple) -> str:
    return ",".join(f'{n}="{_escape(v)}"' for n, v in zip(_LABELS, key))


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


# -- reading a scrape back ------------------------------------------------------------------------------------------


def parse_histograms(text: str) -> tuple[dict[tuple, dict[str, Any]], dict[tuple, str]]:
    """From a ``/metrics`` scrape: (question, adapter, version) -> {"buckets": per-bucket counts (not cumulative),
    "sum", "count"}, and the roles (production, canary)."""
    hists: dict[tuple, dict[str, Any]] = {}
    roles: dict[tuple, str] = {}
    for name, labels, value in _samples(text):
        key = tuple(labels.get(n, "") for n in _LABELS)
        if name == "peftkit_version_role":
            roles[key] = labels["role"]
        elif name == "peftkit_score_bucket":
            hists.setdefault(key, {"cumulative": {}})["cumulative"][float(labels["le"])] = value
        elif name in ("peftkit_score_sum", "peftkit_score_count"):
            hists.setdefault(key, {"cumulative": {}})[name.rsplit("_", 1)[1]] = value
    for h in hists.values():
        cumulative = [v for _, v in sorted(h.pop("cumulative").items())]
        h["buckets"] = [b - a for a, b in zip([0.0, *cumulative], cumulative)]
    return hists, roles


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def _samples(text: str):
    """(name, labels, value) per sample line of a Prometheus text exposition (comments skipped). The format is
    what `Metrics.render` writes; no client library is needed to read it back."""
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None or line.startswith("#"):
            continue
        labels = {
            k: bytes(v, "utf-8").decode("unicode_escape") for k, v in _LABEL.findall(match.group(2) or "")
        }
        yield match.group(1), labels, float(match.group(3))


def psi(expected: list[float], actual: list[float], eps: float = 1e-4) -> float:
    """Population stability index of `actual` against `expected` (bucket counts): sum (a - e) ln(a / e) over the
    buckets' shares, each share floored at `eps`. Under 0.1: stable; 0.1-0.25: moderate shift; above: large."""
    te, ta = sum(expected) or 1.0, sum(actual) or 1.0
    total = 0.0
    for e, a in zip(expected, actual):
        pe, pa = max(e / te, eps), max(a / ta, eps)
        total += (pa - pe) * math.log(pa / pe)
    return total


def ks(expected: list[float], actual: list[float]) -> float:
    """The largest gap between the two cumulative distributions, read at the bucket bounds (a binned KS)."""
    te, ta = sum(expected) or 1.0, sum(actual) or 1.0
    ce = ca = gap = 0.0
    for e, a in zip(expected, actual):
        ce, ca = ce + e / te, ca + a / ta
        gap = max(gap, abs(ce - ca))
    return gap


def compare_versions(text: str, question: str | None = None) -> list[dict[str, Any]]:
    """Each adapter with a canary (by the roles in the scrape `text`): production's and canary's counts and mean
    scores, PSI and binned KS of the canary against production."""
    hists, roles = parse_histograms(text)
    rows = []
    for key, role in sorted(roles.items()):
        if role != "canary" or (question is not None and key[0] != question):
            continue
        prod = next((k for k, r in roles.items() if r == "production" and k[:2] == key[:2]), None)
        if prod is None:
            continue
        p, c = hists.get(prod), hists.get(key)
        row = {"question": key[0], "adapter": key[1], "production": prod[2], "canary": key[2]}
        for name, h in (("production", p), ("canary", c)):
            count = h["count"] if h else 0
            row[f"{name}_count"] = int(count)
            row[f"{name}_mean"] = h["sum"] / count if h and count else None
        both = p is not None and c is not None and p["count"] and c["count"]
        row["psi"] = psi(p["buckets"], c["buckets"]) if both else None
        row["ks"] = ks(p["buckets"], c["buckets"]) if both else None
        rows.append(row)
    return rows
