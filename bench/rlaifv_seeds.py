"""Iterative RLAIF-V against one-shot on cpu-tiny, per seed, with the same number of pairs.

    python -m bench.rlaifv_seeds --seeds 0 1 2 --threads 1
    python -m bench.rlaifv_seeds --seeds 0 1 2 --threads 2 --set rlaifv.feedback.length_filter=true \
        --out bench/results/rlaifv_seeds-length-filter-2threads.json     # a variant, with its own docs block
    python -m bench.rlaifv_seeds --write-docs      # docs/rlaifv.md's tables from the results files

Per seed, both arms start from the SFT model (and data) of `bench.cpu_tiny_seeds`' run folder of that seed and
thread count (`runs/seeds/cpu-tiny-seed<N>-<T>t`: run that first), copied into
`runs/rlaifv-seeds/seed<N>-<T>t/{iterative,oneshot}`. The iterative arm is the preset's loop (`rounds` rounds of
`prompts_per_round` prompts, each from the newest policy); the one-shot arm is one round over as many prompts
(rounds x prompts_per_round, all from the SFT model), its pairs drawn at random down to the iterative arm's total
(`rlaifv.pairs_per_round`). Finished rounds are skipped on a re-run. Results, with every round's row and the
machine: `bench/results/rlaifv_seeds-<T>thread(s).json`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.common import RESULTS, ROOT, add_set_argument, machine, markdown_table, recorded_args, seeds_main
from bench.cpu_tiny_seeds import replace_block, threads_label
from rlhfv_nb.files import read_json, write_json, write_text

if TYPE_CHECKING:
    from rlhfv_nb.config import RlaifvConfig

ROUND_KEYS = ("round", "gamma", "epoch", "prompts", "pairs", "trained_pairs", "labeler_accuracy", "wrongly_ordered",
              "tied_in_truth", "true_score_mean", "length_filter_ratio", "CHAIRs", "CHAIRi", "recall", "avg_len",
              "select", "selection", "seconds")
SHOWN = ("CHAIRs", "CHAIRi", "recall", "avg_len")
DOC = ROOT / "docs" / "rlaifv.md"


def results_path(threads: int) -> Path:
    return RESULTS / f"rlaifv_seeds-{threads_label(threads)}.json"


def copy_sft_run(source: Path, dest: Path) -> None:
    """The source run's data, base and SFT model into `dest` (what the loop reads), unless already there."""
    if not (source / "sft" / "final" / "config.json").exists():
        raise FileNotFoundError(f"{source}: no SFT model; run `python -m bench.cpu_tiny_seeds` for this seed first")
    for part in ("data", "base", "sft/final"):
        if not (dest / part).exists():
            shutil.copytree(source / part, dest / part, ignore=shutil.ignore_patterns("logps"))


def run_arm(params: Path, run_dir: Path, seed: int, overrides: dict[str, Any], loop: dict[str, Any]
            ) -> list[dict[str, Any]]:
    """The loop of `params` with `overrides`, `loop` over its `rlaifv` section; its round rows (round 0: the SFT
    model)."""
    from rlhfv_nb.config import load_config
    from rlhfv_nb.rlaifv.loop import run_loop

    merged = {**overrides, "rlaifv": {**overrides.get("rlaifv", {}), **loop}}
    cfg = load_config(params, seed=seed, run_dir=str(run_dir), **merged)
    rows = run_loop(cfg, progress=False)["rounds"]
    return [{key: row.get(key) for key in ROUND_KEYS} for row in rows]


def run_seed(params: Path, seed: int, threads: int, overrides: dict[str, Any], preset: RlaifvConfig
             ) -> dict[str, list[dict[str, Any]]]:
    """Both arms of one seed: the iterative loop, then one-shot with its prompts (`preset`'s rounds x prompts per
    round) and its pair count."""
    source = ROOT / "runs" / "seeds" / f"cpu-tiny-seed{seed}-{threads}t"
    folder = ROOT / "runs" / "rlaifv-seeds" / f"seed{seed}-{threads}t"
    for arm in ("iterative", "oneshot"):
        copy_sft_run(source, folder / arm)
    iterative = run_arm(params, folder / "iterative", seed, overrides, {})
    pairs = sum(row["pairs"] for row in iterative[1:])
    oneshot = run_arm(params, folder / "oneshot", seed, overrides, {
        "rounds": 1, "prompts_per_round": preset.rounds * preset.prompts_per_round, "pairs_per_round": pairs})
    return {"iterative": iterative, "oneshot": oneshot}


def summary(per_seed: dict[int, dict[str, list[dict[str, Any]]]]) -> dict[str, dict[str, float]]:
    """Mean over seeds of the SFT model, the one-shot model and the iterative arm's last round; `pairs` is the
    arm's pairs over all its rounds."""
    arms = {"SFT": ("iterative", False), "one-shot": ("oneshot", True), "iterative": ("iterative", True)}
    means = {}
    for name, (arm, trained) in arms.items():
        rows = [runs[arm][-1] if trained else runs[arm][0] for runs in per_seed.values()]
        means[name] = {key: statistics.fmean(row[key] for row in rows) for key in SHOWN
                       if all(row[key] is not None for row in rows)}
        if trained:
            means[name]["pairs"] = statistics.fmean(sum(row["pairs"] for row in runs[arm][1:])
                                                    for runs in per_seed.values())
    return means


