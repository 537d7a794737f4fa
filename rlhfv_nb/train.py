"""SFT and DDPO training on top of `transformers.Trainer` (accelerate, DeepSpeed/FSDP, resumable checkpoints).

DDPO holds no reference model: the reference per-token log-probs come precomputed with each pair, and
chosen and rejected answers go through one concatenated forward pass.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import datasets
import torch
from tqdm.std import tqdm
from transformers import (
    PreTrainedModel,
    PrinterCallback,
    ProcessorMixin,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_utils import get_last_checkpoint

from rlhfv_nb.config import DDPOConfig, ModelConfig, TrackingConfig, TrainConfig
from rlhfv_nb.ddpo import ddpo_loss, sequence_logps
from rlhfv_nb.families import lora_modules, peft_modules_to_save, resolve_family
from rlhfv_nb.features import PairCollator, SFTCollator
from rlhfv_nb.files import partial_folder, publish_folder, trim_torn_line, write_text
from rlhfv_nb.layout import TrainingFolder
from rlhfv_nb.pair_logps import answer_logps, shares_prefix
from rlhfv_nb.progress import TRAINING_LINE

log = logging.getLogger(__name__)


class JsonlLogger(TrainerCallback):
    """Appends every Trainer log record (loss, rewards, lr, step) to a JSONL file as it happens.

    One record per logged step: a fresh run starts the file empty, and a resumed run drops what a killed
    attempt logged after the checkpoint it resumes from (those steps are trained and logged again).
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            trim_torn_line(self.path)
            kept = [r for r in read_log(self.path) if r["step"] <= state.global_step] if state.global_step else []
            write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            # the last step logs its own window, so Trainer's end-of-training summary carries no half window
            control.should_log = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            with self.path.open("a") as handle:
                handle.write(json.dumps({"step": state.global_step, "epoch": state.epoch, **logs}) + "\n")


PROGRESS_INTERVAL = 60.0  # seconds: at most one progress line this often, besides the first and the last
# logged key -> (shown name, format)
PROGRESS_KEYS = {"loss": ("loss", ".4f"), "ddpo_loss": ("ddpo_loss", ".4f"),
                 "rewards/accuracies": ("reward_acc", ".2f"), "learning_rate": ("lr", ".2e")}


class ProgressPrinter(TrainerCallback):
    """Prints one line per Trainer log record, at most every `interval` seconds (the first and last step always), and
    a summary at the end: the training's label, step/total, epoch, loss (DDPO's loss and reward accuracy), lr,
    elapsed time and ETA. On stdout, flushed, by the main process only: a notebook shows it, papermill logs it, and a
    launched process's output stream carries it.
    """

    def __init__(self, label: str, interval: float = PROGRESS_INTERVAL):
        self.label, self.interval = label, interval
        self._started, self._first_step, self._printed = 0.0, 0, -math.inf

    def on_train_begin(self, args, state, control, **kwargs):
        self._started, self._first_step, self._printed = time.monotonic(), state.global_step, -math.inf
        resumed = f", resuming at step {state.global_step}" if state.global_step else ""
        self._print(state, f"{state.max_steps} steps, logging every {args.logging_steps}{resumed}")

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "train_runtime" in logs:  # Trainer's closing record
            self._print(state, f"done: {state.global_step} steps in {tqdm.format_interval(logs['train_runtime'])}, "
                               f"train_loss {logs.get('train_loss', math.nan):.4f}")
            return
        now = time.monotonic()
        if now - self._printed < self.interval and state.global_step < state.max_steps:
            return
        self._printed = now
        self._print(state, progress_line(state, logs, now - self._started, state.global_step - self._first_step))

    def _print(self, state: TrainerState, text: str) -> None:
        if state.is_world_process_zero:
            print(f"{TRAINING_LINE} {self.label}: {text}", flush=True)


def progress_line(state: TrainerState, logs: dict[str, Any], elapsed: float, steps_done: int) -> str:
    """`step 10/375 epoch 0.08 loss 0.6931 lr 5.00e-04 elapsed 00:12 eta 07:30` (ETA from this session's steps)."""
    remaining = state.max_steps - state.global_step
    eta = tqdm.format_interval(elapsed / steps_done * remaining) if steps_done else "?"
    values = "".join(f" {name} {logs[key]:{spec}}" for key, (name, spec) in PROGRESS_KEYS.items() if key in logs)
    return (f"step {state.global_step}/{state.max_steps} epoch {state.epoch or 0:.2f}{values} "
            f"elapsed {tqdm.format_interval(elapsed)} eta {eta}")


