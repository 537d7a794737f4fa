"""Does DDPO reduce hallucination on cpu-tiny? The whole pipeline (every notebook) once per seed, then the table.

    python -m bench.cpu_tiny_seeds --seeds 0 1 2 [--params params/cpu-tiny.yaml] [--set ddpo.lr=1e-4 ...]

Per seed: the notebooks' execution time (papermill's record of each stage's last execution), and for SFT,
DDPO and plain DPO (gamma = 1) the world's CHAIR (response-level CHAIRs as Object HalBench reports it,
mention-level CHAIRi), object recall, answer length, POPE accuracy/F1 and the accuracy on count and "what is
in the top left?" questions, with each model's change relative to SFT. Then the mean over seeds. Results go
to `bench/results/cpu_tiny_seeds.json`; run folders to `runs/seeds/<name>-seed<N>`. Finished stages of a seed's
run folder are skipped, so seeds can run in separate processes first and be collected by one call.
Two torch processes on two cores: give each `OMP_NUM_THREADS=1` (oversubscribed, generation ran 100x slower).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

import nbformat

from bench.common import RESULTS, ROOT, machine, markdown_table, recorded_args
from rlhfv_nb import runner
from rlhfv_nb.config import load_config
from rlhfv_nb.files import read_json, write_json
from rlhfv_nb.launch import parse_overrides
from rlhfv_nb.layout import RunLayout

COLUMNS = {  # metrics.json table column -> short name
    "World Resp. (CHAIRs_refine)": "CHAIRs",
    "World Mention (CHAIRi)": "CHAIRi",
    "World recall": "recall",
    "World avg_len": "words",
    "POPE world acc": "POPE acc",
    "POPE world F1": "POPE F1",
    "World count acc": "count acc",
    "World cell acc": "cell acc",
}
RELATIVE = ("CHAIRs", "CHAIRi", "recall")


def seed_result(run_path: Path) -> dict[str, dict[str, float]]:
    """Headline numbers per model from a finished run's `metrics.json`, with changes relative to SFT."""
    table = read_json(RunLayout(run_path).metrics)["evaluation"]["table"]
    rows = {model: {short: float(values[column]) for column, short in COLUMNS.items()}
            for model, values in table.items()}
    sft = rows["SFT"]
    for row in rows.values():
        for name in RELATIVE:
            row[f"{name} vs SFT"] = row[name] / sft[name] - 1 if sft[name] else float("nan")
    return rows


def executed_seconds(run_path: Path) -> float:
    """Execution time of the run's notebooks as papermill recorded it: of each stage's last execution."""
    return round(sum(nbformat.read(path, as_version=4).metadata.papermill.duration
                     for path in sorted(RunLayout(run_path).notebooks.glob("*.ipynb"))), 1)


def mean_over(results: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Mean of every number over seeds; relative changes are recomputed from the mean metrics."""
    means = {model: {key: statistics.fmean(r[model][key] for r in results) for key in results[0][model]}
             for model in results[0]}
    for row in means.values():
        for name in RELATIVE:
            row[f"{name} vs SFT (of means)"] = row[name] / means["SFT"][name] - 1
    return means


def markdown(rows: dict[str, dict[str, float]], title: str) -> str:
    keys = list(next(iter(rows.values())))
    cells = [[model] + [f"{row[k]:+.1%}" if "vs SFT" in k else f"{row[k]:.1f}" for k in keys]
             for model, row in rows.items()]
    return f"### {title}\n\n" + markdown_table(["model", *keys], cells)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=ROOT / "params" / "cpu-tiny.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", action="append", default=[], help="override, e.g. ddpo.lr=1e-4")
    parser.add_argument("--out", type=Path, default=RESULTS / "cpu_tiny_seeds.json")
    args = parser.parse_args(argv)
    overrides = parse_overrides(args.set)
    name = load_config(args.params, **overrides).name
    per_seed, notebook_seconds = {}, {}
    for seed in args.seeds:
        run_dir = ROOT / "runs" / "seeds" / f"{name}-seed{seed}"
        runner.run(args.params, overrides={**overrides, "seed": seed, "run_dir": str(run_dir)}, progress=False)
        notebook_seconds[seed] = executed_seconds(run_dir)
        per_seed[seed] = seed_result(run_dir)
        print(markdown(per_seed[seed], f"seed {seed} (notebooks {notebook_seconds[seed]:.0f} s)"), "\n", flush=True)
    means = mean_over(list(per_seed.values()))
    print(markdown(means, f"mean over seeds {args.seeds}"))
    result = {"args": recorded_args(args), "notebook_seconds": notebook_seconds, "per_seed": per_seed,
              "mean": means, "machine": machine()}
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