def run_seeds(args: argparse.Namespace) -> dict[str, Any]:
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    from rlhfv_nb.config import load_config
    from rlhfv_nb.launch import parse_overrides

    overrides = parse_overrides(args.set)
    preset = load_config(args.params, **overrides).rlaifv
    per_seed = {}
    for seed in args.seeds:
        per_seed[seed] = run_seed(args.params, seed, args.threads, overrides, preset)
        print(seed_table(seed, per_seed[seed]), "\n", flush=True)
    result = {"args": recorded_args(args), "threads": args.threads, "per_seed": per_seed,
              "mean": summary(per_seed), "select_by": preset.select_by, "machine": machine()}
    write_json(args.out or results_path(args.threads), result)
    print(mean_table(result))
    print(gamma_summary(per_seed, selection_metric(result)))
    return result


def _cell(value: Any, digits: int = 3) -> str:
    if value is None:
        return ""
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def picked(row: dict[str, Any]) -> str:
    """The round's model: "γ5", or "γ5 e1" for gamma 5's model after epoch 1."""
    if row.get("gamma") is None:
        return ""
    return f"γ{row['gamma']:g}" + ("" if row.get("epoch") is None else f" e{row['epoch']}")


def seed_table(seed: int | str, arms: dict[str, list[dict[str, Any]]]) -> str:
    """Every round of both arms of one seed."""
    header = ["seed", "arm", "round", "picked", "pairs", "labeler accuracy", "wrongly ordered", *SHOWN]
    rows = []
    for arm, arm_rows in arms.items():
        for row in arm_rows if arm == "iterative" else arm_rows[1:]:
            rows.append([seed, arm, row["round"], picked(row), _cell(row["pairs"]),
                         _cell(row["labeler_accuracy"]), _cell(row["wrongly_ordered"]),
                         *(_cell(row[key], 1 if key == "avg_len" else 3) for key in SHOWN)])
    return markdown_table(header, rows)


def mean_table(result: dict[str, Any]) -> str:
    header = ["model (mean over seeds)", "pairs", *SHOWN]
    rows = [[name, _cell(row.get("pairs"), 0), *(_cell(row.get(key), 1 if key == "avg_len" else 3) for key in SHOWN)]
            for name, row in result["mean"].items()]
    return markdown_table(header, rows)


def selection_metric(result: dict[str, Any]) -> str:
    """The metric the rounds were picked by (the first of `select_by`; results files before `select_by` named
    metrics recorded the world CHAIR's key alone)."""
    select_by = result.get("select_by", "CHAIRi")
    return select_by if isinstance(select_by, str) else select_by[0]


def _selected(selection: dict[str, Any], model: str, metric: str) -> float | None:
    value = selection.get(model)
    return value.get(metric) if isinstance(value, dict) else value  # older results files: the value itself


def gamma_rounds(per_seed: dict[Any, dict[str, list[dict[str, Any]]]], metric: str
                 ) -> list[tuple[Any, str, int, float, float]]:
    """(seed, arm, round, selection metric of gamma 5's final model, of gamma 1's) for every round that measured
    both: the two models trained on the same pairs from the same policy, on the loop's selection images."""
    found = []
    for seed, arms in per_seed.items():
        for arm, rows in arms.items():
            for row in rows[1:]:
                selection = row.get("selection") or {}
                dense, plain = _selected(selection, "gamma=5", metric), _selected(selection, "gamma=1", metric)
                if dense is not None and plain is not None:
                    found.append((seed, arm, row["round"], dense, plain))
    return found


def gamma_summary(per_seed: dict[Any, dict[str, list[dict[str, Any]]]], metric: str) -> str:
    """One sentence: in how many rounds DDPO (gamma 5) beat plain DPO (gamma 1) on the selection images."""
    rounds = gamma_rounds(per_seed, metric)
    if not rounds:
        return "No round trained both gamma 5 and gamma 1."
    lower = sum(dense < plain for *_, dense, plain in rounds)
    mean = statistics.fmean(dense - plain for *_, dense, plain in rounds)
    return (f"Gamma 5 against gamma 1 (final models), trained on the same pairs from the same policy: the lower "
            f"{metric} on the selection images in {lower} of {len(rounds)} rounds; mean difference (gamma 5 - "
            f"gamma 1) {mean:+.4f}.")


def docs_block(result: dict[str, Any]) -> str:
    """docs/rlaifv.md's tables of one results file: the means, then every seed's rounds."""
    seeds = ", ".join(str(seed) for seed in result["per_seed"])
    lines = [mean_table(result), "", f"Per seed ({seeds}):", ""]
    lines += [seed_table(seed, arms) + "\n" for seed, arms in result["per_seed"].items()]
    lines += [gamma_summary(result["per_seed"], selection_metric(result)), ""]
    lines.append(f"Machine: {result['machine']['cpus']} CPUs, torch {result['machine']['torch']}, "
                 f"{result['threads']} torch thread(s) per process.")
    return "\n".join(lines)


def write_docs(doc: Path = DOC) -> None:
    """Every results file's block in docs/rlaifv.md: `rlaifv_seeds-<variant>.json` -> `<!-- rlaifv-seeds-<variant> -->`
    (e.g. `2threads`, or `length-filter-2threads` for a run with `--set ... --out` to that name)."""
    paths = sorted(RESULTS.glob("rlaifv_seeds-*.json"))
    if not paths:
        raise FileNotFoundError(f"no results in {RESULTS}: run the seeds first")
    text = doc.read_text()
    for path in paths:
        block = "rlaifv-seeds-" + path.stem.removeprefix("rlaifv_seeds-")
        text = replace_block(text, block, docs_block(read_json(path)), str(doc))
    write_text(doc, text)


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    return seeds_main(argv, __doc__, ROOT / "params" / "cpu-tiny-rlaifv.yaml", "rlaifv_seeds", run_seeds, write_docs,
                      add_set_argument)


if __name__ == "__main__":
    main()
