"""The suite's benchmarks as tasks: the items to answer (`id`, `image` bytes, `question`) and how to score them.

A task is one generation pass; `world` serves both `world_chair` and `world_pope`. Building a task
fetches (or finds in the cache) everything it needs, so a missing file fails before any generation.
Each task says how it is scored (`method`) and by which judge model, if any (`judge_model`), so every
number in the results table can name its protocol.
"""

from __future__ import annotations

import base64
import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from rlhfv_nb import world_eval
from rlhfv_nb.config import Config, project_root
from rlhfv_nb.evaluate import amber as amber_benchmark
from rlhfv_nb.evaluate import benchmarks
from rlhfv_nb.evaluate.chair import evaluate_chair
from rlhfv_nb.evaluate.judge import JudgeClient
from rlhfv_nb.evaluate.llava_bench import evaluate_llava_bench
from rlhfv_nb.evaluate.mmhal import evaluate_mmhal
from rlhfv_nb.evaluate.pope import STRATEGIES, build_questions, evaluate_pope, images_from_coco
from rlhfv_nb.pipeline import world_config

JUDGED = ("mmhal_bench", "llava_bench")  # always judged; Object HalBench is when its extraction is the LLM's
WORLD = ("world_chair", "world_pope")
POPE_IMAGES = 500  # POPE probes 500 COCO val2014 images with at least 3 objects each
POPE_OBJECTS = 3

Answers = dict[str, str]  # item id -> answer
# (metrics per benchmark name, details written to scores.json)
Scorer = Callable[[Answers, JudgeClient | None], tuple[dict[str, dict], dict]]


@dataclass(frozen=True)
class Sources:
    """Where benchmark data comes from: the public originals unless pointed elsewhere (a mirror, a test)."""

    cache_dir: Path | None = None  # default: benchmarks.default_cache_dir()
    coco_annotations_url: str = benchmarks.COCO_ANNOTATIONS_URL
    coco_image_url: str = benchmarks.COCO_VAL2014_IMAGE_URL
    object_halbench_url: str = benchmarks.OBJECT_HALBENCH_URL
    llava_bench_url: str = benchmarks.LLAVA_BENCH_URL  # the LLaVA repository (files at their paths in it)
    pope_url: str = benchmarks.POPE_URL
    amber_url: str = amber_benchmark.AMBER_BASE_URL
    hub_endpoint: str | None = None  # Hugging Face hub (MMHal-Bench)


@dataclass
class Task:
    name: str  # folder under <run>/eval/<model>/
    benchmarks: tuple[str, ...]
    items: list[dict[str, Any]]
    score: Scorer
    method: str  # how answers are scored, as the results table names it
    judge_model: str | None = None  # the LLM that scores (judges or extracts), None: no judge

    @property
    def judged(self) -> bool:
        return self.judge_model is not None


class Context:
    """The config and data sources shared by the tasks; COCO is located once."""

    def __init__(self, cfg: Config, sources: Sources) -> None:
        self.cfg = cfg
        self.sources = sources
        self.cache_dir = Path(sources.cache_dir) if sources.cache_dir else benchmarks.default_cache_dir()
        self.limit = cfg.evaluation.limit

    @property
    def coco_root(self) -> Path:
        """`evaluation.coco_dir`, else `<cache>/coco2014`: holds `annotations/` and `val2014/` images."""
        if self.cfg.evaluation.coco_dir is None:
            return self.cache_dir / "coco2014"
        path = Path(self.cfg.evaluation.coco_dir).expanduser()
        return path if path.is_absolute() else project_root() / path

    @cached_property
    def coco_annotations(self) -> Path:
        """The COCO folder with both val2014 annotation files, fetched into the cache if no coco_dir is set."""
        if self.cfg.evaluation.coco_dir is None:
            benchmarks.fetch_coco_annotations(self.cache_dir, self.sources.coco_annotations_url)
        for name in benchmarks.COCO_FILES:
            benchmarks.coco_annotation_path(self.coco_root, name)
        return self.coco_root

    def coco_image(self, image_id: int | str) -> bytes:
        return benchmarks.coco_image(image_id, self.coco_root, self.sources.coco_image_url).read_bytes()


def object_halbench_extraction(cfg: Config) -> str:
    """"llm" (upstream's object extraction by the judge) or "words" (judge-free word match) for this config."""
    method = cfg.evaluation.object_halbench_extraction
    if method == "auto":
        return "llm" if JudgeClient.available(cfg.evaluation.judge.api_key_env) else "words"
    return method


def needs_judge(cfg: Config, name: str) -> bool:
    """Whether benchmark `name` is scored by the LLM judge under this config."""
    return name in JUDGED or (name == "object_halbench" and object_halbench_extraction(cfg) == "llm")


