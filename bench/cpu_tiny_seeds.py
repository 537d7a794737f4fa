"""Does DDPO reduce hallucination on cpu-tiny and keep what the model can do? The whole pipeline once per seed.

    python -m bench.cpu_tiny_seeds --seeds 0 1 2 --threads 1 [--params params/cpu-tiny.yaml] [--set ddpo.lr=1e-4 ...]
    python -m bench.cpu_tiny_seeds --write-docs      # README and docs/cpu-tiny.md numbers from the results files

Per seed (every notebook, `rlhfv-nb run`'s path, each torch process limited to `--threads` threads): for SFT,
DDPO and plain DPO (gamma = 1) the world's CHAIR (response-level CHAIRs as Object HalBench reports it,
mention-level CHAIRi), object recall, answer length, wrong places, POPE accuracy and yes-ratio and the accuracy on
count, colour and "what is in the top left?" questions, with the change relative to SFT; then the mean over seeds
and whether DDPO meets cpu-tiny's targets (`TARGETS`). Results go to
`bench/results/cpu_tiny_seeds-<threads>thread(s).json` with the machine; run folders to
`runs/seeds/<name>-seed<N>-<threads>t`. Finished stages of a seed's run folder are skipped, so seeds can run in
separate processes first (two processes on two cores: `--threads 1` each) and be collected by one call.
`--write-docs` rewrites the marked blocks of README.md and docs/cpu-tiny.md from those files, so the numbers
there are the numbers of the recorded runs.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbformat

from bench.common import RESULTS, ROOT, add_set_argument, machine, markdown_table, recorded_args, seeds_main
from rlhfv_nb.files import read_json, write_json, write_text

COLUMNS = {  # metrics.json table column -> short name
    "World Resp. (CHAIRs_refine)": "CHAIRs",
    "World Mention (CHAIRi)": "CHAIRi",
    "World recall": "recall",
    "World avg_len": "words",
    "World wrong place": "wrong place",
    "POPE world acc": "POPE acc",
    "POPE world yes-ratio": "POPE yes",
    "World count acc": "count acc",
    "World color acc": "color acc",
    "World cell acc": "cell acc",
}
RELATIVE = ("CHAIRs", "CHAIRi", "recall")
SFT, DDPO, DPO = "SFT", "DDPO gamma=5", "DPO (gamma=1)"


# cpu-tiny's targets for DDPO (gamma 5) against SFT: hallucination down, what the model can do kept.
TARGETS: dict[str, tuple[str, Callable[[dict, dict], bool]]] = {
    "CHAIRs at least 30% lower": ("CHAIRs", lambda sft, ddpo: ddpo["CHAIRs vs SFT"] <= -0.30),
    "recall at most 10% lower": ("recall", lambda sft, ddpo: ddpo["recall vs SFT"] >= -0.10),
    **{f"{name} within 5 points": (name, lambda sft, ddpo, k=name: abs(ddpo[k] - sft[k]) <= 5.0)
       for name in ("count acc", "color acc", "cell acc")},
    "SFT POPE accuracy at least 70": ("POPE acc", lambda sft, ddpo: sft["POPE acc"] >= 70.0),
    "DDPO POPE yes-ratio 30-70": ("POPE yes", lambda sft, ddpo: 30.0 <= ddpo["POPE yes"] <= 70.0),
}


def seed_result(run_path: Path) -> dict[str, dict[str, float]]:
    """Headline numbers per model from a finished run's `metrics.json`, with changes relative to SFT."""
    from rlhfv_nb.layout import RunLayout

    table = read_json(RunLayout(run_path).metrics)["evaluation"]["table"]
    rows = {model: {short: float(values[column]) for column, short in COLUMNS.items()}
            for model, values in table.items()}
    with_relative(rows)
    return rows


def with_relative(rows: dict[str, dict[str, float]], suffix: str = "") -> None:
    """Add each model's change relative to SFT of the `RELATIVE` metrics, in place."""
    for row in rows.values():
        for name in RELATIVE:
            sft = rows[SFT][name]
            row[f"{name} vs SFT{suffix}"] = row[name] / sft - 1 if sft else float("nan")


def targets_met(rows: dict[str, dict[str, float]]) -> dict[str, bool]:
    """Which of `TARGETS` DDPO (gamma 5) meets against SFT in `rows` (one seed's, or the means)."""
    return {name: bool(check(rows[SFT], rows[DDPO])) for name, (_, check) in TARGETS.items()}


