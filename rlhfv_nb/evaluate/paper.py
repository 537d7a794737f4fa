"""Published numbers to compare against, with their sources; column names shared with `SuiteResult.table`.

All values are percent. Object HalBench and MMHal hallucination: lower is better.
"""

from __future__ import annotations

import html

import pandas as pd

RESP = "ObjHal Resp. (CHAIRs_refine)"
MENTION = "ObjHal Mention (CHAIRi)"
MHUMAN_OBJ = "MHumanEval Obj"
MHUMAN_ALL = "MHumanEval All"
MMHAL_INFO = "MMHal Info"
MMHAL_HALL = "MMHal Resp-hall"
LLAVA = {"conv": "LLaVA Conv", "detail": "LLaVA Detail", "complex": "LLaVA Complex", "all": "LLaVA All"}

RLHFV_V1 = "Yu et al., RLHF-V, arXiv:2312.00849v1 (Dec 2023), Table 1"
RLHFV_ABLATION = "Yu et al., RLHF-V, arXiv:2312.00849v1 (Dec 2023), ablation (DDPO vs vanilla DPO)"
RLAIFV = "Yu et al., RLAIF-V, arXiv:2405.17220 (its own Object HalBench result)"
NOTE = ("MMHal Resp-hall of the v1 paper was human-evaluated; LLaVA-Bench and MMHal were judged by gpt-4-0314 "
        "and Object HalBench objects extracted by gpt-3.5-turbo-0613 (retired snapshots)")

_COLUMNS = (RESP, MENTION, MHUMAN_OBJ, MHUMAN_ALL, MMHAL_INFO, MMHAL_HALL,
            LLAVA["conv"], LLAVA["detail"], LLAVA["complex"])
# model -> (values in _COLUMNS order, None where not reported; source)
PAPER_RESULTS: dict[str, tuple[tuple[float | None, ...], str]] = {
    "Muffin (SFT)": ((50.5, 24.5, 33.6, 74.7, 33.4, 68.8, 89.3, 79.7, 97.7), RLHFV_V1),
    "RLHF-V (Muffin-13B + DDPO)": ((12.2, 7.5, 21.9, 55.5, 40.0, 52.1, 93.1, 75.3, 91.6), RLHFV_V1),
    "LLaVA": ((63.0, 29.5, 46.6, 80.8, 31.9, 70.8, 85.4, 74.3, 96.3), RLHFV_V1),
    "LLaVA-RLHF 13B": ((38.1, 18.9, 37.7, 72.6, 39.9, 65.6, 93.8, 74.3, 111.4), RLHFV_V1),
    "GPT-4V": ((13.6, 7.3, 22.6, 45.9, 47.6, 31.3, 96.0, 102.5, 106.7), RLHFV_V1),
    "RLHF-V with vanilla DPO (ablation)": ((None, None, None, 57.5, None, 54.2, None, None, None), RLHFV_ABLATION),
    "RLAIF-V 7B (LLaVA-1.5)": ((8.5, 4.3, None, None, None, None, None, None, None), RLAIFV),
}


def paper_table() -> pd.DataFrame:
    """The published numbers: rows = models, columns = metrics (percent), plus `source`; `attrs["note"]` on judges."""
    rows = {model: {**dict(zip(_COLUMNS, values, strict=True)), "source": source}
            for model, (values, source) in PAPER_RESULTS.items()}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.attrs["note"] = NOTE
    return table


def paper_table_html(table: pd.DataFrame | None = None) -> str:
    """`paper_table()` for reading: blanks where a paper reports no number, each source named once, as a numbered
    footnote marked after the model, then the note on judges."""
    table = paper_table() if table is None else table
    sources = list(dict.fromkeys(table["source"]))
    marks = {model: sources.index(source) + 1 for model, source in table["source"].items()}
    numbers = table.drop(columns="source").rename(index=lambda model: f"{model} [{marks[model]}]")
    styled = numbers.style.set_uuid("paper").format(precision=1, na_rep="").set_table_styles(
        [{"selector": "th.col_heading", "props": "text-align: right; vertical-align: bottom"},
         {"selector": "td", "props": "text-align: right"}])
    notes = "".join(f"<li>{html.escape(source)}</li>" for source in sources)
    return (f"{styled.to_html()}<ol style='font-size:smaller'>{notes}</ol>"
            f"<p style='font-size:smaller'>All values in percent. {html.escape(table.attrs.get('note', ''))}.</p>")
