"""Typed run parameters: loaded from `params/*.yaml` or notebook variables, validated with clear errors.

Every section is a dataclass whose defaults are the upstream recipe's values (RLHF-V's released recipe,
README since Feb 2024: gamma 1.1, beta 0.1, summed scores, lr 5e-7, global batch 8, ~3 epochs, no SFT
term, all parameters trained on LLaVA-1.5-7B) or neutral ones; every preset, `cpu-tiny` included, spells
out what it changes. A partial dict only changes the keys it names. Unknown keys, wrong types and
missing local files raise `ConfigError` naming the dotted key.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rlhfv_nb.layout import RunLayout


class ConfigError(ValueError):
    """A parameter is unknown, of the wrong type, or points at a missing file."""


@dataclass
class TinyModelConfig:
    """Shape of the offline tiny LLaVA-architecture model (CLIP vision tower + Llama decoder)."""

    image_size: int = 48
    patch_size: int = 24
    vision_hidden_size: int = 64
    vision_layers: int = 2
    vision_heads: int = 4
    vision_feature_layer: int = -1
    hidden_size: int = 128
    layers: int = 2
    heads: int = 4
    intermediate_size: int = 256
    vocab_size: int = 384
    max_position_embeddings: int = 256
    vision_pretrain_steps: int = 600  # tag-pretraining of the vision tower on world images (0: none)
    vision_pretrain_lr: float = 2e-3


@dataclass
class LoraConfig:
    """LoRA adapters on the language model (peft); `enabled: false` trains all parameters.

    `target_modules` and `modules_to_save` default (null) to the model family's decoder linears and
    projector (`rlhfv_nb.families`); set them to override.
    """

    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str | None = None
    modules_to_save: list[str] | None = None


@dataclass
class FamilyConfig:
    """Overrides of the model family's layout (`rlhfv_nb.families`); null keeps the family's value.

    `name` picks a known family for a model type the table lacks; module paths are as
    `model.named_modules()` names them.
    """

    name: str | None = None
    vision: list[str] | None = None
    projector: list[str] | None = None
    decoder: str | None = None
    decoder_linears: list[str] | None = None
    bidirectional_prompt: bool | None = None  # the prompt's tokens attend to the whole prompt (a prefix-LM)
    image_blocks: bool | None = None  # an image's tokens (token_type_ids 1) attend to the whole image


@dataclass
class ModelConfig:
    """Which base vision-language model to load, and how."""

    base: str = "llava-hf/llava-1.5-7b-hf"  # a hub id or local folder; "tiny" builds the offline tiny model
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    dtype: str = "float32"  # float32 | bfloat16 | float16
    attn_implementation: str = "sdpa"  # sdpa | eager | flash_attention_2 (falls back to sdpa if missing)
    load_in_4bit: bool = False  # NF4 + double quantization through bitsandbytes (QLoRA)
    lora: LoraConfig = field(default_factory=LoraConfig)
    family: FamilyConfig = field(default_factory=FamilyConfig)
    gradient_checkpointing: bool = True
    trust_remote_code: bool = False
    freeze_vision: bool = False  # true: keep the vision encoder (not its projector) fixed; upstream trains all
    # "pad": pad images to a square of the processor's mean colour (LLaVA-1.5's `image_aspect_ratio pad`);
    # "native": the processor's own resizing; null: the model family's default (`rlhfv_nb.families`)
    image_aspect_ratio: str | None = None


@dataclass
class DataConfig:
    """Where SFT data and preference pairs come from, and how bad rows are handled."""

    sft_source: str = "openbmb/RLHF-V-Dataset"  # "synthetic" | hub id | local parquet/folder
    preferences: str = "openbmb/RLHF-V-Dataset"  # "feedback" (collected after SFT) | hub id | local path
    world: dict[str, Any] = field(default_factory=dict)  # rlhfv_nb.world.WorldConfig overrides
    sft_images: int = 1500
    feedback_images: int = 2000
    eval_images: int = 500
    max_pairs: int | None = None
    max_length: int = 2048
    on_bad_row: str = "skip"  # skip | error
    max_image_pixels: int = 25_000_000  # larger images (width x height) are bad rows: a bomb or a wrong file
    split: str = "train"
    show_examples: int = 4


@dataclass
class TrainConfig:
    """Optimisation settings shared by SFT and DDPO (HF Trainer arguments)."""

    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = 1
    grad_accum: int = 8
    lr: float = 5e-7
    scheduler: str = "cosine"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    logging_steps: int = 10
    save_steps: int = 0  # 0: save only at the end
    save_epochs: bool = False  # also keep the model after each epoch but the last (`<out>/epochs/epoch-E`)
    bf16: bool = True  # bf16 autocast over the loaded weights (upstream trains in bf16)
    tf32: bool = False  # needs an Ampere or newer GPU
    num_workers: int = 0


@dataclass
class SFTConfig(TrainConfig):
    """Supervised fine-tuning; `enabled: false` uses the base model as the SFT model (e.g. LLaVA-1.5, which is
    already instruction-tuned: the default)."""

    enabled: bool = False


@dataclass
class FeedbackConfig:
    """Simulated correctional feedback on the synthetic world (the annotator of RLHF-V)."""

    samples_per_image: int = 2  # sampled descriptions per fresh image
    exists_questions: int = 0  # existence questions ("is there a tent?") asked per fresh image: 0, 1 or 2
    short_questions: int = 1  # other short questions (colour, count, cell) asked per fresh image
    # Short-question types whose right answers still give a pair, a wrong answer of the annotator's rejected
    # (`world.wrong_short_answer`): corrections alone show DPO only the model's mistakes, and it drifts on the rest.
    right_answer_pairs: list[str] = field(default_factory=list)
    temperature: float = 0.7
    top_p: float = 1.0
    max_new_tokens: int = 64
    batch_size: int = 32


@dataclass
class DDPOConfig(TrainConfig):
    """DDPO: DPO with changed tokens weighted by gamma (gamma = 1 is plain DPO)."""

    gamma: float = 1.1
    beta: float = 0.1
    use_average: bool = False
    sft_weight: float = 0.0  # upstream's optional SFT term (- sft_weight * S(chosen)); 0 upstream
    min_match: int = 3
    ablation_gammas: list[float] = field(default_factory=list)  # e.g. [1.0]: also train plain DPO
    ref_batch_size: int = 8
    # Score a pair's chosen and rejected answers after one encoding of its image and prompt, in training and in
    # the reference pass (same log-probs, less compute); false: one row per answer, prompt repeated.
    share_prefix: bool = True


@dataclass
class JudgeConfig:
    """An OpenAI-compatible LLM judge; the key is read from `api_key_env`, never stored."""

    model: str = "gpt-4o-2024-08-06"
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    max_concurrency: int = 4
    repeats: int = 1  # judge every item N times; judged metrics reported as mean and std over the N
    # Object HalBench object extraction (upstream: gpt-3.5-turbo-0613, retired); null: `model`
    extraction_model: str | None = "gpt-3.5-turbo"
    max_consecutive_failures: int = 8  # connection failures in a row before the judge gives up


@dataclass
class ServedConfig:
    """An OpenAI-compatible vision endpoint (vLLM, SGLang, llama.cpp) that answers for `evaluation.backend: openai`."""

    base_url: str = "http://127.0.0.1:8000/v1"
    model: str | None = None  # the served model name; null: the one model the server lists
    api_key_env: str = "RLHFV_NB_SERVER_KEY"  # unset: "EMPTY", as vLLM accepts
    max_concurrency: int = 8
    timeout: float = 600.0


@dataclass
class EvalConfig:
    """Generation settings and benchmarks for notebook 04."""

    benchmarks: list[str] = field(default_factory=lambda: ["object_halbench", "mmhal_bench", "llava_bench", "pope"])
    max_new_tokens: int = 1024  # upstream generation: beam 3, up to 1024 new tokens, repetition penalty 1.1
    num_beams: int = 3
    repetition_penalty: float = 1.1
    batch_size: int = 8
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    coco_dir: str | None = None
    limit: int | None = None
    backend: str = "hf"  # hf: generate in this process | openai: ask `evaluation.server`
    server: ServedConfig = field(default_factory=ServedConfig)
    # Object HalBench objects: "auto" (the judge's LLM extraction as upstream when a judge key is set, else
    # words) | "llm" | "words" (CHAIR word match with WordNet lemmas, judge-free)
    object_halbench_extraction: str = "auto"
    pope_source: str = "official"  # official: RUCAIBox/POPE's released COCO files | coco: regenerated from COCO
    pope_seed: int = 0  # the regenerated POPE's sampling seed (independent of the training seed)
    # AMBER's images (AMBER_<n>.jpg from its release zip); null: $AMBER_IMAGE_DIR, else <cache>/amber/image
    amber_images: str | None = None


@dataclass
class DemoConfig:
    """Gradio demo settings: safe defaults (localhost, no share link)."""

    launch: bool = False
    host: str = "127.0.0.1"
    port: int = 7860
    share: bool = False
    max_upload_mb: float = 5.0
    max_image_side: int = 4096
    max_new_tokens: int = 64


@dataclass
class LaunchConfig:
    """How training processes start: in the notebook's process, or `accelerate launch` subprocesses."""

    num_processes: int = 1
    accelerate_config: str | None = None  # e.g. configs/accelerate/deepspeed_zero3.yaml
    require_cuda: bool = False


@dataclass
class TrackingConfig:
    """Experiment trackers the SFT and DDPO Trainers report to (their loss, rewards and lr records).

    `report_to`: "none", or transformers' integration names (tensorboard, trackio, wandb, mlflow, ...), each
    needing its package; TensorBoard writes under `<training folder>/tensorboard` (`<run>/sft/tensorboard`).
    `project`: Trackio's project (null: transformers' default; W&B reads `WANDB_PROJECT`). Each training is named
    `sft`, `ddpo-gamma5`, ..., after `run_name/` when set. Not a stage input: changing it re-runs nothing.
    """

    report_to: str | list[str] = "none"
    project: str | None = None
    run_name: str | None = None


@dataclass
class RlaifvConfig:
    """RLAIF-V's iterative alignment (notebook 06, `rlhfv_nb.rlaifv.loop`): `rounds` rounds, each sampling
    candidates from the newest policy on `prompts_per_round` prompts (`evaluation.batch_size` at a time), scoring
    them with AI feedback (`feedback`: `rlhfv_nb.rlaifv.config.RlaifvFeedbackConfig` overrides; labeler "world" is
    the miniature's trained cell classifier) and training `ddpo` on the round's pairs. `rounds: 0` (the default)
    turns it off.

    Each round's model is picked among the round's gammas (`ddpo.gamma` and `ddpo.ablation_gammas`), and with
    `select_checkpoints: epochs` their models after each earlier epoch too, by `select_by`
    (`rlhfv_nb.rlaifv.select`; empty: always `ddpo.gamma`'s final model).
    """

    rounds: int = 0  # 0: off, notebook 06 does not run; RLAIF-V runs 4
    # "world" (fresh world images, the miniature) or a hub id / local file with image + question columns, e.g.
    # openbmb/RLAIF-V-Dataset (upstream's prompts) or a prompt file of one's own (`rlhfv_nb.rlaifv.prompts`)
    prompts: str = "world"
    prompts_split: str = "train"
    prompts_per_round: int = 200  # prompts per round (a dataset's next ones: none comes back in a later round)
    pairs_per_round: int = 0  # at most this many of a round's pairs, drawn at random (0: all of them)
    feedback: dict[str, Any] = field(default_factory=dict)  # RlaifvFeedbackConfig overrides
    labeler_images: int = 200  # world labeler: fresh images of its own to train on
    labeler_steps: int = 150  # world labeler: training steps (batches of 64 cells)
    # metrics "<benchmark>.<key>" that pick a round's model (mean rank), e.g. [object_halbench.CHAIRs,
    # mmhal_bench.hallucination_rate] as RLAIF-V picks, or [world.CHAIRi] in the miniature
    select_by: list[str] = field(default_factory=list)
    select_images: int = 0  # world selection metrics: fresh world images of their own
    select_checkpoints: str = "final"  # final | epochs: also each gamma's model after every earlier epoch