def read_log(path: Path) -> list[dict[str, Any]]:
    """Records written by `JsonlLogger` (an empty list if training has not logged yet)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def trackers(tracking: TrackingConfig) -> list[str]:
    """The integration names `tracking.report_to` lists ("none": none)."""
    names = [tracking.report_to] if isinstance(tracking.report_to, str) else tracking.report_to
    return [name for name in names if name != "none"]


def training_arguments(cfg: TrainConfig, output_dir: Path, seed: int, tracking: TrackingConfig | None = None,
                       label: str | None = None) -> TrainingArguments:
    """Trainer arguments from a train section; checkpoints go to `output_dir/checkpoints`.

    Trackers get `tracking`'s project and the run name `<tracking.run_name>/<label>`; TensorBoard is left to
    `tracking_callbacks` (Trainer would write it under the checkpoints).
    """
    tracking = tracking or TrackingConfig()
    return TrainingArguments(
        output_dir=str(TrainingFolder(Path(output_dir)).checkpoints),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr,
        lr_scheduler_type=cfg.scheduler,
        warmup_steps=cfg.warmup_ratio,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        logging_steps=cfg.logging_steps,
        logging_first_step=True,
        save_strategy="steps" if cfg.save_steps > 0 else "no",
        save_steps=max(cfg.save_steps, 1),
        save_total_limit=2,
        bf16=cfg.bf16,
        tf32=cfg.tf32 or None,
        use_cpu=not torch.cuda.is_available(),  # bf16 autocast on CPU needs it said
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=cfg.num_workers,
        dataloader_pin_memory=torch.cuda.is_available(),  # pinned memory only feeds a GPU
        remove_unused_columns=False,
        report_to=[name for name in trackers(tracking) if name != "tensorboard"] or "none",
        run_name="/".join(filter(None, (tracking.run_name, label))) or None,
        project=tracking.project or TrainingArguments.project,
        disable_tqdm=True,  # ProgressPrinter's lines, not Trainer's bar or its notebook table
    )


def tracking_callbacks(tracking: TrackingConfig, output_dir: Path) -> list[TrainerCallback]:
    """TensorBoard's writer, under `output_dir/tensorboard`, when `tracking` reports to it."""
    if "tensorboard" not in trackers(tracking):
        return []
    from transformers.integrations import TensorBoardCallback

    callback = TensorBoardCallback()
    callback.logging_dir = str(Path(output_dir) / "tensorboard")
    return [callback]


def prepare_for_training(model: PreTrainedModel, cfg: ModelConfig) -> PreTrainedModel:
    """Frozen vision encoder, gradient checkpointing, k-bit preparation and LoRA adapters as the model section asks.

    What is frozen, adapted and saved in full follows the model's family (`rlhfv_nb.families`).
    """
    family = resolve_family(model, cfg.family)
    if cfg.freeze_vision:
        frozen = [param for name, param in model.named_parameters() if family.frozen_by_freeze_vision(name)]
        if not frozen:
            raise ValueError(f"model.freeze_vision: no parameter lies in this {family.name} model's vision encoder "
                             f"{list(family.vision)} (override with model.family.vision)")
        for param in frozen:
            param.requires_grad_(False)
    if cfg.load_in_4bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    elif cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.lora.enabled:
        from peft import LoraConfig, get_peft_model

        targets, saved = lora_modules(family, cfg.lora)
        saved = peft_modules_to_save(model, saved, family)
        lora = LoraConfig(
            r=cfg.lora.r,
            lora_alpha=cfg.lora.alpha,
            lora_dropout=cfg.lora.dropout,
            target_modules=targets,
            modules_to_save=saved or None,
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
    return model


class ResumableTrainer(Trainer):
    """`Trainer` whose resume restores the checkpoint's weights whatever the model's key naming.

    transformers 5 saves a model under its original checkpoint's key names (e.g. LLaVA's `language_model.model.*`)
    while the loaded model names them differently (`model.language_model.*`); `Trainer` resumes full checkpoints
    with a non-strict `load_state_dict`, which then loads nothing and trains on from the start weights. Here the
    checkpoint is read back through `from_pretrained` (which knows the naming) and loaded strictly.
    Adapters (peft), DeepSpeed and FSDP checkpoints keep Trainer's own loading.
    """

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: torch.nn.Module | None = None) -> None:
        model = model if model is not None else self.model
        if not isinstance(model, PreTrainedModel) or self.is_fsdp_enabled:
            super()._load_from_checkpoint(resume_from_checkpoint, model)
            return
        saved = type(model).from_pretrained(resume_from_checkpoint, dtype=model.dtype)
        model.load_state_dict(saved.state_dict(), strict=True)
        del saved


