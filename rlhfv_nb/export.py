"""`rlhfv-nb export`: a run's trained model as a folder anyone can load with plain transformers, plus its model card.

LoRA adapters are merged into the base weights (peft `merge_and_unload`; into a full-precision base when training
was 4-bit), so `AutoModelForImageTextToText.from_pretrained` and `AutoProcessor.from_pretrained` load the folder
without peft or this package; `merge=False` keeps an adapter as one. The README.md model card holds the recipe (the
config values the training stage recorded in its manifest), the data source and the run's metrics. `push_to` uploads
the folder with `huggingface_hub` (token from `HF_TOKEN`, endpoint from `HF_ENDPOINT` when set).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, ModelCard, ModelCardData
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import validate_repo_id

from rlhfv_nb.config import Config, ConfigError, load_config, looks_like_local_path
from rlhfv_nb.files import partial_folder, publish_folder, read_json
from rlhfv_nb.manifests import stage_status, stage_values
from rlhfv_nb.pipeline import ddpo_gammas, model_label

log = logging.getLogger(__name__)

TAGS = ["rlhf-v", "ddpo", "dpo", "vision-language", "image-text-to-text"]
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
TRAIN_KEYS = ("lr", "epochs", "max_steps", "batch_size", "grad_accum", "scheduler", "warmup_ratio", "weight_decay",
              "max_grad_norm", "bf16")
DDPO_KEYS = ("gamma", "beta", "use_average", "sft_weight", "min_match")
MODEL_KEYS = ("model.dtype", "model.freeze_vision", "model.load_in_4bit", "data.max_length", "seed")
LORA_KEYS = ("model.lora.r", "model.lora.alpha", "model.lora.dropout")
SPECIAL_SOURCES = {"tiny", "synthetic", "feedback"}  # config values that name no hub repository
RLHFV = "[RLHF-V](https://arxiv.org/abs/2312.00849) (Yu et al., CVPR 2024)"


@dataclass(frozen=True)
class TrainedModel:
    """One trained model of a run: its name in `metrics.json`, its folder, the stage that trains it, its gamma."""

    label: str
    folder: Path
    stage: str
    gamma: float | None = None  # None: the SFT model

    @property
    def section(self) -> str:
        """Its config section."""
        return "sft" if self.gamma is None else "ddpo"


def trained_model(cfg: Config, which: str = "ddpo") -> TrainedModel:
    """The model `which` names: "ddpo" (the run's main DDPO model), "sft", or a DDPO gamma ("1", "gamma1")."""
    if which == "sft":
        if not cfg.sft.enabled:
            raise ValueError(f"this run trains no SFT model (sft.enabled is false): its SFT model is the base model "
                             f"{cfg.model.base!r} itself")
        return TrainedModel("SFT", cfg.layout.sft.final, "02_sft")
    gamma = cfg.ddpo.gamma if which == "ddpo" else _gamma(which)
    if gamma not in ddpo_gammas(cfg):
        raise ValueError(f"gamma {gamma:g} is not one of this run's gammas {[f'{g:g}' for g in ddpo_gammas(cfg)]} "
                         "(ddpo.gamma and ddpo.ablation_gammas)")
    return TrainedModel(model_label(gamma), cfg.layout.ddpo(gamma).final, "03_ddpo", gamma)


def _gamma(which: str) -> float:
    try:
        return float(which.removeprefix("gamma").lstrip("="))
    except ValueError:
        raise ValueError(f"model {which!r}: expected 'ddpo', 'sft' or a DDPO gamma such as '1'") from None


def check_trained(model: TrainedModel) -> None:
    """Raise `FileNotFoundError` naming the folder and the stage to run when `model` has not been trained yet."""
    if any((model.folder / name).exists() for name in ("config.json", "adapter_config.json")):
        return
    started = any((model.folder.parent / "checkpoints").glob("checkpoint-*"))
    resumable = " (it resumes from the checkpoints there)" if started else ""
    raise FileNotFoundError(f"{model.label}: no trained model in {model.folder} yet: run stage {model.stage} "
                            f"(rlhfv-nb run PARAMS --only {model.stage[:2]}){resumable}")


def export_model(cfg: Config, which: str = "ddpo", *, out_dir: str | Path, merge: bool = True,
                 push_to: str | None = None) -> Path:
    """Write the run's model `which` (see `trained_model`) and its processor to `out_dir` as safetensors, with a
    README.md model card; upload the folder to the Hub repository `push_to` if given. Returns `out_dir`.

    `out_dir` must be new or empty; it is written through `<out_dir>.partial`, renamed when complete.
    """
    model = trained_model(cfg, which)
    check_trained(model)
    token = None
    if push_to:  # checked before the work, not after it
        token = hub_token()
        validate_repo_id(push_to)
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ValueError(f"export folder {out_dir} is not empty: choose a new folder or empty it")
    partial = partial_folder(out_dir)
    adapter, pad = save_model(cfg, model.folder, partial, merge)
    model_card(cfg, model, adapter, pad, push_to or f"path/to/{out_dir.name}").save(partial / "README.md")
    publish_folder(partial, out_dir)
    log.info("exported %s to %s", model.label, out_dir)
    if push_to:
        url = push_folder(out_dir, push_to, token, f"{model.label} of rlhfv-nb run {cfg.name}")
        log.info("pushed %s to %s", out_dir, url)
    return out_dir


def save_model(cfg: Config, folder: Path, out_dir: Path, merge: bool) -> tuple[bool, bool]:
    """Save the model in `folder` (adapters merged unless `merge` is false) and its processor to `out_dir`.

    Returns (whether `out_dir` holds an adapter, whether the processor pads images to squares on our loads).
    """
    from rlhfv_nb.modeling import load_model, load_processor
    from rlhfv_nb.processing import image_aspect_ratio_of

    processor = load_processor(folder, cfg.model)
    adapter = (folder / "adapter_config.json").exists()
    out_dir.mkdir(parents=True)
    if adapter and not merge:
        for name in ADAPTER_FILES:
            shutil.copy2(folder / name, out_dir / name)
    else:
        # A 4-bit base cannot be saved as plain weights: merge into the full-precision base instead.
        model = load_model(folder, dataclasses.replace(cfg.model, load_in_4bit=False))
        model = model.merge_and_unload() if adapter else model
        model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return adapter and not merge, image_aspect_ratio_of(processor) == "pad"


def hub_token() -> str:
    """The Hub token, from the `HF_TOKEN` environment variable only."""
    token = os.environ.get("HF_TOKEN")
    if not token:
        raise ValueError("pushing to the Hub needs a token with write access in the HF_TOKEN environment variable")
    return token


def push_folder(folder: Path, repo_id: str, token: str, message: str) -> str:
    """Create the model repository `repo_id` if needed and upload `folder` to it in one commit; returns its URL.

    The endpoint is `HF_ENDPOINT` as set now (huggingface_hub reads it once, at import).
    """
    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token)
    api.create_repo(repo_id, exist_ok=True)
    return api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=message).commit_url


# ---------------------------------------------------------------- model card
def hub_id(value: str | None) -> str | None:
    """`value` when it names a Hub repository, else None (a local path, or "tiny", "synthetic", "feedback")."""
    return value if value and value not in SPECIAL_SOURCES and not looks_like_local_path(value) else None


def recipe(cfg: Config, model: TrainedModel) -> tuple[dict[str, Any], str]:
    """The config values `model` was trained with, as its stage's manifest recorded them (else the given params),
    and a sentence saying which."""
    manifest = read_json(cfg.layout.manifest(model.stage), None)
    values = manifest["values"] if manifest else stage_values(cfg, model.stage)
    status = stage_status(cfg, model.stage)
    if not manifest:
        origin = f"from the params given (stage {model.stage} recorded no manifest)"
    elif status.done:
        origin = f"as stage {model.stage} recorded them"
    else:
        origin = f"as stage {model.stage} recorded them (the params given differ: {status.describe()})"
    keys = [f"{model.section}.{k}" for k in (DDPO_KEYS if model.gamma is not None else ()) + TRAIN_KEYS]
    keys += [*MODEL_KEYS, "model.lora.enabled", *(LORA_KEYS if values.get("model.lora.enabled") else ())]
    chosen = {key: values.get(key) for key in keys}
    if model.gamma is not None:
        chosen["ddpo.gamma"] = model.gamma
    return chosen, origin