@dataclass
class Config:
    """All parameters of one run; `run_dir` holds every artifact the stages write."""

    name: str = "rlhfv"
    seed: int = 0
    run_dir: str = "runs/rlhfv"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sft: SFTConfig = field(default_factory=lambda: SFTConfig(lr=2e-5))
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)
    ddpo: DDPOConfig = field(default_factory=lambda: DDPOConfig(epochs=3.0))
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    rlaifv: RlaifvConfig = field(default_factory=RlaifvConfig)

    @property
    def run_path(self) -> Path:
        """The run folder, relative paths taken from the project root."""
        path = Path(self.run_dir).expanduser()
        return path if path.is_absolute() else project_root() / path

    @property
    def layout(self) -> RunLayout:
        """Every path of the run folder (`rlhfv_nb.layout`)."""
        return RunLayout(self.run_path)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
SECTIONS = tuple(f.name for f in dataclasses.fields(Config))


def project_root(start: Path | None = None) -> Path:
    """Nearest folder at or above `start` (default: cwd) holding `params/`; cwd if none does.

    Notebooks opened in Jupyter run with cwd `notebooks/`; this keeps their run folder the same
    as the one papermill and the CLI use from the repository root.
    """
    start = (start or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        if (folder / "params").is_dir() and (folder / "notebooks").is_dir():
            return folder
    return start


def _check_type(value: Any, annotation: Any, key: str) -> Any:
    """Return `value` converted to `annotation` where lossless (int -> float), else raise."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _check_type(value, option, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0])
    if origin is list:
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        (item_type,) = typing.get_args(annotation)
        return [_check_type(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        return dict(value)
    if annotation is Any:
        return value
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is float and isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
        return float(value)  # YAML 1.1 reads `5e-5` (no dot) as a string
    if annotation in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{key}: expected {annotation.__name__}, got bool {value!r}")
    if not isinstance(value, annotation):
        raise ConfigError(f"{key}: expected {annotation.__name__}, got {type(value).__name__} {value!r}")
    return value


def _build(cls: type, values: dict[str, Any], prefix: str, base: Any = None) -> Any:
    """A `cls` instance: `base` (default: `cls()`) with `values` applied, nested sections merged."""
    result = copy.deepcopy(base) if base is not None else cls()
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key, value in values.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(names)})"
            raise ConfigError(f"{dotted}: unknown key{hint}")
        current = getattr(result, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{dotted}: expected a mapping, got {type(value).__name__} {value!r}")
            setattr(result, key, _build(type(current), value, dotted, current))
        else:
            setattr(result, key, _check_type(value, hints[key], dotted))
    return result


def _validate(cfg: Config) -> Config:
    choices = {
        "model.dtype": (cfg.model.dtype, {"float32", "bfloat16", "float16"}),
        "model.attn_implementation": (cfg.model.attn_implementation, {"sdpa", "eager", "flash_attention_2"}),
        "data.on_bad_row": (cfg.data.on_bad_row, {"skip", "error"}),
        "model.image_aspect_ratio": (cfg.model.image_aspect_ratio or "pad", {"pad", "native"}),
        "evaluation.backend": (cfg.evaluation.backend, {"hf", "openai"}),
        "evaluation.object_halbench_extraction": (cfg.evaluation.object_halbench_extraction,
                                                  {"auto", "llm", "words"}),
        "evaluation.pope_source": (cfg.evaluation.pope_source, {"official", "coco"}),
        "rlaifv.select_checkpoints": (cfg.rlaifv.select_checkpoints, {"final", "epochs"}),
        "feedback.exists_questions": (cfg.feedback.exists_questions, {0, 1, 2}),
    }
    choices.update({f"feedback.right_answer_pairs[{i}]": (qtype, {"exists", "color", "count", "cell"})
                    for i, qtype in enumerate(cfg.feedback.right_answer_pairs)})
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"{key}: {value!r} is not one of {sorted(allowed)}")
    positives = {
        "ddpo.beta": cfg.ddpo.beta,
        "ddpo.gamma": cfg.ddpo.gamma,
        "data.max_length": cfg.data.max_length,
        "sft.batch_size": cfg.sft.batch_size,
        "ddpo.batch_size": cfg.ddpo.batch_size,
        "data.max_image_pixels": cfg.data.max_image_pixels,
        "evaluation.judge.repeats": cfg.evaluation.judge.repeats,
        "evaluation.server.max_concurrency": cfg.evaluation.server.max_concurrency,
        "rlaifv.prompts_per_round": cfg.rlaifv.prompts_per_round,
        "rlaifv.labeler_images": cfg.rlaifv.labeler_images,
        "rlaifv.labeler_steps": cfg.rlaifv.labeler_steps,
    }
    for key, value in positives.items():
        if value <= 0:
            raise ConfigError(f"{key}: must be > 0, got {value!r}")
    if cfg.model.load_in_4bit and not cfg.model.lora.enabled:
        raise ConfigError("model.load_in_4bit: a 4-bit base cannot be trained directly; set model.lora.enabled")
    from rlhfv_nb.adapters import split_dataset_name  # adapters -> data -> config: imported here

    for key, value in {"data.sft_source": cfg.data.sft_source, "data.preferences": cfg.data.preferences,
                       "launch.accelerate_config": cfg.launch.accelerate_config,
                       "evaluation.coco_dir": cfg.evaluation.coco_dir,
                       "evaluation.amber_images": cfg.evaluation.amber_images,
                       "rlaifv.prompts": None if cfg.rlaifv.prompts == "world" else cfg.rlaifv.prompts}.items():
        path = split_dataset_name(value)[0] if key.startswith("data.") and value else value  # `info.json#name`
        if path and looks_like_local_path(path) and not (project_root() / Path(path).expanduser()).exists():
            raise ConfigError(f"{key}: file or folder {path!r} does not exist")
    _check_benchmarks(cfg.evaluation.benchmarks)
    _check_tracking(cfg.tracking.report_to)
    if cfg.data.world:
        from rlhfv_nb.world import WorldConfig

        try:
            WorldConfig(**cfg.data.world)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"data.world: {err}") from err
    _check_rlaifv(cfg.rlaifv)
    return cfg


def _check_rlaifv(rlaifv: RlaifvConfig) -> None:
    """`ConfigError` for negative rounds, selection images or pair caps, a selection metric `rlaifv.select`
    cannot read, world selection metrics without selection images, or feedback settings `RlaifvFeedbackConfig`
    refuses."""
    for key in ("rounds", "select_images", "pairs_per_round"):
        if getattr(rlaifv, key) < 0:
            raise ConfigError(f"rlaifv.{key}: must be >= 0, got {getattr(rlaifv, key)!r}")
    from rlhfv_nb.rlaifv.config import RlaifvFeedbackConfig  # rlaifv.config -> generate -> config: imported here
    from rlhfv_nb.rlaifv.select import WORLD, parse_metrics

    try:
        metrics = parse_metrics(rlaifv.select_by)
    except ValueError as err:
        raise ConfigError(f"rlaifv.select_by{err}") from err
    if any(metric.benchmark == WORLD for metric in metrics) and not rlaifv.select_images:
        raise ConfigError("rlaifv.select_by: world metrics are measured on rlaifv.select_images fresh world images; "
                          "set it (e.g. 100)")
    if rlaifv.select_checkpoints == "epochs" and not metrics:
        raise ConfigError("rlaifv.select_checkpoints: epochs needs rlaifv.select_by metrics to pick among them")
    try:
        RlaifvFeedbackConfig(**rlaifv.feedback)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"rlaifv.feedback: {err}") from err


def _check_benchmarks(names: list[str]) -> None:
    """`ConfigError` for a benchmark name stage 04 does not know, with the closest known one."""
    from rlhfv_nb.evaluate.tasks import BUILDERS, WORLD  # lazily: tasks imports this module

    known = [*BUILDERS, *WORLD]
    for index, name in enumerate(names):
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"evaluation.benchmarks[{index}]: unknown benchmark {name!r} ({hint}"
                              f"known: {', '.join(known)})")


def _check_tracking(report_to: str | list[str]) -> None:
    """`ConfigError` unless `report_to` is "none" or names Trainer integrations (one, or a list)."""
    names = [report_to] if isinstance(report_to, str) else report_to
    if names == ["none"]:
        return
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK  # lazily: a heavy import

    for name in names:
        if name not in INTEGRATION_TO_CALLBACK:
            raise ConfigError(f"tracking.report_to: {name!r} is not a Trainer integration (known: "
                              f"{', '.join(sorted(INTEGRATION_TO_CALLBACK))}; 'none' stands alone)")


# Suffixes that make a value a file name, never a hub id (hub names may hold dots: `dclm-baseline-1.0`).
FILE_SUFFIXES = (".parquet", ".pq", ".arrow", ".json", ".jsonl", ".csv", ".tsv", ".txt", ".yaml", ".yml",
                 ".zip", ".gz", ".tar", ".tgz", ".bz2", ".xz", ".zst")


def looks_like_local_path(value: str) -> bool:
    """True for values that can only name a local file or folder, never a hub id (`./x`, `/x`, `~/x`, `x.parquet`,
    `a/b/c`, `data/x` where `data/` exists here)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if value.startswith(("/", ".", "~")) or "\\" in value or Path(value).suffix.lower() in FILE_SUFFIXES:
        return True
    try:
        validate_repo_id(value)
    except HFValidationError:
        return True
    head = value.split("/")[0]
    return "/" in value and (Path(head).expanduser().exists() or (project_root() / head).exists())


def load_config(source: str | Path | dict[str, Any] | None = None, **overrides: Any) -> Config:
    """Build a validated `Config` from a YAML file, a dict, or keyword sections (notebook variables).

    `overrides` are merged section by section over the source, so `load_config("p.yaml", ddpo={"beta": 1})`
    changes only `ddpo.beta`.
    """
    values: dict[str, Any] = {}
    if isinstance(source, (str, Path)):
        values = read_params_file(Path(source))
    elif isinstance(source, dict):
        values = dict(source)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(values.get(key), dict):
            values[key] = _deep_merge(values[key], value)
        else:
            values[key] = value
    try:
        return _validate(_build(Config, values, ""))
    except ConfigError as err:
        where = f"{source}: " if isinstance(source, (str, Path)) else ""
        raise ConfigError(f"{where}{err}") from None


def read_params_file(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The values of a params YAML file; `extends: other.yaml` (relative to the file) merges it over that preset."""
    if not path.exists():
        raise ConfigError(f"params file {str(path)!r} does not exist")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(loaded).__name__}")
    base = loaded.pop("extends", None)
    if base is None:
        return loaded
    if not isinstance(base, str):
        raise ConfigError(f"{path}: extends: expected a params file name, got {base!r}")
    base_path = path.parent / base
    if base_path.resolve() in seen:
        raise ConfigError(f"{path}: extends: {base!r} extends this file again (a cycle)")
    return _deep_merge(read_params_file(base_path, (*seen, path.resolve())), loaded)


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def notebook_config(namespace: dict[str, Any]) -> Config:
    """The config of a notebook from its parameter variables (the `parameters` cell plus papermill's).

    The preset named by `name` (`params/<name>.yaml`, e.g. cpu-tiny when a notebook runs without `-f`) is the
    base the sections are merged over; a name with no preset file starts from the defaults.
    """
    sections = {key: namespace[key] for key in SECTIONS if key in namespace}
    preset = project_root() / "params" / f"{sections.get('name', '')}.yaml"
    return load_config(preset if preset.is_file() else None, **sections)
