"""Notebook displays: marked answers, training curves without the end-of-training spike, charts, the paper table."""

from __future__ import annotations

import html
import io
import json
import re

import matplotlib
import pandas as pd
from PIL import Image

from rlhfv_nb import display as show
from rlhfv_nb.evaluate.chair import ChairVocabulary
from rlhfv_nb.evaluate.paper import RLHFV_V1, paper_table, paper_table_html
from rlhfv_nb.world import Scene, WorldConfig, WorldObject, synonyms_text
from rlhfv_nb.world_eval import world_scores

matplotlib.use("Agg")

TAG = re.compile(r"<[^>]+>")


def _marked(page: str) -> list[str]:
    return [html.unescape(m) for m in re.findall(r"<span[^>]*>(.*?)</span>", page)]


# ---------------------------------------------------------------- marked answers
def test_marked_words_carry_no_spaces_and_the_text_is_kept() -> None:
    text = "A red tent is near a ring. A box & a kite."
    spans = [(6, 11), (20, 25), (29, 34)]  # "tent ", " ring", "box &": with a space at either edge
    page = show.marked_html(text, spans)
    assert html.unescape(TAG.sub("", page)) == text
    assert _marked(page) == ["tent", "ring", "box &"]
    assert "red <span" in page and "tent</span> is" in page and "ring</span>." in page


def test_overlapping_and_empty_spans_mark_each_character_once() -> None:
    text = "a teddy bear sits"
    page = show.marked_html(text, [(2, 7), (2, 12), (8, 12), (13, 13), (12, 13), (40, 50)])
    assert _marked(page) == ["teddy bear"] and html.unescape(TAG.sub("", page)) == text
    assert show.marked_html("x < y", []) == "x &lt; y"


def test_spans_keep_their_styles() -> None:
    text = "A red box is in the top left."
    page = show.styled_html(text, [(6, 9, show.HALLUCINATED), (2, 5, show.WRONG_COLOR), (13, 28, show.WRONG_PLACE),
                                   (7, 8, show.WRONG_PLACE)])  # inside the box mark: merged into it
    assert html.unescape(TAG.sub("", page)) == text
    assert re.findall(r'<span style="([^"]*)">(.*?)</span>', page) == [
        (show.WRONG_COLOR, "red"), (show.HALLUCINATED, "box"), (show.WRONG_PLACE, "in the top left")]


def test_verdicts_in_words() -> None:
    assert show.verdict_text(3, ["cats", "sofa", "Cats"]) == "3 of 3 object mention(s) hallucinated: cats, sofa"
    assert show.verdict_text(3, [], [], ["in the top left", "in the bottom left"]) == (
        "0 of 3 object mention(s) hallucinated; 2 wrong places: in the bottom left, in the top left")
    assert show.verdict_text(2, ["tent"], ["red"], []) == (
        "1 of 2 object mention(s) hallucinated: tent; 1 wrong colour: red")
    assert show.verdict_text(1, [], [], []) == "0 of 1 object mention(s) hallucinated; colours and places right"
    assert show.verdict_text(0, [], [], []) == "no object mentioned"


def test_world_examples_mark_objects_colours_and_places() -> None:
    cfg = WorldConfig()
    scene = Scene((WorldObject("star", "blue", 0, 1), WorldObject("box", "red", 1, 1)))
    vocab = ChairVocabulary.from_synonyms_text(synonyms_text(cfg), name="synthetic-world")
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="PNG")
    items = [{"id": "d", "image_id": 1, "qtype": "describe", "question": "Describe the image.",
              "scene": json.dumps(scene.to_dict()), "image": buffer.getvalue()},
             {"id": "q", "image_id": 1, "qtype": "count", "question": "How many?", "answer": "Two.",
              "image": buffer.getvalue()}]
    answer = "A green star is in the top right. A red box is in the top left. A tent is in the bottom left."
    page = show.world_answers_html(items, {"DDPO": world_scores(items, {"d": answer, "q": "Two."}, vocab, cfg)})
    assert page.count("<tr>") == 2  # the header and the one description
    assert re.findall(r'<span style="([^"]*)">(.*?)</span>', page)[3:] == [  # after the legend's three
        (show.WRONG_COLOR, "green"), (show.WRONG_PLACE, "in the top left"), (show.HALLUCINATED, "tent")]
    assert ("1 of 3 object mention(s) hallucinated: tent; 1 wrong colour: green; 1 wrong place: in the top left"
            in page)


