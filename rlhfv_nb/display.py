"""Notebook displays: images with answers, corrected segments and hallucinated words marked, training curves."""

from __future__ import annotations

import base64
import difflib
import html
import io
from collections.abc import Iterable, Sequence
from typing import Any

from rlhfv_nb.data import decode_image

REMOVED = "background:#fdd;text-decoration:line-through"
ADDED = "background:#dfd"
HALLUCINATED = "background:#fbb;font-weight:bold"


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
    """`text` with the character spans (e.g. hallucinated object mentions) highlighted."""
    out, last = [], 0
    for start, end in sorted(spans):
        out.append(html.escape(text[last:start]))
        out.append(f'<span style="{style}">{html.escape(text[start:end])}</span>')
        last = end
    out.append(html.escape(text[last:]))
    return "".join(out)


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


def plot_curves(logs: dict[str, list[dict[str, Any]]], keys: Sequence[str], title: str = ""):
    """One panel per logged key, one line per run (e.g. {"DDPO": records, "DPO": records})."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for label, records in logs.items():
            points = [(r["step"], r[key]) for r in records if key in r]
            if points:
                ax.plot(*zip(*points), label=label)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig
