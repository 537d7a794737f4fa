"""One timed training run of one arm (`ours` = rlhfv_nb DDPO, `trl` = TRL `DPOTrainer`), in its own process.

`python -m bench.train_arms SPEC.json RESULT.json`. Run by `bench/train_vs_trl.py`, once per arm and repeat, so
peak memory is per run. The clock starts after the imports and covers model loading, data preparation (for
`ours` the reference log-prob pass), trainer construction and training; the final evaluation over all pairs
runs after the clock stops and is the same code for every arm.
"""

from __future__ import annotations

import time

IMPORT_START = time.perf_counter()

import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import datasets  # noqa: E402
import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from bench.common import cuda_peak_mib, peak_rss_mib, rss_mib  # noqa: E402
from rlhfv_nb.config import DDPOConfig, ModelConfig, load_config  # noqa: E402
from rlhfv_nb.data import decode_image, read_parquet  # noqa: E402
from rlhfv_nb.ddpo import ddpo_loss  # noqa: E402
from rlhfv_nb.families import lora_modules, peft_modules_to_save, resolve_family  # noqa: E402
from rlhfv_nb.files import write_json  # noqa: E402
from rlhfv_nb.logps import read_cache, reference_logps  # noqa: E402
from rlhfv_nb.modeling import count_parameters, load_model, load_processor  # noqa: E402
from rlhfv_nb.pipeline import ddpo_dataset, tokenise_pairs  # noqa: E402
from rlhfv_nb.train import ddpo_trainer  # noqa: E402


@dataclass
class ArmSpec:
    """Everything one run needs; the settings both trainers must share sit side by side."""

    arm: str  # "ours" | "trl"
    model_dir: str
    pairs_path: str
    work_dir: str
    eval_reference: str  # per-token log-probs of the initial model, written by the first `ours` run
    gamma: float = 1.0
    share_prefix: bool = True  # ours: one image-and-prompt encoding per pair (training and reference pass)
    beta: float = 0.1
    lr: float = 5e-4
    scheduler: str = "linear"
    batch_size: int = 4
    epochs: float = 3.0
    max_steps: int = -1
    max_length: int = 256
    ref_batch_size: int = 32
    gradient_checkpointing: bool = True
    bf16: bool = False
    seed: int = 0
    threads: int = 0  # torch intra-op threads; 0: torch's default (all cores)
    model: dict[str, Any] = field(default_factory=dict)  # rlhfv_nb ModelConfig overrides (dtype, lora, 4-bit)

    @property
    def model_cfg(self) -> ModelConfig:
        # freeze_vision as the measured runs had it (bench/README); the rest is the arm's
        return load_config({"model": {"freeze_vision": True, **self.model,
                                      "gradient_checkpointing": self.gradient_checkpointing}}).model

    def ddpo_cfg(self) -> DDPOConfig:
        return DDPOConfig(gamma=self.gamma, beta=self.beta, use_average=False, epochs=self.epochs, grad_accum=1,
                          max_steps=self.max_steps, batch_size=self.batch_size, lr=self.lr, scheduler=self.scheduler,
                          warmup_ratio=0.0, weight_decay=0.0, logging_steps=1, bf16=self.bf16,
                          ref_batch_size=self.ref_batch_size, share_prefix=self.share_prefix)


class Clock(TrainerCallback):
    """Wall and CPU seconds since the run's start at training start, every optimizer step and epoch end; logs.

    CPU time (this process, all threads) is kept beside wall time: on a shared machine other jobs stretch wall
    time far more than the work a run does.
    """

    def __init__(self):
        self.start = (time.perf_counter(), time.process_time())
        self.marks: dict[str, list[tuple[float, float]]] = {"train_begin": [], "step_end": [], "epoch_end": []}
        self.logs: list[dict[str, float]] = []

    def now(self) -> tuple[float, float]:
        return time.perf_counter() - self.start[0], time.process_time() - self.start[1]

    def on_train_begin(self, args, state, control, **kwargs):
        self.marks["train_begin"].append(self.now())

    def on_step_end(self, args, state, control, **kwargs):
        self.marks["step_end"].append(self.now())

    def on_epoch_end(self, args, state, control, **kwargs):
        self.marks["epoch_end"].append(self.now())

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs:
            self.logs.append(dict(logs))

    def times(self, event: str, cpu: bool = False) -> list[float]:
        return [mark[cpu] for mark in self.marks[event]]

    def step_times(self, cpu: bool = False) -> list[float]:
        """Seconds of each optimizer step, data loading and collation included."""
        marks = self.times("train_begin", cpu)[:1] + self.times("step_end", cpu)
        return [b - a for a, b in zip(marks, marks[1:])]


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load(spec: ArmSpec) -> tuple[Any, Any]:
    """Processor and model as rlhfv_nb loads them (4-bit models are placed by `device_map`)."""
    cfg = spec.model_cfg
    processor = load_processor(spec.model_dir, cfg)
    if cfg.load_in_4bit:
        return processor, load_model(spec.model_dir, cfg, device_map=str(device()))
    return processor, load_model(spec.model_dir, cfg).to(device())


def token_rows(spec: ArmSpec, processor: Any) -> list[dict[str, Any]]:
    """Pairs as rlhfv_nb's reference pass and DDPO take them, through its own tokenisation (`tokenise_pairs`)."""
    cfg = load_config({"model": {"base": spec.model_dir}, "data": {"max_length": spec.max_length,
                                                                   "on_bad_row": "error"}})
    return tokenise_pairs(cfg, processor, Path(spec.pairs_path))[0]


def fresh_reference(model: Any, processor: Any, rows: list[dict[str, Any]], path: Path, batch: int,
                    share_prefix: bool = True) -> dict:
    """Per-token log-probs of `rows`, computed now (an old cache file at `path` is removed first)."""
    path.unlink(missing_ok=True)
    return reference_logps(model, processor, rows, path, batch, progress=False, share_prefix=share_prefix)


def keep_for_evaluation(cache: Path, eval_reference: Path) -> None:
    """The first `ours` run's reference pass (the initial model's log-probs) doubles as every arm's eval reference."""
    if not eval_reference.exists():
        shutil.copyfile(cache, eval_reference)


def build_ours(spec: ArmSpec, clock: Clock) -> tuple[Any, Any, list[dict[str, Any]]]:
    """rlhfv_nb: load, tokenise, one reference pass, then a `DDPOTrainer` without any reference model."""
    processor, model = load(spec)
    rows = token_rows(spec, processor)
    reference = fresh_reference(model, processor, rows, Path(spec.work_dir) / "ref-ours.jsonl", spec.ref_batch_size,
                                spec.share_prefix)
    keep_for_evaluation(Path(spec.work_dir) / "ref-ours.jsonl", Path(spec.eval_reference))
    pairs = ddpo_dataset(rows, reference, spec.gamma, min_match=3)
    cfg = spec.ddpo_cfg()
    trainer = ddpo_trainer(model, processor, pairs, cfg, spec.model_cfg, Path(spec.work_dir) / "ours", spec.seed,
                           callbacks=[clock])
    return trainer, processor, rows


def trl_peft_config(model: Any, model_cfg: ModelConfig) -> Any:
    """The same adapters as rlhfv_nb's `prepare_for_training` puts on `model` (peft `LoraConfig`)."""
    from peft import LoraConfig as PeftLoraConfig

    cfg = model_cfg.lora
    family = resolve_family(model, model_cfg.family)
    targets, saved = lora_modules(family, cfg)
    return PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
                          modules_to_save=peft_modules_to_save(model, saved, family) or None, task_type="CAUSAL_LM")


def trl_dataset(spec: ArmSpec) -> datasets.Dataset:
    """The pairs in TRL's conversational vision preference format (`images`, `prompt`, `chosen`, `rejected`)."""
    return datasets.Dataset.from_list([
        {"images": [decode_image(r["image"])], "prompt": [{"role": "user", "content": r["question"]}],
         "chosen": [{"role": "assistant", "content": r["chosen"]}],
         "rejected": [{"role": "assistant", "content": r["rejected"]}]}
        for r in read_parquet(Path(spec.pairs_path))])


def build_trl(spec: ArmSpec, clock: Clock) -> tuple[Any, Any, list[dict[str, Any]]]:
    """TRL 1.16 `DPOTrainer` with its vision defaults; only what must match is set (see README)."""
    from trl import DPOConfig, DPOTrainer

    processor, model = load(spec)
    args = DPOConfig(
        output_dir=str(Path(spec.work_dir) / "trl"), per_device_train_batch_size=spec.batch_size,
        learning_rate=spec.lr, lr_scheduler_type=spec.scheduler, warmup_steps=0, weight_decay=0.0,
        max_grad_norm=1.0, num_train_epochs=spec.epochs, max_steps=spec.max_steps, beta=spec.beta,
        max_length=spec.max_length, bf16=spec.bf16, gradient_checkpointing=spec.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False}, logging_steps=1, save_strategy="no",
        report_to="none", seed=spec.seed, data_seed=spec.seed, dataloader_num_workers=0, disable_tqdm=True,
    )
    peft_config = trl_peft_config(model, spec.model_cfg) if spec.model_cfg.lora.enabled else None
    trainer = DPOTrainer(model=model, args=args, train_dataset=trl_dataset(spec), processing_class=processor,
                         peft_config=peft_config, callbacks=[clock])
    return trainer, processor, []