def executed_seconds(run_path: Path) -> float:
    """Execution time of the run's notebooks as papermill recorded it: of each stage's last execution."""
    from rlhfv_nb.layout import RunLayout

    return round(sum(nbformat.read(path, as_version=4).metadata.papermill.duration
                     for path in sorted(RunLayout(run_path).notebooks.glob("*.ipynb"))), 1)


def mean_over(results: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Mean of every number over seeds, and the relative changes recomputed from the mean metrics."""
    means = {model: {key: statistics.fmean(r[model][key] for r in results) for key in results[0][model]}
             for model in results[0]}
    with_relative(means, " (of means)")
    return means


def spread_over(results: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Sample standard deviation over seeds of every number (0 for a single seed)."""
    return {model: {key: statistics.stdev(r[model][key] for r in results) if len(results) > 1 else 0.0
                    for key in results[0][model]} for model in results[0]}


def markdown(rows: dict[str, dict[str, float]], title: str) -> str:
    keys = list(next(iter(rows.values())))
    cells = [[model] + [f"{row[k]:+.1%}" if "vs SFT" in k else f"{row[k]:.1f}" for k in keys]
             for model, row in rows.items()]
    return f"### {title}\n\n" + markdown_table(["model", *keys], cells)


def threads_label(threads: int) -> str:
    return f"{threads}thread" + ("s" if threads > 1 else "")


def results_path(threads: int) -> Path:
    return RESULTS / f"cpu_tiny_seeds-{threads_label(threads)}.json"


def run_seeds(args: argparse.Namespace) -> dict[str, Any]:
    """Run (or collect) every seed with `args.threads` torch threads per process; write and return the results."""
    from rlhfv_nb import runner
    from rlhfv_nb.config import load_config
    from rlhfv_nb.launch import parse_overrides

    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by the notebooks' kernels
    import torch

    torch.set_num_threads(args.threads)
    overrides = parse_overrides(args.set)
    name = load_config(args.params, **overrides).name
    per_seed, notebook_seconds = {}, {}
    for seed in args.seeds:
        run_dir = ROOT / "runs" / "seeds" / f"{name}-seed{seed}-{args.threads}t"
        runner.run(args.params, overrides={**overrides, "seed": seed, "run_dir": str(run_dir)}, progress=False)
        notebook_seconds[seed] = executed_seconds(run_dir)
        per_seed[seed] = seed_result(run_dir)
        print(markdown(per_seed[seed], f"seed {seed} (notebooks {notebook_seconds[seed]:.0f} s)"), "\n", flush=True)
    means = mean_over(list(per_seed.values()))
    print(markdown(means, f"mean over seeds {args.seeds}"))
    met = {"per_seed": {seed: targets_met(rows) for seed, rows in per_seed.items()}, "mean": targets_met(means)}
    for target, ok in met["mean"].items():
        print(f"{'met' if ok else 'MISSED'}: {target} (mean over seeds)")
    result = {"args": recorded_args(args), "threads": args.threads, "notebook_seconds": notebook_seconds,
              "per_seed": per_seed, "mean": means, "spread": spread_over(list(per_seed.values())),
              "targets": met, "machine": machine()}
    write_json(args.out or results_path(args.threads), result)
    return result


# ---------------------------------------------------------------- the docs' blocks, written from results files
def _headline(row: dict[str, float], sft: dict[str, float]) -> str:
    return (f"{row['CHAIRs']:.1f} ({row['CHAIRs'] / sft['CHAIRs'] - 1:+.0%}) / {row['recall']:.1f} / "
            f"{row['POPE acc']:.1f} ({row['POPE yes']:.0f}) / {row['count acc']:.1f} / {row['color acc']:.1f} / "
            f"{row['cell acc']:.1f} / {row['wrong place']:.1f}")


def seeds_block(result: dict[str, Any]) -> str:
    """docs/cpu-tiny.md's table of one results file: every seed, the mean and the spread, and the targets."""
    header = ["seed", "model", "CHAIRs (vs SFT) / recall / POPE acc (yes %) / count / colour / cell acc / "
              "wrong place, all %"]
    rows = []
    for seed, models in result["per_seed"].items():
        rows += [[seed, model, _headline(row, models[SFT])] for model, row in models.items()]
    rows += [["mean", model, _headline(row, result["mean"][SFT])] for model, row in result["mean"].items()]
    spread = result["spread"]
    rows += [["std", model, " / ".join(f"{row[k]:.1f}" for k in ("CHAIRs", "recall", "POPE acc", "count acc",
                                                                 "color acc", "cell acc", "wrong place"))]
             for model, row in spread.items()]
    seconds = ", ".join(f"{s:.0f} s" for s in result["notebook_seconds"].values())
    missed = [t for t, ok in result["targets"]["mean"].items() if not ok]
    per_seed_missed = {seed: [t for t, ok in met.items() if not ok]
                       for seed, met in result["targets"]["per_seed"].items()}
    lines = [markdown_table(header, rows), "",
             f"Machine: {result['machine']['cpus']} CPUs, torch {result['machine']['torch']}, "
             f"{result['threads']} torch thread(s) per process; notebooks per seed: {seconds}.",
             "Targets (DDPO gamma 5 vs SFT, mean over seeds): " +
             ("all met." if not missed else "missed: " + "; ".join(missed) + ".")]
    lines += [f"Seed {seed} missed: {'; '.join(m)}." for seed, m in per_seed_missed.items() if m]
    return "\n".join(lines)


def summary_sentence(results: dict[int, dict[str, Any]]) -> str:
    """README's sentence: the mean change per thread count."""
    parts = []
    for threads, result in sorted(results.items()):
        mean = result["mean"]
        sft, ddpo, dpo = mean[SFT], mean[DDPO], mean[DPO]
        parts.append(
            f"with {threads} torch thread{'s' if threads > 1 else ''}, response-level CHAIR goes from "
            f"{sft['CHAIRs']:.1f}% (SFT) to {ddpo['CHAIRs']:.1f}% with DDPO gamma 5 "
            f"({ddpo['CHAIRs vs SFT (of means)']:+.0%}) and {dpo['CHAIRs']:.1f}% with plain DPO, recall "
            f"{sft['recall']:.1f}% -> {ddpo['recall']:.1f}%, POPE accuracy {sft['POPE acc']:.1f}% -> "
            f"{ddpo['POPE acc']:.1f}% (yes-ratio {ddpo['POPE yes']:.0f}%), count / colour / cell accuracy "
            f"{sft['count acc']:.0f} / {sft['color acc']:.0f} / {sft['cell acc']:.0f} -> "
            f"{ddpo['count acc']:.0f} / {ddpo['color acc']:.0f} / {ddpo['cell acc']:.0f}")
    seeds = sorted({seed for r in results.values() for seed in r["per_seed"]})
    return f"Mean over seeds {', '.join(map(str, seeds))} (500 held-out images each): " + "; ".join(parts) + "."


def replace_block(text: str, name: str, body: str, where: str) -> str:
    """`text` with the lines between `<!-- name -->` and `<!-- /name -->` (none, in a new block) replaced by
    `body`."""
    pattern = re.compile(rf"(<!-- {re.escape(name)} -->\n)(?:.*?\n)?(<!-- /{re.escape(name)} -->)", re.DOTALL)
    if not pattern.search(text):
        raise ValueError(f"{where}: no block <!-- {name} --> ... <!-- /{name} --> to write")
    return pattern.sub(lambda m: m[1] + body + "\n" + m[2], text)


def write_docs(readme: Path = ROOT / "README.md", doc: Path = ROOT / "docs" / "cpu-tiny.md") -> None:
    """Write README's summary and docs/cpu-tiny.md's per-seed tables from the recorded results files."""
    results = {}
    for threads in (1, 2):
        if results_path(threads).exists():
            results[threads] = read_json(results_path(threads))
    if not results:
        raise FileNotFoundError(f"no results in {RESULTS}: run the seeds first")
    text = doc.read_text()
    for threads, result in results.items():
        text = replace_block(text, f"seeds-{threads_label(threads)}", seeds_block(result), str(doc))
    write_text(doc, text)
    write_text(readme, replace_block(readme.read_text(), "cpu-tiny-summary", summary_sentence(results), str(readme)))


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    return seeds_main(argv, __doc__, ROOT / "params" / "cpu-tiny.yaml", "cpu_tiny_seeds", run_seeds, write_docs,
                      add_set_argument)


if __name__ == "__main__":
    main()
