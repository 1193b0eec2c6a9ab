"""Real shoppers for churn, value and conversion (``builtin:cdnow/<task>``): the CDNOW transaction log.

Provenance: ``lifetimes/datasets/CDNOW_master.txt`` inside the ``lifetimes`` 0.11.3 wheel (MIT licence; installed by
``make setup`` with ``--no-deps`` from ``lock/assets.txt``). It is the CDNOW master set of Fader & Hardie, the
standard benchmark for repeat-purchase models: every purchase of the 23,570 customers who bought their first CD
at the online shop CDNOW between 1997-01-01 and 1997-03-25, up to 1998-06-30; 69,659 rows of ``customer_id date
number_of_cds dollar_value`` (whitespace-separated, date as YYYYMMDD; 80 rows are worth $0). The file is located
without importing ``lifetimes`` (which needs autograd and dill, which reading a text file does not).

Each task is one row per customer (23,570 rows each), with time-based labels that cannot leak:

- ``churn`` and ``value``: features come only from purchases on or before the cut-off ``CUTOFF`` (1997-09-30, the
  end of the 39-week calibration period used in the BG/NBD literature); labels only from purchases in the following
  39 weeks, ``CUTOFF`` + 1 day to ``END`` (1997-10-01 ... 1998-06-30, 273 days, the last day of the log). Churn
  (``churn``/``stay``): no purchase in that window (16,512 churn, 7,058 stay). Value: the spend in the window
  (``future_spend``, a regression target) and its tier (``value_tier``, ordered ``none < low < mid < high``:
  ``none`` is $0 in the window, the other three are the tertiles of the customers who spent, cut at
  `VALUE_CUTS` = $35.98 and $91.09, measured on this file). Features: tenure, days since the last purchase,
  purchase days, CDs, spend, average order, first order, the last 90 days' purchases and spend, gaps between
  purchase days; all of them are computed from the rows dated on or before ``CUTOFF``.
- ``conversion``: does a first-time buyer come back? ``convert`` if the customer buys again within
  `CONVERSION_DAYS` (90) days after the day of the first purchase (6,887 convert, 16,683 no_convert). Features
  come only from that first day (its value, CDs, order lines, weekday, how far into the acquisition quarter). The
  last first purchase is 1997-03-25, so every customer's 90 days end by 1997-06-23, inside the log: no label is
  cut short.

Several rows of one customer on one day are one purchase (a "purchase day"), as in ``lifetimes``.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from peftkit.data.builtin import BuiltinTask
from peftkit.errors import PeftkitError

CUTOFF = pd.Timestamp("1997-09-30")  # last day whose purchases features may use (churn, value)
END = pd.Timestamp("1998-06-30")  # last day of the log: the label window is (CUTOFF, END]
CONVERSION_DAYS = 90  # conversion: a repeat purchase within this many days after the first purchase day
RECENT_DAYS = 90  # "last 90 days" features: purchases in (CUTOFF - 90 days, CUTOFF]
VALUE_TIERS = ["none", "low", "mid", "high"]
COHORT_START = pd.Timestamp("1997-01-01")  # first day of the acquisition quarter
_FILE = "CDNOW_master.txt"
_INSTALL = "pip install --no-deps lifetimes==0.11.3"

HISTORY_TEMPLATE = (
    "customer for {tenure_days} days; last purchase {days_since_last} days ago; {purchase_days} purchase days "
    "({purchase_days_90d} in the last 90 days); {cds} CDs; spent ${spend:.2f} (${spend_90d:.2f} in the last 90 "
    "days); average order ${avg_order_value:.2f}; first order ${first_order_value:.2f} for {first_order_cds} CDs; "
    "mean gap between purchases {mean_gap_days} days"
)
HISTORY_COLUMNS = [
    "tenure_days",
    "days_since_last",
    "purchase_days",
    "purchase_days_90d",
    "cds",
    "spend",
    "spend_90d",
    "avg_order_value",
    "first_order_value",
    "first_order_cds",
    "mean_gap_days",
]
FIRST_TEMPLATE = (
    "first order on day {first_day} of the quarter, a {first_weekday_name}: ${first_order_value:.2f} for "
    "{first_order_cds} CDs in {first_order_lines} order lines (${first_price_per_cd:.2f} a CD)"
)
FIRST_COLUMNS = [
    "first_day",
    "first_weekday",
    "first_order_value",
    "first_order_cds",
    "first_order_lines",
    "first_price_per_cd",
]


def transactions() -> pd.DataFrame:
    """The raw log: one row per transaction, in file order.

    Returns:
        A new frame with ``customer_id`` (str, as in the file: ``00001``), ``date`` (datetime64), ``cds`` (int) and
        ``dollars`` (float).

    Raises:
        PeftkitError: lifetimes is not installed, or its data file is missing.
    """
    return _load_transactions().copy()


@functools.lru_cache(maxsize=1)
def _load_transactions() -> pd.DataFrame:
    spec = importlib.util.find_spec("lifetimes")
    if spec is None or not spec.submodule_search_locations:
        raise PeftkitError(
            f"builtin:cdnow needs the lifetimes package's data file, and lifetimes is not installed; run "
            f"`make setup` (or `{_INSTALL}`)"
        )
    file = Path(next(iter(spec.submodule_search_locations))) / "datasets" / _FILE
    if not file.is_file():
        raise PeftkitError(
            f"builtin:cdnow: {file} is missing from the lifetimes package; reinstall it with "
            f"`pip install --force-reinstall --no-deps lifetimes==0.11.3`"
        )
    raw = pd.read_csv(file, sep=r"\s+", dtype={"customer_id": str, "date": str})
    return pd.DataFrame(
        {
            "customer_id": raw["customer_id"],
            "date": pd.to_datetime(raw["date"], format="%Y%m%d"),
            "cds": raw["number_of_cds"].astype(int),
            "dollars": raw["dollar_value"].astype(float),
        }
    )


def purchase_days(tx: pd.DataFrame) -> pd.DataFrame:
    """Transactions summed per customer and day: one row per purchase day, sorted by customer and date."""
    days = tx.groupby(["customer_id", "date"], as_index=False).agg(
        cds=("cds", "sum"), dollars=("dollars", "sum"), lines=("cds", "size")
    )
    return days.sort_values(["customer_id", "date"], ignore_index=True)


def history_features(tx: pd.DataFrame, cutoff: pd.Timestamp = CUTOFF) -> pd.DataFrame:
    """Per-customer behaviour features from the transactions dated on or before `cutoff` only.

    Args:
        tx: transactions (`transactions` columns); rows after `cutoff` are dropped first, so they cannot matter.
        cutoff: the last day the features may see.

    Returns:
        One row per customer with a purchase on or before `cutoff`, sorted by ``customer_id``: ``customer_id`` and
        `HISTORY_COLUMNS`. Money is rounded to cents; ``mean_gap_days`` is in whole days, 0 for a customer with
        one purchase day.
    """
    days = purchase_days(tx[tx["date"] <= cutoff])
    by = days.groupby("customer_id", sort=True)
    first, last = by["date"].min(), by["date"].max()
    count, spend = by.size(), by["dollars"].sum()
    recent = days[days["date"] > cutoff - pd.Timedelta(days=RECENT_DAYS)].groupby("customer_id")
    firsts = by.head(1).set_index("customer_id")  # rows are date-sorted within each customer
    span = (last - first).dt.days
    out = pd.DataFrame(
        {
            "tenure_days": (cutoff - first).dt.days,
            "days_since_last": (cutoff - last).dt.days,
            "purchase_days": count,
            "purchase_days_90d": recent.size().reindex(count.index, fill_value=0),
            "cds": by["cds"].sum(),
            "spend": spend.round(2),
            "spend_90d": recent["dollars"].sum().reindex(count.index, fill_value=0.0).round(2),
            "avg_order_value": (spend / count).round(2),
            "first_order_value": firsts["dollars"].round(2),
            "first_order_cds": firsts["cds"],
            # The mean gap between consecutive purchase days is the first-to-last span over the gaps in it
            # (whole days; 0 for one purchase day).
            "mean_gap_days": np.where(count > 1, span / (count - 1).clip(lower=1), 0).round().astype(int),
        }
    )
    return out.rename_axis("customer_id").reset_index()


def window_spend(tx: pd.DataFrame, start: pd.Timestamp, end: pd.Timestamp) -> tuple[pd.Series, pd.Series]:
    """(spend, number of transactions) per customer in the window ``(start, end]``; customers absent there: none."""
    inside = tx[(tx["date"] > start) & (tx["date"] <= end)].groupby("customer_id")
    return inside["dollars"].sum(), inside.size()


def churn_frame(
    tx: pd.DataFrame | None = None, cutoff: pd.Timestamp = CUTOFF, end: pd.Timestamp = END
) -> pd.DataFrame:
    """``builtin:cdnow/churn``: features to `cutoff`; ``churn`` = no purchase in ``(cutoff, end]``, else ``stay``."""
    tx = transactions() if tx is None else tx
    frame = history_features(tx, cutoff)
    _, bought = window_spend(tx, cutoff, end)
    active = frame["customer_id"].map(bought).fillna(0) > 0
    frame["churn"] = np.where(active, "stay", "churn")
    return _stamp(frame, "churn", cutoff, end)


def value_frame(
    tx: pd.DataFrame | None = None, cutoff: pd.Timestamp = CUTOFF, end: pd.Timestamp = END
) -> pd.DataFrame:
    """``builtin:cdnow/value``: features to `cutoff`; ``future_spend`` in ``(cutoff, end]`` and its ``value_tier``.

    The tiers: ``none`` for $0 in the window, else ``low``/``mid``/``high`` by the tertiles of the positive spends
    (`value_cuts`); ``attrs["value_cuts"]`` holds the two cut points.
    """
    tx = transactions() if tx is None else tx
    frame = history_features(tx, cutoff)
    spent, _ = window_spend(tx, cutoff, end)
    future = frame["customer_id"].map(spent).fillna(0.0).round(2)
    cuts = value_cuts(future)
    frame["future_spend"] = future
    frame["value_tier"] = np.select(
        [future <= 0, future <= cuts[0], future <= cuts[1]], VALUE_TIERS[:3], default=VALUE_TIERS[3]
    )
    frame = _stamp(frame, "value", cutoff, end)
    frame.attrs["value_cuts"] = [float(c) for c in cuts]
    return frame


def value_cuts(future_spend: pd.Series) -> tuple[float, float]:
    """The tertile cut points of the positive spends: ``low`` <= first < ``mid`` <= second < ``high``."""
    positive = future_spend[future_spend > 0].to_numpy()
    if len(positive) == 0:
        return (0.0, 0.0)
    low, high = np.quantile(positive, [1 / 3, 2 / 3])
    return round(float(low), 2), round(float(high), 2)


def conversion_frame(tx: pd.DataFrame | None = None, days: int = CONVERSION_DAYS) -> pd.DataFrame:
    """``builtin:cdnow/conversion``: the first purchase day's features; ``convert`` = another within `days` days."""
    tx = transactions() if tx is None else tx
    pdays = purchase_days(tx)
    by = pdays.groupby("customer_id", sort=True)
    first = by.head(1).set_index("customer_id")
    # The second purchase day (if any) decides the label; nothing after the first day enters a feature.
    second = by["date"].nth(1)
    second = pd.Series(second.to_numpy(), index=pdays.loc[second.index, "customer_id"])
    gap = (second.reindex(first.index) - first["date"]).dt.days
    last_window = first["date"].max() + pd.Timedelta(days=days)
    if last_window > tx["date"].max():
        raise PeftkitError(
            f"builtin:cdnow/conversion: the {days}-day window of the last first purchase ends {last_window.date()}, "
            f"after the log's last day {tx['date'].max().date()}; use fewer days"
        )
    frame = pd.DataFrame(
        {
            "first_date": first["date"].dt.strftime("%Y-%m-%d"),
            "first_day": (first["date"] - COHORT_START).dt.days + 1,
            "first_weekday": first["date"].dt.weekday,
            "first_weekday_name": first["date"].dt.day_name(),
            "first_order_value": first["dollars"].round(2),
            "first_order_cds": first["cds"],
            "first_order_lines": first["lines"],
            "first_price_per_cd": (first["dollars"] / first["cds"]).round(2),
            "conversion": np.where(gap.le(days), "convert", "no_convert"),
        }
    )
    frame = frame.rename_axis("customer_id").reset_index()
    frame.attrs.update(source="builtin:cdnow/conversion", conversion_days=days, rows=len(frame))
    return frame


def _stamp(frame: pd.DataFrame, task: str, cutoff: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
    frame.attrs.update(
        source=f"builtin:cdnow/{task}",
        cutoff=str(cutoff.date()),
        window=f"{(cutoff + pd.Timedelta(days=1)).date()}..{end.date()}",
        rows=len(frame),
    )
    return frame


CDNOW_TASKS: dict[str, BuiltinTask] = {
    "churn": BuiltinTask(
        "cdnow/churn",
        "classification",
        "churn",
        ["stay", "churn"],
        HISTORY_TEMPLATE,
        HISTORY_COLUMNS,
        "no purchase in the 39 weeks after 1997-09-30, from the history up to it",
    ),
    "value": BuiltinTask(
        "cdnow/value",
        "ordinal",
        "value_tier",
        VALUE_TIERS,
        HISTORY_TEMPLATE,
        HISTORY_COLUMNS,
        "spend tier in the 39 weeks after 1997-09-30 (none < low < mid < high); future_spend is the amount",
    ),
    "conversion": BuiltinTask(
        "cdnow/conversion",
        "classification",
        "conversion",
        ["no_convert", "convert"],
        FIRST_TEMPLATE,
        FIRST_COLUMNS,
        f"a second purchase within {CONVERSION_DAYS} days of the first, from the first purchase alone",
    ),
}
_FRAMES: dict[str, Callable[[], pd.DataFrame]] = {
    "churn": churn_frame,
    "value": value_frame,
    "conversion": conversion_frame,
}


def cdnow_frame(task: str) -> pd.DataFrame:
    """``builtin:cdnow/<task>`` for `task` in `CDNOW_TASKS`: a new frame, one row per customer.

    Raises:
        PeftkitError: an unknown task, or lifetimes (which ships the file) is not installed.
    """
    if task not in _FRAMES:
        raise PeftkitError(
            f"unknown built-in data 'builtin:cdnow/{task}'; CDNOW tasks: {', '.join(f'builtin:cdnow/{t}' for t in _FRAMES)}"
        )
    return _FRAMES[task]()
