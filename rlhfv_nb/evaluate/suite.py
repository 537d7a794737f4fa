"""One call for notebook 04: every configured benchmark for every model, answers cached, failures reported.

Per model and generation pass, answers go to `<run>/eval/<model-slug>/<task>/answers-<key>.jsonl` (resumable; the
key covers the generation settings and the backend: an in-process model's fingerprint, or the server) and the
detailed scores to `scores.json` beside it.

A benchmark that cannot run because of its surroundings (no judge key, data that cannot be fetched or is not the
released file, a model folder that cannot be read, a judge or model server that is down) gets a `status` saying
why, and the others still run; anything else is a bug and raises. A benchmark some of whose items could not be
scored (judge errors, replies that never parsed, failed object extractions) is "partial", with the counts; its
numbers are over the items that were scored.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from rlhfv_nb import world_eval
from rlhfv_nb.config import Config
from rlhfv_nb.evaluate import paper
from rlhfv_nb.evaluate.benchmarks import BenchmarkDataError
from rlhfv_nb.evaluate.judge import JudgeClient, JudgeUnavailable
from rlhfv_nb.evaluate.paper import paper_table
from rlhfv_nb.evaluate.tasks import Context, Sources, Task, needs_judge, plan
from rlhfv_nb.files import write_json
from rlhfv_nb.generate import GenerationSettings, eval_settings, open_backend, read_answers
from rlhfv_nb.pipeline import world_config
from rlhfv_nb.served import ServedError

__all__ = ["BenchmarkResult", "Sources", "SuiteResult", "model_slug", "paper_table", "run_benchmarks", "world_scores"]

log = logging.getLogger(__name__)
# What a benchmark's surroundings can do to it; every other exception is a bug and propagates.
ENVIRONMENT_FAILURES = (OSError, BenchmarkDataError, JudgeUnavailable, ServedError)
CHAIR_PREFIX = {"object_halbench": "ObjHal", "world_chair": "World"}
WORD_MATCH_PREFIX = "ObjHal (word match)"  # never the paper's columns: those were extracted by an LLM
CHAIR_COLUMNS = {"CHAIRs_refine": "Resp. (CHAIRs_refine)", "CHAIRi": "Mention (CHAIRi)", "CHAIRs": "CHAIRs",
                 "recall": "recall"}  # CHAIR summary key -> column, after the benchmark's prefix
# the world's attribute check (`world_eval.check_attributes`) summary key -> column
WORLD_ATTRIBUTE_COLUMNS = {"wrong_color": "World wrong color", "wrong_place": "World wrong place",
                           "attribute_hallucination": "World AttrHal"}
# every world description metric with per-image counts (`world_eval.WorldScores.counts`) -> its column
WORLD_COLUMNS = {**{key: f"{CHAIR_PREFIX['world_chair']} {name}" for key, name in CHAIR_COLUMNS.items()},
                 **WORLD_ATTRIBUTE_COLUMNS}
AMBER_COLUMNS = {"AMBER CHAIR": ("generative", "CHAIR"), "AMBER Cover": ("generative", "Cover"),
                 "AMBER Hal": ("generative", "Hal"), "AMBER Cog": ("generative", "Cog")}


@dataclass
class BenchmarkResult:
    """One model on one benchmark. `status`: "ok", "partial: <counts>", "skipped: <why>" or "failed: <why>"."""

    status: str
    metrics: dict[str, Any] = field(default_factory=dict)
    judge: str | None = None  # the LLM behind the scores (judge or object extractor), None: no LLM
    answers: str | None = None  # the answers file
    method: str | None = None  # how the answers were scored

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def scored(self) -> bool:
        """Whether there are numbers: ok, or partial (over the items that were scored)."""
        return self.ok or self.status.startswith("partial")


@dataclass
class SuiteResult:
    """Results per model (in the order given) and benchmark, with the settings that produced them."""

    results: dict[str, dict[str, BenchmarkResult]]
    models: dict[str, str]
    generation: GenerationSettings
    judge: dict[str, Any]
    backend: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, for `metrics.json`."""
        return {
            "models": self.models,
            "generation": asdict(self.generation),
            "backend": self.backend,
            "judge": self.judge,
            "results": {m: {b: asdict(r) for b, r in by_bench.items()} for m, by_bench in self.results.items()},
        }

    def table(self) -> pd.DataFrame:
        """Headline metrics, rows = models. Percent, except avg_len (words) and MMHal score (0..6).

        Column names match `paper_table()` where the protocol is the paper's (Object HalBench only with LLM
        extraction); `column_sources()` names how every column was scored. `judge` names the LLMs behind a
        row's numbers, `notes` every benchmark that is not ok.
        """
        rows = {}
        for model, by_bench in self.results.items():
            row: dict[str, Any] = {}
            for bench, result in by_bench.items():
                if result.scored:
                    row.update(_columns(bench, result.metrics))
            judges = {r.judge for r in by_bench.values() if r.scored and r.judge}
            row["judge"] = ", ".join(sorted(judges)) or None
            row["notes"] = "; ".join(f"{b}: {r.status}" for b, r in by_bench.items() if not r.ok)
            rows[model] = row
        return pd.DataFrame.from_dict(rows, orient="index")

    def column_sources(self) -> pd.DataFrame:
        """For every column of `table()`: its benchmark, how answers were scored, and by which LLM."""
        sources: dict[str, dict[str, Any]] = {}
        for by_bench in self.results.values():
            for bench, result in by_bench.items():
                if not result.scored:
                    continue
                judge = result.judge
                repeats = result.metrics.get("repeats", 1)
                if judge and repeats > 1:
                    judge = f"{judge} (mean of {repeats} runs)"
                for column in _columns(bench, result.metrics):
                    sources.setdefault(column, {"benchmark": bench, "scored by": result.method,
                                                "LLM": judge or "none"})
        return pd.DataFrame.from_dict(sources, orient="index")


def _pct(value: float | None) -> float | None:
    return None if value is None else 100 * value


def _with_std(cells: dict[str, Any], stds: dict[str, Any], m: dict[str, Any]) -> dict[str, Any]:
    """`cells` plus a "<column> std" beside each one whose judge ran several times."""
    if m.get("repeats", 1) > 1:
        cells.update({f"{column} std": value for column, value in stds.items()})
    return cells


def _columns(bench: str, m: dict[str, Any]) -> dict[str, Any]:
    """Table cells of one benchmark's metrics."""
    if bench in CHAIR_PREFIX:
        p = CHAIR_PREFIX[bench]
        if bench == "object_halbench" and not m["extraction"].startswith("llm"):
            p = WORD_MATCH_PREFIX
        cells = {f"{p} {name}": _pct(m[key]) for key, name in CHAIR_COLUMNS.items()}
        cells[f"{p} avg_len"] = m["avg_len"]
        # the world's colours and places of objects in the scene (AMBER-like attribute hallucination)
        cells.update({name: _pct(m["attributes"][key]) for key, name in WORLD_ATTRIBUTE_COLUMNS.items()
                      if "attributes" in m})
        return cells
    if bench in ("pope", "world_pope"):
        p = "POPE" if bench == "world_pope" or m.get("source", "").startswith("official") else "POPE (regenerated)"
        cells = {f"{p} {split} {name}": _pct(s[key]) for split, s in m["splits"].items()
                 for name, key in (("acc", "accuracy"), ("F1", "f1"), ("yes-ratio", "yes_ratio"))}
        # the world's other short questions (colour, count, cell): does alignment keep them?
        cells.update({f"World {key.removesuffix('_accuracy')} acc": _pct(value) for key, value in m.items()
                      if key.endswith("_accuracy")})
        return cells
    if bench == "mmhal_bench":
        return _with_std({"MMHal score": m["score"], paper.MMHAL_INFO: m["informativeness"],
                          paper.MMHAL_HALL: _pct(m["hallucination_rate"])},
                         {"MMHal score": m.get("score_std"), paper.MMHAL_INFO: m.get("informativeness_std"),
                          paper.MMHAL_HALL: _pct(m.get("hallucination_rate_std"))}, m)
    if bench == "llava_bench":
        return _with_std({column: m[category]["relative"] for category, column in paper.LLAVA.items()},
                         {column: m[category].get("relative_std") for category, column in paper.LLAVA.items()}, m)
    if bench == "amber":
        cells = {column: _pct(m.get(section, {}).get(key)) for column, (section, key) in AMBER_COLUMNS.items()}
        overall = m.get("discriminative", {}).get("overall", {})
        cells.update({"AMBER Acc": _pct(overall.get("accuracy")), "AMBER F1": _pct(overall.get("f1")),
                      "AMBER score": _pct(m.get("amber_score"))})
        return cells
    raise ValueError(f"no table columns for benchmark {bench!r}")