def object_halbench(ctx: Context) -> Task:
    """The 300 Object HalBench prompts (images embedded in the file), CHAIR against COCO annotations.

    Objects are extracted as upstream when `object_halbench_extraction` gives "llm" (the judge's
    `extraction_model`, upstream's system prompt, temperature 0.2), else matched word by word."""
    rows = benchmarks.fetch_object_halbench(ctx.cache_dir, ctx.sources.object_halbench_url)[: ctx.limit]
    coco_dir = ctx.coco_annotations
    items = [{"id": str(i), "image": base64.b64decode(r["image"]), "question": r["question"]}
             for i, r in enumerate(rows)]
    image_ids = {str(i): r["image_id"] for i, r in enumerate(rows)}
    questions = {str(i): r["question"] for i, r in enumerate(rows)}
    method = object_halbench_extraction(ctx.cfg)
    j = ctx.cfg.evaluation.judge

    def score(answers: Answers, judge: JudgeClient | None) -> tuple[dict[str, dict], dict]:
        result = evaluate_chair(answers, coco_dir, image_ids=image_ids, judge=judge, method=method,
                                questions=questions)
        return {"object_halbench": result.summary}, result.to_dict()

    if method == "llm":
        return Task("object_halbench", ("object_halbench",), items, score, "LLM object extraction (upstream)",
                    j.extraction_model or j.model)
    return Task("object_halbench", ("object_halbench",), items, score, "word match, WordNet lemmas (no LLM)")


def _pope_key(question: dict) -> str:
    return f"{question['image']}|{question['text']}"


def pope(ctx: Context) -> Task:
    """POPE random/popular/adversarial; an (image, question) asked in several splits is answered once.

    `evaluation.pope_source` "official": RUCAIBox/POPE's released COCO files (3,000 questions per split over 500
    images), behind every published number. "coco": regenerated from COCO instances with `evaluation.pope_seed`
    (not the training seed), negatives and rankings built over all sampled images. `evaluation.limit` keeps the
    questions of the first `limit` images.
    """
    if ctx.cfg.evaluation.pope_source == "official":
        splits = benchmarks.fetch_pope(ctx.cache_dir, ctx.sources.pope_url)
        images = list(dict.fromkeys(q["image"] for q in splits["random"]))
        source = "official (RUCAIBox/POPE coco_pope_*.json)"
    else:
        annotated = images_from_coco(ctx.coco_annotations)
        eligible = sorted(name for name, objects in annotated.items() if len(objects) >= POPE_OBJECTS)
        seed = ctx.cfg.evaluation.pope_seed
        images = random.Random(seed).sample(eligible, min(POPE_IMAGES, len(eligible)))
        splits = {s: build_questions({n: annotated[n] for n in images}, s, POPE_OBJECTS, seed) for s in STRATEGIES}
        source = f"regenerated from COCO val2014 (seed {seed})"
    chosen = set(images[: ctx.limit])
    splits = {s: [q for q in questions if q["image"] in chosen] for s, questions in splits.items()}
    pixels = {name: ctx.coco_image(Path(name).stem.rsplit("_", 1)[-1]) for name in images if name in chosen}
    unique = {_pope_key(q): q for questions in splits.values() for q in questions}
    items = [{"id": key, "image": pixels[q["image"]], "question": q["text"]} for key, q in unique.items()]

    def score(answers: Answers, judge: JudgeClient | None) -> tuple[dict[str, dict], dict]:
        scores = evaluate_pope({s: (qs, {q["question_id"]: answers[_pope_key(q)] for q in qs})
                                for s, qs in splits.items()})
        return {"pope": {"splits": scores, "source": source}}, {"splits": scores, "questions": splits}

    return Task("pope", ("pope",), items, score, f"yes/no parse as POPE's script; questions {source}")


def amber(ctx: Context) -> Task:
    """AMBER's generative and discriminative queries on its images (`evaluation.amber_images`), no judge."""
    entries = amber_benchmark.load_amber(ctx.cache_dir, ctx.sources.amber_url, ctx.cfg.evaluation.amber_images,
                                         limit=ctx.limit)
    items = [{"id": str(e["id"]), "image": e["image"], "question": e["question"]} for e in entries]

    def score(answers: Answers, judge: JudgeClient | None) -> tuple[dict[str, dict], dict]:
        metrics, details = amber_benchmark.score_amber(entries, answers)
        return {"amber": metrics}, details

    return Task("amber", ("amber",), items, score, "AMBER's word matching (no spaCy vectors: see amber.py)")


def mmhal_bench(ctx: Context) -> Task:
    """MMHal-Bench items and images from the hub dataset, rated by the judge."""
    endpoint = ctx.sources.hub_endpoint
    entries = benchmarks.fetch_mmhal_bench(ctx.cache_dir, endpoint=endpoint)[: ctx.limit]
    items = [{"id": str(i), "question": e["question"],
              "image": benchmarks.fetch_mmhal_image(e, ctx.cache_dir, endpoint=endpoint).read_bytes()}
             for i, e in enumerate(entries)]

    def score(answers: Answers, judge: JudgeClient | None) -> tuple[dict[str, dict], dict]:
        result = evaluate_mmhal(entries, judge, [answers[item["id"]] for item in items],
                                repeats=ctx.cfg.evaluation.judge.repeats)
        return {"mmhal_bench": result["summary"]}, result

    return Task("mmhal_bench", ("mmhal_bench",), items, score, "LLM judge rating 0-6 (upstream prompt)",
                ctx.cfg.evaluation.judge.model)


def llava_bench(ctx: Context) -> Task:
    """LLaVA-Bench (COCO qa90) questions on COCO val2014 images, reviewed by the judge against GPT-4 answers."""
    data = benchmarks.fetch_llava_bench(ctx.cache_dir, ctx.sources.llava_bench_url)
    questions = data["questions"][: ctx.limit]
    pixels = {name: ctx.coco_image(Path(name).stem) for name in dict.fromkeys(q["image"] for q in questions)}
    items = [{"id": str(q["question_id"]), "image": pixels[q["image"]], "question": q["text"]} for q in questions]

    def score(answers: Answers, judge: JudgeClient | None) -> tuple[dict[str, dict], dict]:
        by_question = {q["question_id"]: answers[str(q["question_id"])] for q in questions}
        result = evaluate_llava_bench(questions, data["references"], data["contexts"], by_question, judge,
                                      repeats=ctx.cfg.evaluation.judge.repeats)
        return {"llava_bench": result["summary"]}, result

    return Task("llava_bench", ("llava_bench",), items, score, "LLM judge review vs GPT-4 answers (upstream rule)",
                ctx.cfg.evaluation.judge.model)


def world(ctx: Context, wanted: tuple[str, ...]) -> Task:
    """Held-out synthetic-world items: CHAIR and wrong colours/places on descriptions, POPE metrics on existence
    questions, accuracy on colour, count and cell questions."""
    # Descriptions first: a batch then decodes as long as its answers need (short answers stop after a few tokens),
    # instead of every batch running as long as the one description it holds.
    items = sorted(world_eval.eval_items(ctx.cfg), key=lambda item: item["qtype"] != "describe")
    vocab = world_eval.world_vocabulary(ctx.cfg)
    world_cfg = world_config(ctx.cfg)

    def score(answers: Answers, judge: JudgeClient | None) -> tuple[dict[str, dict], dict]:
        scores = world_eval.world_scores(items, answers, vocab, world_cfg)
        summary, chair, attributes = scores.summary, scores.chair, scores.attributes
        accuracies = {k: v for k, v in summary.items() if k.endswith("_accuracy")}
        metrics = {"world_chair": {**chair.summary, "attributes": attributes.summary},
                   "world_pope": {"splits": {"world": summary["pope"]}, **accuracies}}
        details = {"summary": summary, "chair": chair.to_dict(), "attributes": attributes.to_dict()}
        return {name: metrics[name] for name in wanted}, details

    return Task("world", wanted, items, score, "synthetic world: known objects, colours and places; exact answers")


BUILDERS: dict[str, Callable[[Context], Task]] = {
    "object_halbench": object_halbench,
    "pope": pope,
    "mmhal_bench": mmhal_bench,
    "llava_bench": llava_bench,
    "amber": amber,
}


def plan(names: list[str]) -> list[tuple[tuple[str, ...], Callable[[Context], Task]]]:
    """(benchmark names, task builder) per generation pass, in the order asked; ValueError for unknown names."""
    unknown = [n for n in names if n not in BUILDERS and n not in WORLD]
    if unknown:
        raise ValueError(f"unknown benchmark(s) {unknown}; known: {[*BUILDERS, *WORLD]}")
    steps: list[tuple[tuple[str, ...], Callable[[Context], Task]]] = []
    wanted_world = tuple(n for n in dict.fromkeys(names) if n in WORLD)
    for name in dict.fromkeys(names):
        if name in BUILDERS:
            steps.append(((name,), BUILDERS[name]))
        elif name == wanted_world[0]:
            steps.append((wanted_world, lambda ctx: world(ctx, wanted_world)))
    return steps
