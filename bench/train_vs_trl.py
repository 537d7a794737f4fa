"""DDPO training with rlhfv_nb vs TRL's `DPOTrainer`: same model, pairs, batch, length, optimizer and steps.

    python -m bench.train_vs_trl                      # cpu-tiny shape, full fine-tuning, 3 repeats
    python -m bench.train_vs_trl --lora               # LoRA adapters on the language model
    python -m bench.train_vs_trl --model small        # 11M-parameter LLaVA shape, 64 px, 64 image tokens
    python -m bench.train_vs_trl --model medium --steps 4 --repeats 1   # 113M parameters: weights dominate memory

Our arms score each pair after one shared image-and-prompt encoding; `--unshared-gammas` (default 1) adds arms
that score every answer in its own row (`ours-g1-unshared`), so the gain of sharing shows beside the rest.
Arms run alternately (an ours arm, TRL, the other ours arms, which rotate on the next repeat), each in
a fresh process (`bench.train_arms`) so peak memory is per run. Results: JSON under `bench/results/`, a
Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.common import RESULTS, machine, markdown_table, median, ratio, recorded_args, run_child
from bench.synthetic import world_pairs
from bench.train_arms import ArmSpec
from rlhfv_nb.config import ModelConfig, TinyModelConfig
from rlhfv_nb.data import read_parquet, write_parquet
from rlhfv_nb.features import prompt_length, response_ids
from rlhfv_nb.files import write_json
from rlhfv_nb.modeling import build_tiny_model, load_processor

SHAPES = {
    "tiny": TinyModelConfig(),  # the cpu-tiny preset's model
    "small": TinyModelConfig(image_size=64, patch_size=8, vision_hidden_size=128, vision_layers=2, vision_heads=4,
                             hidden_size=384, layers=4, heads=6, intermediate_size=1536, vocab_size=1024,
                             max_position_embeddings=512),
    # Weights dominate memory here (113M parameters; Adam in float32 holds 4 bytes x 4 per parameter), as at scale.
    "medium": TinyModelConfig(image_size=64, patch_size=8, vision_hidden_size=256, vision_layers=2, vision_heads=4,
                              hidden_size=768, layers=12, heads=12, intermediate_size=3072, vocab_size=1024,
                              max_position_embeddings=512),
    # LLaVA-1.5-7B's shape (CLIP-L/14 at 336 px, 576 image tokens; Llama-7B decoder). Approximate: the vision MLP is
    # 2x wide (CLIP-L: 4x) and the vocabulary is what the BPE trainer reaches on the pairs (LLaVA: 32064).
    "llava-7b": TinyModelConfig(image_size=336, patch_size=14, vision_hidden_size=1024, vision_layers=24,
                                vision_heads=16, hidden_size=4096, layers=32, heads=32, intermediate_size=11008,
                                vocab_size=32000, max_position_embeddings=4096),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny",
                   help=f"a shape ({', '.join(SHAPES)}: random weights) or a model id/folder")
    p.add_argument("--pairs", type=int, default=32, help="number of preference pairs")
    p.add_argument("--pairs-from", help="a preferences.parquet (uid, image, question, chosen, rejected) to read")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--ref-batch-size", type=int,
                   help="pairs per batch of rlhfv_nb's one reference pass (default: --batch-size, as TRL's per-step "
                        "reference forward; larger is faster but raises the peak)")
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--steps", type=int, default=-1, help="max optimizer steps (> 0 overrides --epochs)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--beta", type=float, default=0.1, help="DPO beta (TRL's default)")
    p.add_argument("--gammas", type=lambda v: [float(g) for g in v.split(",")], default=[1.0, 5.0],
                   help="comma-separated DDPO gammas, one rlhfv_nb arm each (1 = plain DPO, like TRL); default 1,5")
    p.add_argument("--unshared-gammas", type=lambda v: [float(g) for g in v.split(",") if g], default=[1.0],
                   help="gammas that also get an arm scoring each answer in its own row (prompt and image repeated, "
                        "no shared prefix); default 1, empty for none")
    p.add_argument("--lora", action="store_true", help="LoRA r16 on the language model instead of all parameters")
    p.add_argument("--qlora", action="store_true", help="4-bit NF4 base + LoRA (bitsandbytes)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--no-gradient-checkpointing", dest="gradient_checkpointing", action="store_false")
    p.add_argument("--skip-trl", action="store_true", help="only the rlhfv_nb arms")
    p.add_argument("--results-dir", type=Path, default=RESULTS)
    p.add_argument("--work-dir", type=Path, help="where models and caches go (default: a temporary folder)")
    p.add_argument("--threads", type=int, default=0, help="torch threads per run (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    check_device(p, args)
    return args


def check_device(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse, with the reason, what cannot run without CUDA (found by trying on CPU)."""
    import torch

    if torch.cuda.is_available():
        return
    if args.dtype == "bfloat16":
        parser.error("--dtype bfloat16 needs a CUDA GPU: Trainer refuses bf16 on CPU")
    if args.qlora and not args.skip_trl:
        parser.error("--qlora needs a CUDA GPU for the TRL arm (TRL 1.16 casts QLoRA adapters to bf16, which then "
                     "meet float32 activations on CPU); add --skip-trl to run only rlhfv_nb's QLoRA on CPU")


def variant(args: argparse.Namespace) -> str:
    mode = "qlora" if args.qlora else "lora" if args.lora else "full"
    name = args.model if args.model in SHAPES else Path(args.model).name
    return f"{name}-{mode}-{args.dtype}"


def prepare_pairs(args: argparse.Namespace, work: Path) -> Path:
    """The pairs parquet every arm reads: read from `--pairs-from`, or made in the synthetic world."""
    if args.pairs_from:
        rows = [{k: r[k] for k in ("uid", "image", "question", "chosen", "rejected")}
                for r in read_parquet(Path(args.pairs_from)).select(range(args.pairs))]
    else:
        rows = world_pairs(args.pairs, args.seed)
    return write_parquet(rows, work / "pairs.parquet")


def prepare_model(args: argparse.Namespace, work: Path, pairs: Path) -> str:
    """A model folder or id; a shape is built with random weights and a tokenizer trained on the pairs."""
    if args.model not in SHAPES:
        return args.model
    ds = read_parquet(pairs)
    corpus = [f"USER: <image>\n{q} ASSISTANT: {a}</s>" for q, c, r in zip(ds["question"], ds["chosen"], ds["rejected"])
              for a in (c, r)]
    return str(build_tiny_model(corpus * 4, SHAPES[args.model], work / "model", args.seed))


def needed_length(model: str, pairs: Path) -> int:
    """Longest prompt + answer in tokens, so neither trainer truncates."""
    processor = load_processor(model, ModelConfig())
    longest = 0
    for row in read_parquet(pairs):
        answers = (response_ids(processor, row["question"], row[k]) for k in ("chosen", "rejected"))
        prompt = prompt_length(processor, row["question"], row["image"]["bytes"])
        longest = max(longest, prompt + max(map(len, answers)))
    return longest


def model_overrides(args: argparse.Namespace) -> dict[str, Any]:
    lora = {"enabled": args.lora or args.qlora, "dropout": 0.0}  # TRL disables dropout by default
    return {"dtype": args.dtype, "load_in_4bit": args.qlora, "lora": lora}


def base_spec(args: argparse.Namespace, work: Path) -> ArmSpec:
    pairs = prepare_pairs(args, work)
    model = prepare_model(args, work, pairs)
    return ArmSpec(arm="ours", model_dir=model, pairs_path=str(pairs), work_dir=str(work),
                   eval_reference=str(work / "eval-reference.jsonl"), beta=args.beta, lr=args.lr,
                   batch_size=args.batch_size, ref_batch_size=args.ref_batch_size or args.batch_size,
                   epochs=args.epochs, max_steps=args.steps,
                   max_length=needed_length(model, pairs), gradient_checkpointing=args.gradient_checkpointing,
                   bf16=args.dtype == "bfloat16", seed=args.seed, threads=args.threads, model=model_overrides(args))


def run_arm(spec: ArmSpec, work: Path, name: str) -> dict[str, Any]:
    """One arm in a fresh process; its result with the parent's sampled peak RSS and wall time added."""
    spec_path, result_path = work / f"{name}.spec.json", work / f"{name}.result.json"
    write_json(spec_path, asdict(spec))
    child = run_child("bench.train_arms", [str(spec_path), str(result_path)])
    result = json.loads(result_path.read_text())
    return {**result, "name": name, "sampled_peak_rss_mib": child["sampled_peak_rss_mib"], "wall_s": child["wall_s"]}


def schedule(args: argparse.Namespace) -> list[list[tuple[str, float]]]:
    """Per repeat, the arms in run order: an rlhfv_nb arm first (its reference pass is every arm's evaluation
    reference), then TRL, then the other rlhfv_nb arms; the rlhfv_nb arms rotate from one repeat to the next."""
    arms = [("ours", g, True) for g in args.gammas] + [("ours", g, False) for g in args.unshared_gammas]
    rounds = []
    for repeat in range(args.repeats):
        shift = repeat % len(arms)
        ours = arms[shift:] + arms[:shift]
        rounds.append(ours[:1] + ([] if args.skip_trl else [("trl", 1.0, False)]) + ours[1:])
    return rounds


def arm_label(arm: str, gamma: float, shared: bool) -> str:
    return "trl" if arm == "trl" else f"ours-g{gamma:g}" + ("" if shared else "-unshared")


def run_all(args: argparse.Namespace, work: Path) -> tuple[ArmSpec, list[dict[str, Any]]]:
    """Every arm of every repeat, in schedule order."""
    spec = base_spec(args, work)
    runs = []
    for repeat, arms in enumerate(schedule(args)):
        for arm, gamma, shared in arms:
            label = arm_label(arm, gamma, shared)
            result = run_arm(ArmSpec(**{**asdict(spec), "arm": arm, "gamma": gamma, "share_prefix": shared}), work,
                             f"{label}-r{repeat}")
            runs.append({**result, "label": label, "repeat": repeat})
            print(f"repeat {repeat} {label}: {result['total_s']:.1f} s, step {result['step_s']:.3f} s, "
                  f"peak {result['peak_rss_mib']:.0f} MiB, load {result['load_avg_1min']:.1f}", file=sys.stderr)
    return spec, runs


def _epoch_total(run: dict[str, Any], epoch: int, cpu: bool = False) -> float | None:
    """Seconds from the start (loading, reference pass included) to the end of `epoch`."""
    ends = run["epoch_end_cpu_s" if cpu else "epoch_end_s"]
    return ends[epoch - 1] if len(ends) >= epoch else None


def _per_epoch(run: dict[str, Any], epochs: int, cpu: bool = False) -> float | None:
    total = _epoch_total(run, epochs, cpu)
    return total / epochs if total is not None else None