def model_slug(name: str) -> str:
    """A folder name for a model name: "DDPO gamma=5" -> "ddpo-gamma-5"."""
    return re.sub(r"[^a-z0-9.]+", "-", name.lower()).strip("-.") or "model"


def world_scores(cfg: Config, suite: SuiteResult) -> dict[str, world_eval.WorldScores]:
    """The held-out world descriptions' CHAIR and attribute details of every model whose `world_chair` was scored,
    from the answers the suite scored (for example answers and bootstrap intervals); empty without `world_chair`."""
    scored = {model: by_bench["world_chair"] for model, by_bench in suite.results.items()
              if "world_chair" in by_bench and by_bench["world_chair"].scored}
    if not scored:
        return {}
    items, vocab = world_eval.eval_items(cfg), world_eval.world_vocabulary(cfg)
    world = world_config(cfg)
    return {model: world_eval.world_scores(items, {k: v["answer"] for k, v in read_answers(Path(r.answers)).items()},
                                           vocab, world)
            for model, r in scored.items()}


def _failure(stage: str, err: Exception) -> str:
    return f"failed: {stage}: {type(err).__name__}: {err}"


def run_benchmarks(cfg: Config, models: dict[str, str], sources: Sources | None = None) -> SuiteResult:
    """Generate and score every benchmark of `cfg.evaluation.benchmarks` for every model (name -> path).

    `sources` says where benchmark data is fetched from (default: the public originals, cached in
    `$RLHFV_NB_CACHE`). Judged benchmarks (and Object HalBench's LLM extraction) run only when
    `cfg.evaluation.judge.api_key_env` is set.
    """
    slugs = {name: model_slug(name) for name in models}
    if len(set(slugs.values())) != len(slugs):
        raise ValueError(f"model names must give distinct folder names, got {slugs}")
    if cfg.evaluation.backend == "openai" and cfg.evaluation.server.model and len(models) > 1:
        raise ValueError(f"evaluation.server.model names one served model ({cfg.evaluation.server.model!r}) for "
                         f"{len(models)} models: leave it null so each model is found by its folder")
    ctx = Context(cfg, sources or Sources())
    key_env = cfg.evaluation.judge.api_key_env
    results: dict[str, dict[str, BenchmarkResult]] = {name: {} for name in models}
    tasks: list[Task] = []
    for names, build in plan(cfg.evaluation.benchmarks):
        if any(needs_judge(cfg, name) for name in names) and not JudgeClient.available(key_env):
            status = f"skipped: no {key_env}"
        else:
            try:
                tasks.append(build(ctx))
                continue
            except ENVIRONMENT_FAILURES as err:  # reported in the result; the other benchmarks still run
                status = _failure(f"preparing {'/'.join(names)}", err)
        log.warning("%s: %s", "/".join(names), status)
        for by_bench in results.values():
            by_bench.update({name: BenchmarkResult(status) for name in names})
    settings = eval_settings(cfg)
    for name, path in models.items():
        folder = cfg.layout.eval_model(slugs[name])
        results[name].update(_evaluate_model(cfg, path, folder, tasks, settings))
        results[name] = {b: results[name][b] for b in dict.fromkeys(cfg.evaluation.benchmarks)}
    j, server = cfg.evaluation.judge, cfg.evaluation.server
    judge = {"model": j.model, "base_url": j.base_url, "repeats": j.repeats,
             "object_extraction_model": j.extraction_model or j.model}
    backend = {"kind": cfg.evaluation.backend,
               **({"base_url": server.base_url, "model": server.model} if cfg.evaluation.backend == "openai" else {})}
    return SuiteResult(results, dict(models), settings, judge, backend)