def save_trained(trainer: Trainer, processor: ProcessorMixin, folder: Path) -> Path:
    """Save the trainer's model and `processor` to `folder`, whole or not at all: written to `<folder>.partial`,
    then renamed (a kill while saving leaves no half-written model under the final name)."""
    partial = partial_folder(folder, empty=trainer.is_world_process_zero())
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(partial))
    if trainer.is_world_process_zero():
        processor.save_pretrained(str(partial))
        publish_folder(partial, folder)
    trainer.accelerator.wait_for_everyone()
    return folder


class EpochSnapshots(TrainerCallback):
    """Saves the model at the end of every epoch but the last (the final model) to `TrainingFolder.epoch(E)`,
    for checkpoint selection (`TrainConfig.save_epochs`)."""

    def __init__(self, save: Callable[[Path], Path], folder: TrainingFolder) -> None:
        self.save, self.folder = save, folder

    def on_epoch_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
                     ) -> None:
        if state.global_step < state.max_steps:
            self.save(self.folder.epoch(round(state.epoch)))


def _run(trainer: Trainer, output_dir: Path, processor: ProcessorMixin, save_epochs: bool = False) -> Path:
    """Train (resuming from the last checkpoint if any), then save model and processor to `output_dir/final`
    (and after each earlier epoch to `output_dir/epochs/epoch-E` with `save_epochs`)."""
    folder = TrainingFolder(Path(output_dir))
    if save_epochs:
        trainer.add_callback(EpochSnapshots(functools.partial(save_trained, trainer, processor), folder))
    checkpoints = Path(trainer.args.output_dir)
    last = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
    if last:
        log.info("resuming from %s", last)
    trainer.train(resume_from_checkpoint=last)
    return save_trained(trainer, processor, folder.final)


def make_trainer(trainer_cls: type[Trainer], model: PreTrainedModel, rows: datasets.Dataset, collator: Any,
                 cfg: TrainConfig, model_cfg: ModelConfig, output_dir: Path, seed: int,
                 callbacks: Sequence[TrainerCallback] = (), label: str = "train",
                 tracking: TrackingConfig | None = None, **extra: Any) -> Trainer:
    """A `trainer_cls` over the prepared model (checkpointing, k-bit, LoRA), logging to `output_dir/log.jsonl`, to
    stdout (`ProgressPrinter`, its lines named `label`) and to the trackers `tracking` names.

    The seed is set before the LoRA adapters are made, so their random start is the same in every run.
    """
    tracking = tracking or TrackingConfig()
    set_seed(seed)
    trainer = trainer_cls(
        model=prepare_for_training(model, model_cfg),
        args=training_arguments(cfg, output_dir, seed, tracking, label),
        train_dataset=rows,
        data_collator=collator,
        callbacks=[JsonlLogger(TrainingFolder(Path(output_dir)).log), ProgressPrinter(label),
                   *tracking_callbacks(tracking, output_dir), *callbacks],
        **extra,
    )
    trainer.remove_callback(PrinterCallback)  # Trainer's dict per record, added with disable_tqdm: ours replace it
    return trainer


def train_sft(
    model: PreTrainedModel, processor: ProcessorMixin, rows: datasets.Dataset, cfg: TrainConfig,
    model_cfg: ModelConfig, output_dir: Path, seed: int, tracking: TrackingConfig | None = None,
) -> Path:
    """Supervised fine-tuning on rows with `image`, `question`, `answer_ids`. Returns the saved model folder."""
    trainer = make_trainer(ResumableTrainer, model, rows, SFTCollator(processor), cfg, model_cfg, output_dir, seed,
                           label="sft", tracking=tracking)
    return _run(trainer, output_dir, processor, cfg.save_epochs)