@torch.no_grad()
def final_eval(model: Any, processor: Any, rows: list[dict[str, Any]], spec: ArmSpec) -> dict[str, float]:
    """Plain DPO loss, reward accuracy and margin over all pairs (summed log-probs, the run's beta)."""
    path = Path(spec.work_dir) / f"final-{spec.arm}.jsonl"
    policy = fresh_reference(model, processor, rows, path, spec.ref_batch_size)
    reference = read_cache(Path(spec.eval_reference))

    def total(table: dict, side: str) -> torch.Tensor:
        return torch.tensor([sum(table[r["uid"]][side]) for r in rows], dtype=torch.float64)

    losses, chosen, rejected = ddpo_loss(total(policy, "chosen"), total(policy, "rejected"),
                                         total(reference, "chosen"), total(reference, "rejected"), spec.beta)
    return {"loss": losses.mean().item(), "reward_accuracy": (chosen > rejected).double().mean().item(),
            "reward_margin": (chosen - rejected).mean().item()}


def logged_last_epoch(logs: list[dict[str, float]], steps_per_epoch: int) -> dict[str, float | None]:
    """Mean training loss and reward accuracy over the last epoch's per-step log records."""
    records = [r for r in logs if "rewards/accuracies" in r][-steps_per_epoch:]

    def mean(key: str) -> float | None:
        values = [r[key] for r in records if key in r]
        return sum(values) / len(values) if values else None

    return {"loss": mean("loss"), "reward_accuracy": mean("rewards/accuracies")}


def _median(values: list[float]) -> float | None:
    return sorted(values)[len(values) // 2] if values else None


def run(spec: ArmSpec) -> dict[str, Any]:
    """Build and train one arm; timings, memory, metrics."""
    import_s = time.perf_counter() - IMPORT_START
    if spec.arm == "trl":
        import trl  # noqa: F401  (its import is not timed, like ours)
    if spec.threads:
        torch.set_num_threads(spec.threads)
    baseline = rss_mib()
    clock = Clock()
    build = {"ours": build_ours, "trl": build_trl}[spec.arm]
    trainer, processor, rows = build(spec, clock)
    torch.manual_seed(spec.seed)
    trainer.train()
    total_s, total_cpu_s = clock.now()
    peak = peak_rss_mib()
    if not rows:
        rows = token_rows(spec, load_processor(spec.model_dir, spec.model_cfg))
    steps = clock.step_times()
    steps_per_epoch = -(-len(rows) // spec.batch_size)
    return {
        "arm": spec.arm, "gamma": spec.gamma if spec.arm == "ours" else None,
        "share_prefix": spec.share_prefix if spec.arm == "ours" else None, "import_s": import_s,
        "threads": torch.get_num_threads(), "setup_s": clock.times("train_begin")[0],
        "setup_cpu_s": clock.times("train_begin", cpu=True)[0], "steps": len(steps), "step_s": _median(steps),
        "step_cpu_s": _median(clock.step_times(cpu=True)), "step_times": steps,
        "epoch_end_s": clock.times("epoch_end"), "epoch_end_cpu_s": clock.times("epoch_end", cpu=True),
        "total_s": total_s, "total_cpu_s": total_cpu_s,
        "peak_rss_mib": peak, "baseline_rss_mib": baseline, "train_rss_mib": peak - baseline,
        "cuda_peak_mib": cuda_peak_mib(), "load_avg_1min": os.getloadavg()[0], "optim": str(trainer.args.optim),
        "params": count_parameters(trainer.model),
        "final": final_eval(trainer.model, processor, rows, spec),
        "logged": logged_last_epoch(clock.logs, steps_per_epoch),
    }


def main(argv: list[str]) -> None:
    spec = ArmSpec(**json.loads(Path(argv[0]).read_text()))
    result = run(spec)
    write_json(Path(argv[1]), {"spec": asdict(spec), **result})


if __name__ == "__main__":
    main(sys.argv[1:])