def _evaluate_model(
    cfg: Config, path: str, folder: Path, tasks: list[Task], settings: GenerationSettings
) -> dict[str, BenchmarkResult]:
    """Answer every task with one model (loaded once, freed before judging), then score each task."""
    if not tasks:
        return {}
    try:
        backend = open_backend(cfg, path)
    except ENVIRONMENT_FAILURES as err:
        status = _failure(f"loading model {path}", err)
        return {name: BenchmarkResult(status) for task in tasks for name in task.benchmarks}
    key = backend.key(settings)
    out: dict[str, BenchmarkResult] = {}
    answers: dict[str, dict[str, str]] = {}
    with backend:
        for task in tasks:
            try:
                generated = backend.answer(task.items, settings, answers_path(folder / task.name, key))
            except ENVIRONMENT_FAILURES as err:
                out.update({name: BenchmarkResult(_failure("generating answers", err)) for name in task.benchmarks})
                continue
            answers[task.name] = {a["id"]: a["answer"] for a in generated}
    for task in tasks:
        if task.name in answers:
            out.update(_score(cfg, task, answers[task.name], answers_path(folder / task.name, key)))
    return out


def answers_path(folder: Path, key: str) -> Path:
    """A task's answers under the settings and backend `key`: other settings get another file."""
    return folder / f"answers-{key}.jsonl"


def _status(metrics: dict[str, Any]) -> str:
    """"ok"; "partial: <k> of <n> items not scored (...)" when some items could not be scored; "failed: scoring:
    ..." when none could."""
    failed = metrics.get("n_failed", 0) + metrics.get("n_extraction_failed", 0)
    if not failed:
        return "ok"
    kinds = [f"{metrics[k]} {k.removeprefix('n_').replace('_', ' ')}" for k in
             ("n_failed_judgments", "n_unparsed", "n_extraction_failed") if metrics.get(k)]
    unscored = f"{failed} of {metrics['n_items']} items not scored ({', '.join(kinds)})"
    return f"failed: scoring: {unscored}" if failed >= metrics["n_items"] else f"partial: {unscored}"


def _score(cfg: Config, task: Task, answers: dict[str, str], answers_file: Path) -> dict[str, BenchmarkResult]:
    """Score one task's answers (through a fresh judge client, so its usage is this task's); writes scores.json."""
    j = cfg.evaluation.judge
    try:
        judge = JudgeClient(task.judge_model, j.base_url, j.api_key_env, cache_dir=cfg.layout.judge_cache,
                            max_concurrency=j.max_concurrency, max_consecutive_failures=j.max_consecutive_failures
                            ) if task.judge_model else None
        metrics, details = task.score(answers, judge)
    except JudgeUnavailable as err:  # no key accepted, or the judge went down (its circuit breaker)
        return {name: BenchmarkResult(_failure("scoring", err), method=task.method, judge=task.judge_model)
                for name in task.benchmarks}
    write_json(answers_file.parent / "scores.json", details)
    counts = {"n_items": len(answers), "n_empty_answers": sum(not a.strip() for a in answers.values())}
    out = {}
    for name, m in metrics.items():
        merged = {**counts, **m}
        out[name] = BenchmarkResult(_status(merged), merged, task.judge_model, str(answers_file), task.method)
    return out
