"""Evaluation throughput: answer generation (batched vs one by one) and CHAIR scoring.

    python -m bench.eval_throughput                   # tiny random-weight model, 32 items, 3000 responses
    python -m bench.eval_throughput --model runs/cpu-tiny/ddpo/gamma5/final

Generation uses `rlhfv_nb.generate.generate_answers` (greedy) on synthetic-world evaluation items; CHAIR uses
`rlhfv_nb.evaluate.chair.score_responses` with the world vocabulary and with the COCO vocabulary. Each figure is
the median over `--repeats` timed runs after one warm-up run (kept as `times[0]`).
JSON goes to `bench/results/`.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.common import RESULTS, machine, markdown_table, median, recorded_args
from bench.synthetic import coco_responses, world_responses
from rlhfv_nb import world
from rlhfv_nb.config import ModelConfig, TinyModelConfig
from rlhfv_nb.data import encode_image
from rlhfv_nb.evaluate.chair import score_responses
from rlhfv_nb.files import write_json
from rlhfv_nb.generate import GenerationSettings, generate_answers
from rlhfv_nb.modeling import build_tiny_model, count_parameters, load_model, load_processor


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny", help="'tiny' (cpu-tiny shape, random weights) or a model id/folder")
    p.add_argument("--items", type=int, default=32, help="evaluation items to answer")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--responses", type=int, default=3000, help="synthetic responses to score with CHAIR")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--results-dir", type=Path, default=RESULTS)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def eval_items(n: int, seed: int) -> list[dict[str, Any]]:
    """`n` description prompts on fresh synthetic-world images."""
    cfg, rng = world.WorldConfig(), random.Random(seed)
    return [{"id": f"eval-{i}", "image": encode_image(world.render(scene, cfg)),
             "question": rng.choice(world.DESCRIBE_PROMPTS)}
            for i, scene in enumerate(world.make_fresh_scenes(cfg, n, seed + 2))]


def load(args: argparse.Namespace, work: Path) -> tuple[Any, Any]:
    """Processor and model (built with random weights for `tiny`), on the GPU when there is one."""
    path = args.model
    if path == "tiny":
        cfg = world.WorldConfig()
        corpus = [f"USER: <image>\n{q} ASSISTANT: {world.describe(s, random.Random(i), cfg)}</s>"
                  for i, (q, s) in enumerate(zip(world.DESCRIBE_PROMPTS * 100, world.make_fresh_scenes(cfg, 300, 1)))]
        path = str(build_tiny_model(corpus, TinyModelConfig(), work / "model", args.seed))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return load_processor(path, ModelConfig()), load_model(path, ModelConfig()).to(device).eval()


def timed(fn: Callable[[], Any], repeats: int) -> tuple[list[float], Any]:
    """Wall times of a first (warm-up) call and of `repeats` further calls, and the last call's result."""
    times, result = [], None
    for _ in range(repeats + 1):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return times, result


def generation(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    """Tokens/s and items/s for the whole item set, one batch size at a time."""
    items = eval_items(args.items, args.seed)
    processor, model = load(args, work)
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens)
    rows = []
    for batch in dict.fromkeys([args.batch_size, 1]):
        def answer(batch: int = batch) -> list[dict[str, Any]]:
            return generate_answers(model, processor, items, settings, None, batch, progress=False)

        times, answers = timed(answer, args.repeats)
        tokens, seconds = sum(a["new_tokens"] for a in answers), median(times[1:])
        rows.append({"batch_size": batch, "items": len(items), "new_tokens": tokens, "seconds": seconds,
                     "tokens_per_s": tokens / seconds, "items_per_s": len(items) / seconds, "times": times})
    rows[0]["params"] = count_parameters(model)["total"]
    return rows


def chair(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Responses/s of CHAIR scoring (warm: word caches filled by the warm-up run) per vocabulary."""
    rows = []
    for name, make in (("world", world_responses), ("coco", coco_responses)):
        responses, truth, vocab = make(args.responses, args.seed)
        times, result = timed(lambda r=responses, t=truth, v=vocab: score_responses(r, t, v), args.repeats)
        seconds = median(times[1:])
        rows.append({"vocabulary": name, "responses": len(responses), "seconds": seconds,
                     "responses_per_s": len(responses) / seconds, "CHAIRs": result.summary["CHAIRs"],
                     "CHAIRi": result.summary["CHAIRi"], "first_call_s": times[0], "times": times})
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-eval-") as work:
        gen = generation(args, Path(work))
    scores = chair(args)
    name = "tiny" if args.model == "tiny" else Path(args.model).name
    report = {"model": name, "args": recorded_args(args), "machine": machine(),
              "generation": gen, "chair": scores}
    path = write_json(args.results_dir / f"eval_throughput-{name}.json", report)
    print(f"## generation: {name} ({gen[0]['params']:,} parameters), {args.items} items, greedy, "
          f"{args.max_new_tokens} new tokens max, medians of {args.repeats}\n")
    print(markdown_table(["batch size", "seconds", "new tokens/s", "items/s"],
                         [[g["batch_size"], g["seconds"], g["tokens_per_s"], g["items_per_s"]] for g in gen]))
    if len(gen) > 1:
        print(f"\nbatched / one-by-one speed-up: {gen[0]['tokens_per_s'] / gen[1]['tokens_per_s']:.2f}x")
    print(f"\n## CHAIR scoring, {args.responses} responses, medians of {args.repeats}\n")
    print(markdown_table(["vocabulary", "seconds", "responses/s", "first call (s)", "CHAIRs", "CHAIRi"],
                         [[c["vocabulary"], c["seconds"], c["responses_per_s"], c["first_call_s"], c["CHAIRs"],
                           c["CHAIRi"]] for c in scores]))
    print(f"\nresults: {path}", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
