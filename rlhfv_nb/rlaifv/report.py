"""The loop's per-round table and CHAIR-per-round plot (notebook 06), from the `rlaifv` section of `metrics.json`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# Columns of the per-round table, in order (round 0 is the SFT model: it has CHAIRs only).
COLUMNS = ("round", "gamma", "pairs", "labeler_accuracy", "wrongly_ordered", "tied_in_truth", "true_score_mean",
           "CHAIRs", "CHAIRi", "recall", "avg_len", "seconds")


def round_table(rows: Sequence[dict[str, Any]]) -> Any:
    """A pandas DataFrame, one row per round, indexed by round."""
    import pandas as pd

    return pd.DataFrame([{key: row.get(key) for key in COLUMNS} for row in rows]).set_index("round")


def plot_rounds(rows: Sequence[dict[str, Any]], title: str = "RLAIF-V rounds on the synthetic world") -> Any:
    """World CHAIRs, CHAIRi and recall of each round's model (round 0: the SFT model); the matplotlib figure."""
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.5))
    rounds = [row["round"] for row in rows]
    for key in ("CHAIRs", "CHAIRi", "recall"):
        axis.plot(rounds, [row[key] for row in rows], marker="o", label=key)
    axis.set_xticks(rounds)
    axis.set_xlabel("round (0: SFT model)")
    axis.set_ylabel("share")
    axis.set_title(title)
    axis.legend()
    figure.tight_layout()
    return figure