def model_card(cfg: Config, model: TrainedModel, adapter: bool, pad: bool, where: str) -> ModelCard:
    """README.md for the exported `model`: metadata, usage, data, recipe and the run's metrics."""
    data = ModelCardData(
        base_model=hub_id(cfg.model.base),
        datasets=[d for d in _sources(cfg, model) if hub_id(d)] or None,
        tags=TAGS,
        library_name="peft" if adapter else "transformers",
        pipeline_tag="image-text-to-text",
        model_name=f"{cfg.name} {model.label}",
    )
    values, origin = recipe(cfg, model)
    sections = [f"# {cfg.name}: {model.label}", _intro(cfg, model, adapter, values), _usage(cfg, where, adapter, pad),
                "## Training data\n\n" + _data(cfg, model),
                f"## Recipe\n\nConfig values (`params` keys) {origin}.\n\n" + _table(["parameter", "value"], [
                    [f"`{k}`", _cell(v)] for k, v in values.items()]),
                "## Evaluation\n\n" + _metrics(cfg, model)]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n")


def _base(cfg: Config) -> str:
    base = cfg.model.base
    if base == "tiny":
        return "a tiny LLaVA-architecture model (CLIP vision tower + Llama decoder) the run built from scratch"
    return f"[{base}](https://huggingface.co/{base})" if hub_id(base) else f"the local model `{Path(base).name}`"


def _intro(cfg: Config, model: TrainedModel, adapter: bool, values: dict[str, Any]) -> str:
    """What the model is and how it was trained (`values`: its recipe)."""
    if (model.folder / "adapter_config.json").exists():
        how = "a LoRA adapter (peft)" if adapter else "LoRA adapters merged into the base weights"
    else:
        how = "all parameters but the vision encoder's trained" if values["model.freeze_vision"] \
            else "all parameters trained"
    if model.gamma is None:
        what = "supervised fine-tuning (the starting point of DDPO)"
    elif model.gamma == 1:
        what = f"plain DPO (DDPO with gamma = 1, the ablation of {RLHFV})"
    else:
        what = f"DDPO (dense direct preference optimisation) as in {RLHFV}, changed tokens weighted by gamma"
    start = "" if model.gamma is None or not cfg.sft.enabled else ", after supervised fine-tuning"
    quant = "" if not values["model.load_in_4bit"] else " Trained on a 4-bit (QLoRA) base" + (
        "." if adapter else "; merged into the full-precision base weights.")
    return (f"The {model.label} model of the rlhfv-nb run `{cfg.name}`: {_base(cfg)}, "
            f"trained with {what}{start}; {how}.{quant}")


def _usage(cfg: Config, where: str, adapter: bool, pad: bool) -> str:
    if adapter:
        base = hub_id(cfg.model.base) or "path/to/base-model"
        code = ("from peft import PeftModel\nfrom transformers import AutoModelForImageTextToText, AutoProcessor\n\n"
                f'model = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained("{base}"), '
                f'"{where}")\n')
    else:
        code = ("from transformers import AutoModelForImageTextToText, AutoProcessor\n\n"
                f'model = AutoModelForImageTextToText.from_pretrained("{where}")\n')
    note = ("\n\nTraining padded every image to a square of the image processor's mean colour first (LLaVA-1.5's "
            "`expand2square`); `AutoProcessor` does not: pad non-square images the same way for the same inputs."
            if pad else "")
    return f'## Usage\n\n```python\n{code}processor = AutoProcessor.from_pretrained("{where}")\n```{note}'


def _sources(cfg: Config, model: TrainedModel) -> list[str]:
    """The data sources behind `model`: its preference pairs (a DDPO model), the SFT data (when SFT is trained)."""
    return ([cfg.data.preferences] if model.gamma is not None else []) + ([cfg.data.sft_source] if cfg.sft.enabled
                                                                          else [])