METRICS: dict[str, Any] = {
    "time per optimizer step (s)": lambda r: r["step_s"],
    "total time, 1 epoch (s)": lambda r: _epoch_total(r, 1),
    "total time, 3 epochs (s)": lambda r: _epoch_total(r, 3),
    "time per epoch at 3 epochs (s)": lambda r: _per_epoch(r, 3),
    "CPU time per optimizer step (s)": lambda r: r["step_cpu_s"],
    "CPU time, 1 epoch (s)": lambda r: _epoch_total(r, 1, cpu=True),
    "CPU time per epoch at 3 epochs (s)": lambda r: _per_epoch(r, 3, cpu=True),
    "setup before training (s)": lambda r: r["setup_s"],
    "peak RSS (MiB)": lambda r: r["peak_rss_mib"],
    "peak RSS above imports (MiB)": lambda r: r["train_rss_mib"],
    "peak RSS, sampled by parent (MiB)": lambda r: r["sampled_peak_rss_mib"],
    "peak CUDA memory (MiB)": lambda r: r["cuda_peak_mib"],
    "final DPO loss, all pairs": lambda r: r["final"]["loss"],
    "final reward accuracy, all pairs": lambda r: r["final"]["reward_accuracy"],
    "final reward margin, all pairs": lambda r: r["final"]["reward_margin"],
    "train loss, last epoch (logged)": lambda r: r["logged"]["loss"],
    "train reward accuracy, last epoch (logged)": lambda r: r["logged"]["reward_accuracy"],
}


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Median of every metric per arm label."""
    labels = list(dict.fromkeys(r["label"] for r in runs))
    return {label: {name: median(get(r) for r in runs if r["label"] == label) for name, get in METRICS.items()}
            for label in labels}


def targets(summary: dict[str, dict[str, float | None]], full: bool) -> dict[str, Any]:
    """The targets, measured: CPU time per epoch ours/TRL <= 0.6 for every gamma, peak memory <= 0.8 (full
    fine-tuning), reward accuracy within 0.05 of TRL's, and the shared path's final loss within 1e-4 of the
    unshared path's (same gamma and seed)."""
    trl = summary.get("trl")
    out: dict[str, Any] = {}
    for label, ours in summary.items():
        if label == "trl" or label.endswith("-unshared"):
            continue
        unshared = summary.get(f"{label}-unshared")
        if unshared:
            gap = abs(ours["final DPO loss, all pairs"] - unshared["final DPO loss, all pairs"])
            out[label] = {"shared_vs_unshared_final_loss_gap": gap, "same_loss_met": gap <= 1e-4}
        if not trl:
            continue
        cpu_ratio = ratio(ours["CPU time per epoch at 3 epochs (s)"], trl["CPU time per epoch at 3 epochs (s)"])
        gap = abs(ours["final reward accuracy, all pairs"] - trl["final reward accuracy, all pairs"])
        got = out.setdefault(label, {})
        got.update(cpu_time_per_epoch_ratio=cpu_ratio, cpu_time_met=cpu_ratio is not None and cpu_ratio <= 0.6,
                   accuracy_gap=gap, accuracy_met=gap <= 0.05)
        if full:
            memory = ratio(ours["peak RSS (MiB)"], trl["peak RSS (MiB)"])
            got.update(peak_memory_ratio=memory, memory_met=memory is not None and memory <= 0.8)
    return out


def table(summary: dict[str, dict[str, float | None]]) -> str:
    """Every metric's ratios to TRL first (one column per rlhfv_nb arm), then the medians of every arm."""
    labels = list(summary)
    ours = [label for label in labels if label != "trl"]
    header = ["metric (median)"] + ([f"{label} / trl" for label in ours] if "trl" in summary else []) + labels
    rows = []
    for name in METRICS:
        values = [summary[label][name] for label in labels]
        if all(v is None for v in values):
            continue
        ratios = [ratio(summary[label][name], summary["trl"][name]) for label in ours] if "trl" in summary else []
        rows.append([name, *ratios, *values])
    return markdown_table(header, rows)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench-train-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        spec, runs = run_all(args, work)
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    summary = summarise(runs)
    report = {"variant": variant(args), "args": recorded_args(args), "machine": machine(),
              "settings": {k: v for k, v in asdict(spec).items() if k not in ("arm", "work_dir", "eval_reference")},
              "params": runs[0]["params"], "summary": summary,
              "targets": targets(summary, full=not (args.lora or args.qlora)), "runs": runs}
    path = write_json(args.results_dir / f"train_vs_trl-{variant(args)}.json", report)
    print(f"## {report['variant']}: {runs[0]['params']['total']:,} parameters ({runs[0]['params']['trainable']:,} "
          f"trained), {args.repeats} repeats, medians\n")
    print(table(summary))
    print(f"\ntargets: {json.dumps(report['targets'])}\nresults: {path}")
    return report


if __name__ == "__main__":
    main()