# ---------------------------------------------------------------- training curves
def _ddpo_log() -> list[dict]:
    """A DDPO log as `JsonlLogger` writes it: logging steps, then the end-of-training summary at the last step,
    which `DDPOTrainer.log` fills with the shorter last window's metrics (here two steps, one of them the epoch's
    last, small batch)."""
    records = [{"step": 1, "loss": 3.3, "ddpo_loss": 0.69, "rewards/accuracies": 0.1}]
    records += [{"step": s, "loss": 0.7, "ddpo_loss": 0.4, "rewards/accuracies": 0.8} for s in range(10, 521, 10)]
    records.append({"step": 522, "train_runtime": 60.0, "train_loss": 0.8, "ddpo_loss": 0.9,
                    "rewards/accuracies": 0.25})
    return records


def test_curves_leave_out_the_end_of_training_summary() -> None:
    records = _ddpo_log()
    fig = show.plot_curves({"gamma=5": records, "gamma=1": records}, ["ddpo_loss", "rewards/accuracies"], "DDPO")
    for ax in fig.axes:
        for line in ax.get_lines():
            assert max(line.get_xdata()) == 520 and line.get_ydata()[-1] in (0.4, 0.8)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["gamma=5", "gamma=1"]
    assert show.step_records(records)[-1]["step"] == 520
    assert show.last_logged(records, ["ddpo_loss", "missing"]) == {"ddpo_loss": 0.4, "missing": None}


def test_ddpo_plot_names_how_the_trainer_loss_differs() -> None:
    first, second = show.plot_ddpo({"gamma=5": _ddpo_log()}, sft_weight=1.0)
    titles = [ax.get_title() for ax in first.axes]
    assert titles[:2] == ["loss = ddpo_loss - 1·S(chosen)", "ddpo_loss = -log σ(β·margin)"]
    assert [ax.get_title() for ax in second.axes] == ["rewards/chosen", "rewards/rejected", "logps/rejected"]
    without, _ = show.plot_ddpo({"gamma=5": _ddpo_log()}, sft_weight=0.0)
    assert [ax.get_title() for ax in without.axes][0] == "ddpo_loss = -log σ(β·margin)"  # loss is ddpo_loss then


def test_bar_chart_legend_stays_off_the_bars() -> None:
    table = pd.DataFrame({"World Resp. (CHAIRs_refine)": [75.0, 100.0, 74.0],
                          "World Mention (CHAIRi)": [77.0, 99.0, 80.0], "World recall": [8.0, 0.0, 8.0]},
                         index=["SFT", "DDPO gamma=5", "DPO (gamma=1)"])
    fig = show.bar_chart(table, list(table.columns), "Object hallucination and recall")
    fig.canvas.draw()
    (ax,) = fig.axes
    legend = fig.legends[0].get_window_extent()
    assert not legend.overlaps(ax.get_window_extent()) and ax.get_title() == "Object hallucination and recall"
    assert [t.get_text() for t in fig.legends[0].get_texts()] == list(table.columns)


# ---------------------------------------------------------------- the paper's numbers
def test_paper_table_shows_blanks_and_each_source_once() -> None:
    page = paper_table_html()
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", page)
    assert len(cells) == paper_table().drop(columns="source").size
    assert "nan" not in page.lower() and "None" not in page and "" in cells and "50.5" in cells
    assert page.count(html.escape(RLHFV_V1)) == 1 and "RLHF-V with vanilla DPO (ablation) [2]" in page
    assert "Muffin (SFT) [1]" in page and "human-evaluated" in page


def test_paper_table_data_keeps_its_sources() -> None:
    assert paper_table()["source"].nunique() == 3  # the numbers for code stay as they were; only the display changed
