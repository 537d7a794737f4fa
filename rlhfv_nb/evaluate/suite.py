"""One call for notebook 04: every configured benchmark for every model, answers cached, failures reported.

Per model and generation pass, answers go to `<run>/eval/<model-slug>/<task>/answers-<settings key>.jsonl`
(resumable) and the detailed scores to `scores.json` beside it. A benchmark that cannot run
(no judge key, COCO missing offline, a crash) gets a `status` saying why; the others still run.
"""

from __future__ import annotations

import gc
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from rlhfv_nb.config import Config
from rlhfv_nb.evaluate import paper
from rlhfv_nb.evaluate.judge import JudgeClient
from rlhfv_nb.evaluate.paper import paper_table
from rlhfv_nb.evaluate.tasks import JUDGED, Context, Sources, Task, plan
from rlhfv_nb.files import write_json
from rlhfv_nb.generate import GenerationSettings, eval_settings, generate_answers
from rlhfv_nb.modeling import load_model, load_processor

__all__ = ["BenchmarkResult", "Sources", "SuiteResult", "model_slug", "paper_table", "run_benchmarks"]

log = logging.getLogger(__name__)
CHAIR_PREFIX = {"object_halbench": "ObjHal", "world_chair": "World"}


@dataclass
class BenchmarkResult:
    """One model on one benchmark. `status`: "ok", "skipped: <why>" or "failed: <what went wrong>"."""

    status: str
    metrics: dict[str, Any] = field(default_factory=dict)
    judge: str | None = None  # the judge model behind the scores (judged benchmarks)
    answers: str | None = None  # the answers file

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class SuiteResult:
    """Results per model (in the order given) and benchmark, with the settings that produced them."""

    results: dict[str, dict[str, BenchmarkResult]]
    models: dict[str, str]
    generation: GenerationSettings
    judge: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, for `metrics.json`."""
        return {
            "models": self.models,
            "generation": asdict(self.generation),
            "judge": self.judge,
            "results": {m: {b: asdict(r) for b, r in by_bench.items()} for m, by_bench in self.results.items()},
        }

    def table(self) -> pd.DataFrame:
        """Headline metrics, rows = models. Percent, except avg_len (words) and MMHal score (0..6).

        Column names match `paper_table()`; `judge` names the judge model, `notes` every benchmark not ok.
        """
        rows = {}
        for model, by_bench in self.results.items():
            row: dict[str, Any] = {}
            for bench, result in by_bench.items():
                if result.ok:
                    row.update(_columns(bench, result.metrics))
            judges = {r.judge for r in by_bench.values() if r.ok and r.judge}
            row["judge"] = ", ".join(sorted(judges)) or None
            row["notes"] = "; ".join(f"{b}: {r.status}" for b, r in by_bench.items() if not r.ok)
            rows[model] = row
        return pd.DataFrame.from_dict(rows, orient="index")


def _pct(value: float | None) -> float | None:
    return None if value is None else 100 * value


def _columns(bench: str, m: dict[str, Any]) -> dict[str, Any]:
    """Table cells of one benchmark's metrics."""
    if bench in CHAIR_PREFIX:
        p = CHAIR_PREFIX[bench]
        return {f"{p} Resp. (CHAIRs_refine)": _pct(m["CHAIRs_refine"]), f"{p} Mention (CHAIRi)": _pct(m["CHAIRi"]),
                f"{p} CHAIRs": _pct(m["CHAIRs"]), f"{p} recall": _pct(m["recall"]), f"{p} avg_len": m["avg_len"]}
    if bench in ("pope", "world_pope"):
        cells = {f"POPE {split} {name}": _pct(s[key]) for split, s in m["splits"].items()
                 for name, key in (("acc", "accuracy"), ("F1", "f1"), ("yes-ratio", "yes_ratio"))}
        # the world's other short questions (colour, count, cell): does alignment keep them?
        cells.update({f"World {key.removesuffix('_accuracy')} acc": _pct(value) for key, value in m.items()
                      if key.endswith("_accuracy")})
        return cells
    if bench == "mmhal_bench":
        return {"MMHal score": m["score"], paper.MMHAL_INFO: m["informativeness"],
                paper.MMHAL_HALL: _pct(m["hallucination_rate"])}
    if bench == "llava_bench":
        return {column: m[category]["relative"] for category, column in paper.LLAVA.items()}
    raise ValueError(f"no table columns for benchmark {bench!r}")


