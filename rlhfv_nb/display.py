"""Notebook displays: images with answers, corrected segments and hallucinated words marked, training curves."""

from __future__ import annotations

import base64
import difflib
import html
import io
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rlhfv_nb.data import decode_image
from rlhfv_nb.evaluate.chair import ResponseDetail
from rlhfv_nb.world_eval import AttributeDetail, WorldScores, wrong_spans

REMOVED = "background:#fdd;text-decoration:line-through"
ADDED = "background:#dfd"
HALLUCINATED = "background:#fbb;font-weight:bold"
WRONG_COLOR = "background:#fed7aa"
WRONG_PLACE = "background:#bfdbfe"


def image_html(data: bytes, size: int = 144) -> str:
    """An inline PNG (nearest-neighbour upscaled so tiny images stay crisp)."""
    image = decode_image(data)
    scale = max(1, size // max(image.size))
    image = image.resize((image.width * scale, image.height * scale), resample=0)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return f'<img src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}" width="{size}"/>'


def correction_html(rejected: str, chosen: str) -> tuple[str, str]:
    """The rejected and chosen answers with the words the correction removed/added highlighted."""
    old, new = rejected.split(), chosen.split()
    old_html, new_html = [], []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes():
        old_part, new_part = html.escape(" ".join(old[i1:i2])), html.escape(" ".join(new[j1:j2]))
        if tag == "equal":
            old_html.append(old_part)
            new_html.append(new_part)
            continue
        if old_part:
            old_html.append(f'<span style="{REMOVED}">{old_part}</span>')
        if new_part:
            new_html.append(f'<span style="{ADDED}">{new_part}</span>')
    return " ".join(old_html), " ".join(new_html)


def marked_html(text: str, spans: Iterable[tuple[int, int]], style: str = HALLUCINATED) -> str:
    """`text` with the character spans (e.g. hallucinated object mentions) highlighted in one style."""
    return styled_html(text, [(start, end, style) for start, end in spans])


def styled_html(text: str, spans: Iterable[tuple[int, int, str]]) -> str:
    """`text` with each character span (start, end, CSS style) highlighted in its style.

    Overlapping spans are merged (in the first one's style) and white space at a span's edges stays outside the
    highlight, so a marked word reads like the text around it ("a <mark>tent</mark> is"), never with a highlighted
    space.
    """
    out, last = [], 0
    for start, end, style in _merged(_trimmed(text, spans)):
        out.append(html.escape(text[last:start]))
        out.append(f'<span style="{style}">{html.escape(text[start:end])}</span>')
        last = end
    out.append(html.escape(text[last:]))
    return "".join(out)


def _trimmed(text: str, spans: Iterable[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """The spans, clipped to `text`, without the white space at their edges; empty ones dropped."""
    kept = []
    for start, end, style in spans:
        start, end = max(0, start), min(len(text), end)
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        if start < end:
            kept.append((start, end, style))
    return kept


def _merged(spans: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """Sorted spans with the overlapping ones joined, in the style of the first."""
    merged: list[tuple[int, int, str]] = []
    for start, end, style in sorted(spans):
        if merged and start < merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]), merged[-1][2])
        else:
            merged.append((start, end, style))
    return merged


def _listed(words: Sequence[str]) -> str:
    """": a, b" for the distinct words (lower-cased, sorted); "" for none."""
    distinct = sorted({word.lower() for word in words})
    return f": {', '.join(distinct)}" if distinct else ""


def verdict_text(mentions: int, hallucinated: Sequence[str], wrong_colors: Sequence[str] | None = None,
                 wrong_places: Sequence[str] | None = None) -> str:
    """How an answer fared, in words: "2 of 3 object mention(s) hallucinated: cats, sofa" ("no object mentioned").

    With the wrong colours and places of an answer whose attributes were checked (lists, possibly empty), it goes
    on: "; 2 wrong places: in the bottom left, in the top left" or "; colours and places right".
    """
    if not mentions:
        return "no object mentioned"
    text = f"{len(hallucinated)} of {mentions} object mention(s) hallucinated{_listed(hallucinated)}"
    if wrong_colors is None or wrong_places is None:
        return text
    wrong = [f"{len(found)} wrong {what}{'' if len(found) == 1 else 's'}{_listed(found)}"
             for what, found in (("colour", wrong_colors), ("place", wrong_places)) if found]
    return f"{text}; {'; '.join(wrong) if wrong else 'colours and places right'}"


def table_html(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A plain HTML table of already-escaped cells."""
    head = "".join(f'<th style="text-align:left">{h}</th>' for h in headers)
    body = "".join(
        "<tr>" + "".join(f'<td style="text-align:left;vertical-align:top">{c}</td>' for c in row) + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def pairs_html(rows: Iterable[dict[str, Any]]) -> str:
    """Preference pairs: image, question, rejected (removed words struck) and chosen (added words green)."""
    cells = []
    for row in rows:
        rejected, chosen = correction_html(row["rejected"], row["chosen"])
        cells.append([image_html(row["image"]), html.escape(row["question"]), rejected, chosen])
    return table_html(["image", "question", "rejected (model answer)", "chosen (correction)"], cells)


def answers_html(rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> str:
    """Image, question and one column per model; cells are HTML already (see `marked_html`)."""
    return table_html(["image", "question", *columns],
                      ([image_html(r["image"]), html.escape(r["question"]), *[r[c] for c in columns]] for r in rows))


def judged_html(chair: ResponseDetail, attributes: AttributeDetail) -> str:
    """A world description with its hallucinated objects, wrong colours and wrong places marked, and its verdict."""
    text = chair.text
    colors, places = wrong_spans(attributes.checks)
    marks = [(m.start, m.end, HALLUCINATED) for m in chair.hallucinated if m.start is not None]
    marks += [(*span, WRONG_COLOR) for span in colors] + [(*span, WRONG_PLACE) for span in places]
    verdict = verdict_text(len(chair.mentions), [m.word for m in chair.hallucinated],
                           [text[slice(*span)] for span in colors], [text[slice(*span)] for span in places])
    return f"{styled_html(text, marks)}<br><small>{html.escape(verdict)}</small>"


def world_answers_html(items: Sequence[dict[str, Any]], scores: Mapping[str, WorldScores], count: int = 8) -> str:
    """The first `count` held-out world images with every model's description judged (`judged_html`), and a legend.

    `scores`: model -> its `world_eval.WorldScores` on `items` (as `evaluate.suite.world_scores` gives them).
    """
    chair = {model: {d.id: d for d in s.chair.details} for model, s in scores.items()}
    attributes = {model: {d.id: d for d in s.attributes.details} for model, s in scores.items()}
    rows = [{**item, **{model: judged_html(chair[model][item["image_id"]], attributes[model][item["image_id"]])
                        for model in scores}}
            for item in [i for i in items if i["qtype"] == "describe"][:count]]
    legend = " ".join(f'<span style="{style}">{name}</span>' for name, style in
                      (("hallucinated object", HALLUCINATED), ("wrong colour", WRONG_COLOR),
                       ("wrong place", WRONG_PLACE)))
    return f"<p>Marked: {legend}</p>{answers_html(rows, list(scores))}"


SUMMARY_KEYS = ("train_runtime", "train_loss")  # the Trainer's end-of-training record, not a logging step


def step_records(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """A Trainer log's records of logging steps, without the end-of-training summary.

    The summary comes at the last step, and `DDPOTrainer.log` adds to it the metrics of the steps since the
    last logging step: a shorter window, in which an epoch's last, smaller batch weighs as much as a full one.
    Drawn as the curve's last point it made a spike. (The logging steps' windows cover `logging_steps` steps
    each, but the first: `logging_first_step` logs step 1 alone.)
    """
    return [r for r in records if not any(key in r for key in SUMMARY_KEYS)]


def last_logged(records: Iterable[dict[str, Any]], keys: Sequence[str]) -> dict[str, float | None]:
    """Each key's value at the last logging step that logged it (None if none did)."""
    steps = step_records(records)
    return {key: next((r[key] for r in reversed(steps) if key in r), None) for key in keys}


def plot_curves(logs: dict[str, list[dict[str, Any]]], keys: Sequence[str], title: str = "",
                titles: dict[str, str] | None = None):
    """One panel per logged key, one line per run (e.g. {"DDPO": records, "DPO": records}).

    Panels are titled by `titles` (default: the key); one legend for the figure, outside the panels.
    """
    import matplotlib.pyplot as plt

    titles = titles or {}
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False, layout="constrained")
    for ax, key in zip(axes[0], keys):
        for label, records in logs.items():
            points = [(r["step"], r[key]) for r in step_records(records) if key in r]
            if points:
                ax.plot(*zip(*points), label=label)
        ax.set_title(titles.get(key, key), fontsize="medium")
        ax.set_xlabel("step")
    handles, labels = axes[0][0].get_legend_handles_labels()
    if len(handles) > 1:
        fig.legend(handles, labels, loc="outside right upper", frameon=False)
    if title:
        fig.suptitle(title)
    return fig


