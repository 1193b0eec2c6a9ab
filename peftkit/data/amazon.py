"""Real English product-review sentences with human sentiment *intensity* (``builtin:amazon-snippets``).

Provenance: ``amazonReviewSnippets_GroundTruth.txt`` from the ``vadersentiment`` 3.3.2 source distribution (MIT
licence; Hutto & Gilbert, "VADER", ICWSM 2014), fetched into peftkit's cache by ``python -m
peftkit.data.fetch_vader`` (see that module: hash-checked, set-up runs it). The sentences come from customer reviews
of five products (two digital cameras, a DVD player, an MP3 player, a mobile phone) first collected by Hu & Liu (KDD 2004); each sentence's
score is the mean of 20 human ratings on -4 (extremely negative) ... +4 (extremely positive). Measured here: 3,708
sentences, from 300 distinct reviews (ids run to 309; the README says 309 reviews, 9 numbers are absent), 2,128
scored > 0, 1,482 < 0 and 98 exactly 0; median 15 words; 11 sentences repeat another one word for word.

Columns: ``id`` (``<review>_<sentence>``, as in the file), ``review`` and ``group`` (the review number, the same
value: ``group`` is what ``data.group_column`` names so that a review's sentences stay on one side of the split),
``sentence`` (its position in the review), ``text``, ``score`` (float), ``sentiment`` and ``intensity``:

- ``sentiment``: ``positive`` (score > 0), ``negative`` (< 0), ``neutral`` (exactly 0, 98 rows). The 98 zeros are
  kept in ``builtin:amazon-snippets`` (so its counts are the file's) and dropped in ``builtin:amazon-snippets/polar``
  (3,610 rows), the binary sentiment set: a mean of exactly 0 is 20 raters cancelling out, not a third class worth
  learning from 98 rows.
- ``intensity``: how strong the opinion is, whichever its sign, ordered ``weak < medium < strong``: ``|score| < 1``
  weak, ``1 <= |score| < 2`` medium, ``|score| >= 2`` strong (`INTENSITY_CUTS`, whole points of the raters' scale:
  below 1 is "slightly" or nothing, 2 and above "moderately" to "extremely"). Counts: 1,253 weak (the 98 zeros
  included), 1,385 medium, 1,070 strong. The closest real analogue peftkit has of purchase-intent *strength*: an
  ordered "how strong" label a human gave to a shopper's own words.
"""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd

from peftkit.data.builtin import BuiltinTask
from peftkit.data.fetch_vader import COMMAND, snippets_path
from peftkit.errors import PeftkitError

INTENSITY = ["weak", "medium", "strong"]
INTENSITY_CUTS = (1.0, 2.0)  # |score| below the first: weak; below the second: medium; else strong
SENTIMENTS = ["negative", "neutral", "positive"]


def amazon_frame(polar: bool = False) -> pd.DataFrame:
    """The Amazon review sentences, one row per sentence, in file order.

    Args:
        polar: drop the 98 sentences whose mean score is exactly 0 (``builtin:amazon-snippets/polar``).

    Returns:
        A new frame with the columns of the module docstring; ``attrs`` has ``source`` and ``rows_read``.

    Raises:
        PeftkitError: the file has not been fetched (the message gives the command), or is malformed.
    """
    frame = _load().copy(deep=True)
    if polar:
        frame = frame[frame["sentiment"] != "neutral"].reset_index(drop=True)
    frame.attrs.update(
        source="builtin:amazon-snippets" + ("/polar" if polar else ""),
        file=str(snippets_path()),
        rows_read=len(_load()),
    )
    return frame


@functools.lru_cache(maxsize=1)
def _load() -> pd.DataFrame:
    file = snippets_path()
    if not file.is_file():
        raise PeftkitError(f"builtin:amazon-snippets: {file} is missing; fetch it once with `{COMMAND}`")
    # CRLF line ends; universal-newline reading turns them into "\n". The last line has none.
    lines = [line for line in file.read_text(encoding="utf-8").split("\n") if line.strip()]
    rows = [line.split("\t") for line in lines]
    bad = next((i for i, row in enumerate(rows, 1) if len(row) != 3), None)
    if bad is not None:
        raise PeftkitError(f"{file} line {bad}: expected id<TAB>score<TAB>text; rerun `{COMMAND}`")
    frame = pd.DataFrame(rows, columns=["id", "score", "text"])
    review, _, sentence = frame["id"].str.partition("_").T.to_numpy()
    score = frame["score"].astype(float)
    strength = score.abs()
    return pd.DataFrame(
        {
            "id": frame["id"],
            "review": review,
            "group": review,
            "sentence": sentence.astype(int),
            "text": frame["text"].str.strip(),
            "score": score,
            "sentiment": np.select([score > 0, score < 0], ["positive", "negative"], default="neutral"),
            "intensity": np.select(
                [strength < INTENSITY_CUTS[0], strength < INTENSITY_CUTS[1]],
                INTENSITY[:2],
                default=INTENSITY[2],
            ),
        }
    )


AMAZON_TASKS: dict[str, BuiltinTask] = {
    "intensity": BuiltinTask(
        "amazon-snippets",
        "ordinal",
        "intensity",
        INTENSITY,
        "{text}",
        [],
        "how strong the opinion in a review sentence is (weak < medium < strong), human-rated",
    ),
    "sentiment": BuiltinTask(
        "amazon-snippets/polar",
        "classification",
        "sentiment",
        ["negative", "positive"],
        "{text}",
        [],
        "positive or negative review sentence (the 98 neutral ones dropped), human-rated",
    ),
}