def model_slug(name: str) -> str:
    """A folder name for a model name: "DDPO gamma=5" -> "ddpo-gamma-5"."""
    return re.sub(r"[^a-z0-9.]+", "-", name.lower()).strip("-.") or "model"


def _failure(stage: str, err: Exception) -> str:
    return f"failed: {stage}: {type(err).__name__}: {err}"


def run_benchmarks(cfg: Config, models: dict[str, str], sources: Sources | None = None) -> SuiteResult:
    """Generate and score every benchmark of `cfg.evaluation.benchmarks` for every model (name -> path).

    `sources` says where benchmark data is fetched from (default: the public originals, cached in
    `$RLHFV_NB_CACHE`). Judged benchmarks run only when `cfg.evaluation.judge.api_key_env` is set.
    """
    slugs = {name: model_slug(name) for name in models}
    if len(set(slugs.values())) != len(slugs):
        raise ValueError(f"model names must give distinct folder names, got {slugs}")
    ctx = Context(cfg, sources or Sources())
    key_env = cfg.evaluation.judge.api_key_env
    results: dict[str, dict[str, BenchmarkResult]] = {name: {} for name in models}
    tasks: list[Task] = []
    for names, build in plan(cfg.evaluation.benchmarks):
        if set(names) & set(JUDGED) and not JudgeClient.available(key_env):
            status = f"skipped: no {key_env}"
        else:
            try:
                tasks.append(build(ctx))
                continue
            except Exception as err:  # reported in the result; the other benchmarks still run
                status = _failure(f"preparing {'/'.join(names)}", err)
        log.warning("%s: %s", "/".join(names), status)
        for by_bench in results.values():
            by_bench.update({name: BenchmarkResult(status) for name in names})
    settings = eval_settings(cfg)
    for name, path in models.items():
        folder = cfg.layout.eval_model(slugs[name])
        results[name].update(_evaluate_model(cfg, path, folder, tasks, settings))
        results[name] = {b: results[name][b] for b in dict.fromkeys(cfg.evaluation.benchmarks)}
    j = cfg.evaluation.judge
    return SuiteResult(results, dict(models), settings, {"model": j.model, "base_url": j.base_url})


def _evaluate_model(
    cfg: Config, path: str, folder: Path, tasks: list[Task], settings: GenerationSettings
) -> dict[str, BenchmarkResult]:
    """Answer every task with one model (loaded once, freed before judging), then score each task."""
    if not tasks:
        return {}
    try:
        processor = load_processor(path, cfg.model)
        model = load_model(path, cfg.model, device_map="auto" if torch.cuda.is_available() else None)
    except Exception as err:
        status = _failure(f"loading model {path}", err)
        return {name: BenchmarkResult(status) for task in tasks for name in task.benchmarks}
    out: dict[str, BenchmarkResult] = {}
    answers: dict[str, dict[str, str]] = {}
    for task in tasks:
        try:
            generated = generate_answers(model, processor, task.items, settings,
                                         answers_path(folder / task.name, settings), cfg.evaluation.batch_size)
            answers[task.name] = {a["id"]: a["answer"] for a in generated}
        except Exception as err:
            out.update({name: BenchmarkResult(_failure("generating answers", err)) for name in task.benchmarks})
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    for task in tasks:
        if task.name in answers:
            out.update(_score(cfg, task, answers[task.name], folder / task.name, settings))
    return out


def answers_path(folder: Path, settings: GenerationSettings) -> Path:
    """A task's answers under `settings`: other settings (e.g. a changed max_new_tokens) get another file."""
    return folder / f"answers-{settings.key}.jsonl"


def _score(cfg: Config, task: Task, answers: dict[str, str], folder: Path, settings: GenerationSettings
           ) -> dict[str, BenchmarkResult]:
    """Score one task's answers (through a fresh judge client, so its usage is this task's); writes scores.json."""
    j = cfg.evaluation.judge
    try:
        judge = JudgeClient(j.model, j.base_url, j.api_key_env, cache_dir=cfg.layout.judge_cache,
                            max_concurrency=j.max_concurrency) if task.judged else None
        metrics, details = task.score(answers, judge)
        write_json(folder / "scores.json", details)
    except Exception as err:
        return {name: BenchmarkResult(_failure("scoring", err)) for name in task.benchmarks}
    counts = {"n_items": len(answers), "n_empty_answers": sum(not a.strip() for a in answers.values())}
    answers_file = str(answers_path(folder, settings))
    return {name: BenchmarkResult("ok", {**counts, **m}, j.model if task.judged else None, answers_file)
            for name, m in metrics.items()}