def plot_ddpo(logs: dict[str, list[dict[str, Any]]], sft_weight: float) -> tuple[Any, Any]:
    """DDPO's curves: the loss, accuracy and margin of the rewards, then the rewards and log-probs themselves.

    Trainer's `loss` (its log records' and progress lines') is what it minimises, `DDPOTrainer.compute_loss`:
    `ddpo_loss - sft_weight * S(chosen)`. With an SFT term it is drawn beside the DDPO term alone, each titled so.
    """
    titles = {"loss": f"loss = ddpo_loss - {sft_weight:g}·S(chosen)", "ddpo_loss": "ddpo_loss = -log σ(β·margin)"}
    losses = ["loss", "ddpo_loss"] if sft_weight else ["ddpo_loss"]
    return (plot_curves(logs, [*losses, "rewards/accuracies", "rewards/margins"], "DDPO training", titles),
            plot_curves(logs, ["rewards/chosen", "rewards/rejected", "logps/rejected"]))


def bar_chart(table: Any, columns: Sequence[str], title: str, ylabel: str = "%"):
    """Grouped bars: one group per row of `table` (a model), one bar per column, the legend beside the axes."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.2), layout="constrained")
    table[list(columns)].astype(float).plot.bar(ax=ax, rot=0, legend=False)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize="medium")
    ax.margins(y=0.1)
    fig.legend(loc="outside right upper", frameon=False)
    return fig