def _source(value: str) -> str:
    if value == "synthetic":
        return "the run's synthetic image world (rendered scenes with known objects and their captions)"
    if value == "feedback":
        return ("correctional feedback the run collected from its SFT model on fresh synthetic-world images: "
                "hallucinated segments corrected against the known objects, in the RLHF-V-Dataset schema")
    if hub_id(value):
        return f"[{value}](https://huggingface.co/datasets/{value})"
    return f"the local file `{Path(value).name}`"


def _data(cfg: Config, model: TrainedModel) -> str:
    lines = []
    if model.gamma is not None:
        pairs = read_json(cfg.layout.metrics, {}).get("ddpo", {}).get(f"gamma={model.gamma:g}", {}).get("pairs")
        count = f" ({pairs} pairs)" if pairs else ""
        limit = f", at most {cfg.data.max_pairs}" if cfg.data.max_pairs else ""
        lines.append(f"- Preference pairs{count}{limit}: {_source(cfg.data.preferences)}")
    if cfg.sft.enabled:
        lines.append(f"- Supervised fine-tuning: {_source(cfg.data.sft_source)}")
    return "\n".join(lines)


def _metrics(cfg: Config, model: TrainedModel) -> str:
    """The run's evaluation of `model` (beside the SFT model's) and its last training log, from metrics.json."""
    metrics = read_json(cfg.layout.metrics, {})
    evaluation = metrics.get("evaluation", {})
    table, sources = evaluation.get("table", {}), evaluation.get("column_sources", {})
    row = table.get(model.label)
    if row is None:
        text = "No evaluation of this model is recorded yet (stage 04_evaluate writes it)."
    else:
        models = [model.label] + (["SFT"] if model.label != "SFT" and "SFT" in table else [])
        columns = [c for c in row if c not in ("judge", "notes")]
        text = "Metrics of the run's stage 04_evaluate (percent, except words and MMHal scores):\n\n" + _table(
            ["metric", *models, "scored by"],
            [[c, *(_cell(table[m].get(c)) for m in models), _scored_by(sources.get(c), row)] for c in columns])
        text += f"\n\nNot ok: {row['notes']}" if row.get("notes") else ""
    trained = metrics.get(model.section, {})
    trained = trained.get(f"gamma={model.gamma:g}", {}) if model.gamma is not None else trained
    last = {k: v for k, v in trained.items() if isinstance(v, (int, float)) and k != "pairs"}
    if last:
        text += "\n\nTraining, last logged values: " + ", ".join(f"{k} {_cell(v)}" for k, v in last.items())
    return text


def _scored_by(source: dict[str, Any] | None, row: dict[str, Any]) -> str:
    """How a column was scored: its benchmark's method and LLM judge or extractor (older runs: the row's judge)."""
    if source is None:
        return f"LLM: {row['judge']}" if row.get("judge") else "no LLM"
    llm = source.get("LLM", "none")
    return f"{source.get('scored by') or source.get('benchmark')}; " + ("no LLM" if llm == "none" else f"LLM: {llm}")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


# ---------------------------------------------------------------- CLI
def run_export(args: argparse.Namespace) -> int:
    """CLI body of `rlhfv-nb export`: 0 on success, 2 for a bad request, 1 when the upload failed."""
    from rlhfv_nb.launch import parse_overrides

    which = f"{args.gamma:g}" if args.gamma is not None else args.model
    try:
        cfg = load_config(args.params, **parse_overrides(args.set))
        out = export_model(cfg, which, out_dir=args.out, merge=args.merge, push_to=args.push_to_hub)
    except HfHubHTTPError as err:
        print(f"rlhfv-nb: the upload failed ({err}); the export folder is complete: retry with "
              f"`hf upload {args.push_to_hub} {args.out}`", file=sys.stderr)
        return 1
    except (ConfigError, ValueError, FileNotFoundError) as err:
        print(f"rlhfv-nb: {err}", file=sys.stderr)
        return 2
    print(f"exported to {out}" + (f" and pushed to {args.push_to_hub}" if args.push_to_hub else ""))
    return 0