class DDPOTrainer(ResumableTrainer):
    """`Trainer` whose loss is DDPO over precomputed reference log-probs (see `rlhfv_nb.ddpo`)."""

    def __init__(self, *args: Any, ddpo: DDPOConfig, **kwargs: Any):
        super().__init__(*args, **kwargs)
        # The DDPO loss is a mean over the micro-batch's pairs, not a sum over `num_items_in_batch`: Trainer
        # must divide it by the accumulation steps (it skips that for models taking loss kwargs, as LLaVA does).
        self.model_accepts_loss_kwargs = False
        self.ddpo = ddpo
        self._metrics: dict[str, list[float]] = defaultdict(list)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        weights, ref_token_logps = inputs["weights"], inputs["ref_logps"]
        policy_token_logps, mask = answer_logps(model, inputs)
        average = self.ddpo.use_average
        ref_token_logps = ref_token_logps.to(policy_token_logps.dtype)
        policy = sequence_logps(policy_token_logps, mask, weights, average)
        reference = sequence_logps(ref_token_logps, mask, weights, average)
        plain, plain_ref = sequence_logps(policy_token_logps, mask), sequence_logps(ref_token_logps, mask)
        half = policy.shape[0] // 2
        losses, chosen_rewards, rejected_rewards = ddpo_loss(
            policy[:half], policy[half:], reference[:half], reference[half:], self.ddpo.beta
        )
        loss = losses.mean()
        if self.ddpo.sft_weight:
            loss = loss - self.ddpo.sft_weight * policy[:half].mean()
        self._record(
            {
                "rewards/chosen": chosen_rewards,
                "rewards/rejected": rejected_rewards,
                "rewards/accuracies": (chosen_rewards > rejected_rewards).float(),
                "rewards/margins": chosen_rewards - rejected_rewards,
                # Summed per-token log-probs of the answers, as TRL logs them; the DDPO scores (gamma-weighted,
                # averaged when use_average) are what the loss compares, under their own name.
                "logps/chosen": plain[:half].detach(),
                "logps/rejected": plain[half:].detach(),
                "logps_ref/chosen": plain_ref[:half],
                "logps_ref/rejected": plain_ref[half:],
                "scores/chosen": policy[:half].detach(),
                "scores/rejected": policy[half:].detach(),
                "scores_ref/chosen": reference[:half],
                "scores_ref/rejected": reference[half:],
                "ddpo_loss": losses.detach(),
            }
        )
        return (loss, {"logps": policy_token_logps}) if return_outputs else loss

    def _record(self, values: dict[str, torch.Tensor]) -> None:
        for name, value in values.items():
            self._metrics[name].append(self.accelerator.gather_for_metrics(value.detach()).float().mean().item())

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        for name, values in self._metrics.items():
            logs[name] = sum(values) / len(values)
        self._metrics.clear()
        super().log(logs, start_time)


def train_ddpo(
    model: PreTrainedModel, processor: ProcessorMixin, pairs: datasets.Dataset, cfg: DDPOConfig,
    model_cfg: ModelConfig, output_dir: Path, seed: int, tracking: TrackingConfig | None = None,
) -> Path:
    """DDPO on pairs carrying ids, dense weights and reference log-probs. Returns the saved model folder."""
    trainer = ddpo_trainer(model, processor, pairs, cfg, model_cfg, output_dir, seed, tracking)
    return _run(trainer, output_dir, processor, cfg.save_epochs)


def ddpo_trainer(
    model: PreTrainedModel, processor: ProcessorMixin, pairs: datasets.Dataset, cfg: DDPOConfig,
    model_cfg: ModelConfig, output_dir: Path, seed: int, tracking: TrackingConfig | None = None,
    callbacks: Sequence[TrainerCallback] = (),
) -> DDPOTrainer:
    """The DDPO trainer `train_ddpo` runs (the bench drives it itself, with its own callbacks)."""
    collator = PairCollator(processor, shares_prefix(model, model_cfg.family, cfg.share_prefix))
    return make_trainer(DDPOTrainer, model, pairs, collator, cfg, model_cfg, output_dir, seed,
                        callbacks, label=f"ddpo-gamma{cfg.gamma:g}", tracking=tracking, ddpo=cfg)
