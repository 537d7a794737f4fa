"""The loop's per-round table and per-round plot (notebook 06), from the `rlaifv` section of `metrics.json`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# Columns of the per-round table, in order (round 0 is the SFT model: it has CHAIR and selection metrics only);
# each selection metric (`rlaifv.select_by`) of the round's model follows as a column of its own name.
COLUMNS = ("round", "gamma", "epoch", "pairs", "labeler_accuracy", "wrongly_ordered", "tied_in_truth",
           "true_score_mean", "CHAIRs", "CHAIRi", "recall", "avg_len", "seconds")
WORLD_CHAIR = ("CHAIRs", "CHAIRi", "recall")


def summary_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each round's `COLUMNS` and selection metrics, leaving out the columns no round has (world CHAIR on a run
    without the world, the labeler audit without world prompts)."""
    flat = [{**{key: row.get(key) for key in COLUMNS}, **row.get("select", {})} for row in rows]
    kept = [key for key in dict.fromkeys(k for row in flat for k in row)
            if key == "round" or any(row.get(key) is not None for row in flat)]
    return [{key: row.get(key) for key in kept} for row in flat]


def round_table(rows: Sequence[dict[str, Any]]) -> Any:
    """`summary_rows` as a pandas DataFrame indexed by round."""
    import pandas as pd

    return pd.DataFrame(summary_rows(rows)).set_index("round")


def plot_rounds(rows: Sequence[dict[str, Any]], title: str = "RLAIF-V rounds") -> Any:
    """Each round's model (round 0: the SFT model) on the held-out world CHAIR when the run has it, else on the
    selection metrics; the matplotlib figure."""
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.5))
    rounds = [row["round"] for row in rows]
    world = all(row.get("CHAIRs") is not None for row in rows)  # held-out world CHAIR on every round
    series = {key: [row.get(key) for row in rows] for key in WORLD_CHAIR} if world else \
        {name: [row.get("select", {}).get(name) for row in rows] for name in rows[0].get("select", {})}
    for name, values in series.items():
        axis.plot(rounds, [float("nan") if value is None else value for value in values], marker="o", label=name)
    axis.set_xticks(rounds)
    axis.set_xlabel("round (0: SFT model)")
    axis.set_ylabel("held-out world CHAIR" if world else "selection metric")
    axis.set_title(title)
    axis.legend()
    figure.tight_layout()
    return figure
