"""Will a training stage fit, and how long will it take? Estimates from the model's config, nothing loaded.

The model's weights come from its `config.json`: the real model class built on the meta device, split into
vision encoder, projector and decoder by the family table (`rlhfv_nb.families`); the training setup from the
run's params and its accelerate config.

- States follow the ZeRO paper (Rajbhandari et al., 2020): mixed precision keeps 2 bytes of weights,
  2 of gradients and 12 of optimizer state (fp32 master copy, Adam m and v) per trained parameter; ZeRO
  stage 1/2/3 (FSDP SHARD_GRAD_OP = 2, FULL_SHARD = 3) divides optimizer / +gradients / +weights by
  the GPU count. LoRA adapters (and `modules_to_save` copies) are fp32: 4 + 4 + 8 bytes.
- QLoRA: decoder linears in NF4 with double quantization (4.127 bits); peft's
  `prepare_model_for_kbit_training` upcasts every other weight (vision tower, embeddings, lm_head) to fp32,
  and the residual stream with them, so activations count 4 bytes.
- Activations follow Korthikanti et al. (2022) for a fused attention kernel (no attention matrix kept),
  adapted to the gated MLP: 7h + 3*kv + 4i values per token and decoder layer; with gradient
  checkpointing only each layer's input (h) plus one layer being recomputed. Logits add
  tokens * vocab * (dtype + 8) bytes (the fp32 log-softmax and its gradient), over every token for SFT and
  over answer tokens only for DDPO (its LM head runs where answers are).
- DDPO with a shared prefix (`ddpo.share_prefix`) runs a pair's image and prompt once, then both answers: the
  vision tower sees one image per pair and the decoder prompt + 2 answers. The prompt is `seq_len` less
  `answer_len`; without an answer length, only the image tokens are counted as shared (a lower bound).
- FLOPs per optimizer step: 2 * params * tokens forward, 2 * params * tokens for input gradients where
  gradients flow, 2 * trainable * tokens for weight gradients, one more forward when checkpointing
  (so full fine-tuning is 6NT, 8NT with checkpointing; a frozen vision tower costs 2NT).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rlhfv_nb.config import Config, FamilyConfig, project_root
from rlhfv_nb.families import ModelFamily, inside, lora_modules, resolve_family

GIB = 1024**3
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# NF4 with double quantization: 4-bit weights, an 8-bit absmax per block of 64, an fp32 scale per 256 absmax.
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)
CUDA_OVERHEAD = 1.0 * GIB  # CUDA context, cuBLAS workspace, allocator slack: a rule of thumb
PARTS = ("vision", "projector", "language")  # in the order data flows


class HardwareError(RuntimeError):
    """The params need hardware this machine does not have."""


@dataclass(frozen=True)
class Module:
    """A parameter-holding module as transformers names it in LLaVA; `fan_in` 0 marks non-matmul weights."""

    name: str
    numel: int
    part: str
    fan_in: int = 0
    fan_out: int = 0
    linear: bool = False  # an nn.Linear: quantisable and a LoRA target

    @property
    def matmul_params(self) -> int:
        return self.fan_in * self.fan_out


# Images of dynamic-resolution families (Qwen-VL) are counted at this side; fixed-size towers use their own.
DYNAMIC_IMAGE_SIDE = 448


def _sub(config: Any, *names: str, default: Any = None) -> Any:
    """The first of `names` that `config` has (families name the same size differently)."""
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


def _pair(value: int | list[int] | tuple[int, ...]) -> tuple[int, int]:
    """A size given as one number or as (height, width) (InternVL's vision config)."""
    return (value, value) if isinstance(value, int) else (value[0], value[-1])


def _image_token_counts(config: Any, vision: Any) -> tuple[int, int]:
    """(tokens through the vision encoder, tokens handed to the decoder) for one image.

    The encoder sees (side / patch)^2 patches, plus a CLS token for CLIP-like towers; the family's merge
    (Qwen's spatial merge, Idefics3's pixel shuffle, InternVL's downsampling, Gemma3's pooling) shrinks
    what reaches the decoder.
    """
    patch = _sub(vision, "patch_size", default=14)
    side = _sub(vision, "image_size", default=DYNAMIC_IMAGE_SIDE)
    patches = math.prod(s // p for s, p in zip(_pair(side), _pair(patch)))
    cls_token = 1 if vision.model_type in ("clip_vision_model", "mllama_vision_model") else 0
    if getattr(config, "mm_tokens_per_image", None):
        return patches, config.mm_tokens_per_image
    merge = _sub(vision, "spatial_merge_size", default=1) ** 2 * _sub(config, "scale_factor", default=1) ** 2
    if getattr(config, "downsample_ratio", None):
        merge = round(1 / config.downsample_ratio**2)
    return patches + cls_token, max(patches // merge, 1)


@dataclass(frozen=True)
class ModelShape:
    """The sizes that memory and FLOPs depend on, and every weight of the model by family part."""

    hidden: int
    layers: int
    intermediate: int
    vocab: int
    heads: int
    kv_heads: int
    head_dim: int
    vision_hidden: int
    vision_layers: int
    vision_intermediate: int
    vision_tokens: int  # per image, through the vision encoder (CLS included)
    image_tokens: int  # per image, in the decoder's sequence
    weights: tuple[Module, ...]
    family: ModelFamily

    @classmethod
    def from_config(cls, config: Any, family: FamilyConfig | None = None) -> ModelShape:
        """From a transformers config object, its dict (defaults filled in), a `config.json` or folder, or a hub id.

        The weights are those of the real model class, built on the meta device (no memory, nothing loaded);
        `rlhfv_nb.families` splits them into vision, projector and language.
        """
        from transformers import AutoConfig

        if isinstance(config, (str, Path)):
            path = Path(config)
            if path.is_dir():
                path = path / "config.json"
            config = json.loads(path.read_text()) if path.is_file() else AutoConfig.from_pretrained(str(config))
        if isinstance(config, dict):
            values = dict(config)
            config = AutoConfig.for_model(values.pop("model_type"), **values)
        layout = resolve_family(config, family)
        text, vision = config.get_text_config(), config.vision_config
        vision_hidden = _sub(vision, "hidden_size", "embed_dim")
        vision_tokens, image_tokens = _image_token_counts(config, vision)
        return cls(
            hidden=text.hidden_size,
            layers=text.num_hidden_layers,
            intermediate=text.intermediate_size,
            vocab=text.vocab_size,
            heads=text.num_attention_heads,
            kv_heads=getattr(text, "num_key_value_heads", None) or text.num_attention_heads,
            head_dim=getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads,
            vision_hidden=vision_hidden,
            vision_layers=_sub(vision, "num_hidden_layers", "depth"),
            vision_intermediate=_sub(vision, "intermediate_size",
                                     default=int(_sub(vision, "mlp_ratio", default=4) * vision_hidden)),
            vision_tokens=vision_tokens,
            image_tokens=image_tokens,
            weights=tuple(meta_weights(config, layout)),
            family=layout,
        )

    def modules(self) -> Iterator[Module]:
        """Every weight-holding module of the model, under the names peft's `target_modules` regex sees."""
        return iter(self.weights)

    def layer_params(self) -> int:
        """Parameters of one decoder layer (the unit ZeRO-3/FSDP gathers at a time)."""
        return sum(m.numel for m in self.weights if m.name.startswith(f"{self.family.decoder}.layers.0."))


def meta_weights(config: Any, family: ModelFamily) -> Iterator[Module]:
    """The weights of the model `config` describes, built on the meta device: linears and convolutions with
    their fan-in and fan-out, other modules with the parameters they hold directly. A tied LM head counts
    no parameters of its own but still multiplies."""
    import torch
    from transformers import AutoModelForImageTextToText

    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    seen: set[int] = set()
    for name, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False) if id(p) not in seen]
        seen.update(id(p) for p in own)
        numel = sum(p.numel() for p in own)
        part = family.part_of(name)
        if isinstance(module, torch.nn.Linear):
            yield Module(name, numel, part, module.in_features, module.out_features, True)
        elif isinstance(module, torch.nn.modules.conv._ConvNd):
            fan_in = module.in_channels // module.groups * math.prod(module.kernel_size)
            yield Module(name, numel, part, fan_in, module.out_channels)
        elif numel:
            yield Module(name, numel, part)


@dataclass(frozen=True)
class Setup:
    """One training stage as the planner sees it."""

    gpus: int = 1
    batch_per_gpu: int = 1  # items (pairs for DDPO) per micro-batch
    grad_accum: int = 1
    seq_len: int = 2048  # prompt (image tokens included) + answer; data.max_length is the worst case
    sequences_per_item: int = 2  # DDPO: chosen and rejected in one forward; SFT: 1
    shared_prefix: bool = False  # DDPO: each pair's image and prompt encoded once for both answers
    answers_only_logits: bool = False  # DDPO: the LM head runs on answer tokens only
    answer_len: int | None = None  # tokens per answer, if known (else the sequence less its image tokens)
    dtype: str = "bfloat16"  # the dtype the weights are loaded in
    mixed_precision: bool = True  # bf16/fp16 compute with fp32 master weights in the optimizer
    load_in_4bit: bool = False
    lora_r: int = 0  # 0: full fine-tuning
    lora_targets: str = ""
    lora_dropout: float = 0.0
    modules_to_save: tuple[str, ...] = ()
    sharding: str = "none"  # none | zero1 | zero2 | zero3
    gradient_checkpointing: bool = False
    lr: float = 0.0
    steps: int | None = None

    @property
    def global_batch(self) -> int:
        return self.gpus * self.batch_per_gpu * self.grad_accum

    @classmethod
    def from_config(cls, cfg: Config, family: ModelFamily, stage: str = "ddpo", num_items: int | None = None) -> Setup:
        """The setup of `stage` ("ddpo" or "sft") under the run's params and accelerate config, for a model of
        `family` (whose decoder linears and projector LoRA targets and saves unless the params say otherwise).

        The step count is `max_steps`, or computed from `epochs` when `num_items` (pairs, for DDPO) is given.
        """
        from rlhfv_nb.pair_logps import MASKED_ATTENTION  # torch: imported when a setup is made, not with the planner

        train = cfg.ddpo if stage == "ddpo" else cfg.sft
        sharding, accelerate_precision = read_accelerate_config(cfg.launch.accelerate_config)
        lora = cfg.model.lora
        targets, saved = lora_modules(family, lora)
        steps = train.max_steps if train.max_steps > 0 else None
        if steps is None and num_items:
            batches = math.ceil(num_items / (train.batch_size * cfg.launch.num_processes))
            steps = math.ceil(train.epochs * math.ceil(batches / train.grad_accum))
        return cls(
            gpus=cfg.launch.num_processes,
            batch_per_gpu=train.batch_size,
            grad_accum=train.grad_accum,
            seq_len=cfg.data.max_length,
            sequences_per_item=2 if stage == "ddpo" else 1,
            shared_prefix=(stage == "ddpo" and cfg.ddpo.share_prefix
                           and cfg.model.attn_implementation in MASKED_ATTENTION),
            answers_only_logits=stage == "ddpo",
            dtype=cfg.model.dtype,
            mixed_precision=train.bf16 or accelerate_precision in ("bf16", "fp16"),
            load_in_4bit=cfg.model.load_in_4bit,
            lora_r=lora.r if lora.enabled else 0,
            lora_targets=targets,
            lora_dropout=lora.dropout,
            modules_to_save=tuple(saved) if lora.enabled else (),
            sharding=sharding,
            gradient_checkpointing=cfg.model.gradient_checkpointing,
            lr=train.lr,
            steps=steps,
        )


def read_accelerate_config(path: str | None) -> tuple[str, str | None]:
    """(sharding, mixed precision) of an accelerate config file; ("none", None) without one."""
    if not path:
        return "none", None
    values = yaml.safe_load((project_root() / Path(path).expanduser()).read_text()) or {}
    kind = values.get("distributed_type", "NO")
    if kind == "DEEPSPEED":
        stage = int(values.get("deepspeed_config", {}).get("zero_stage", 0))
        sharding = f"zero{stage}" if stage else "none"
    elif kind == "FSDP":
        fsdp = values.get("fsdp_config", {})
        strategy = str(fsdp.get("fsdp_sharding_strategy", "FULL_SHARD"))
        if "fsdp_reshard_after_forward" in fsdp:  # FSDP2 names the strategy by this flag
            strategy = "FULL_SHARD" if fsdp["fsdp_reshard_after_forward"] else "SHARD_GRAD_OP"
        sharding = {"FULL_SHARD": "zero3", "1": "zero3", "HYBRID_SHARD": "zero3", "SHARD_GRAD_OP": "zero2",
                    "2": "zero2"}.get(strategy, "none")
    else:
        sharding = "none"
    return sharding, values.get("mixed_precision")


@dataclass
class Plan:
    """Per-GPU memory (bytes), compute per optimizer step and warnings for one setup."""

    setup: Setup
    gpu_memory_gb: float
    params: dict[str, int]
    memory: dict[str, float]
    flops_per_step: float
    tokens_per_step: int
    step_seconds: float
    warnings: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> float:
        return sum(self.memory.values())

    @property
    def fits(self) -> bool:
        return self.total_bytes <= self.gpu_memory_gb * GIB

    @property
    def total_hours(self) -> float | None:
        return None if self.setup.steps is None else self.setup.steps * self.step_seconds / 3600

    def to_rows(self) -> list[dict[str, str]]:
        """A table (item, value, note) for display."""
        s = self.setup
        rows = [
            ("parameters", f"{self.params['total'] / 1e9:.3f} B", f"{self.params['quantized'] / 1e9:.3f} B in 4-bit"),
            ("trainable parameters", f"{self.params['trainable'] / 1e6:.1f} M",
             f"LoRA r={s.lora_r}: {self.params['lora'] / 1e6:.1f} M" if s.lora_r else "full fine-tuning"),
            *((f"memory: {name}", f"{value / GIB:.2f} GiB", "per GPU") for name, value in self.memory.items() if value),
            ("memory: total", f"{self.total_bytes / GIB:.2f} GiB", f"{self.gpu_memory_gb:g} GiB available"),
            ("tokens per step", f"{self.tokens_per_step:,}",
             f"{s.global_batch} items x (prompt once + {s.sequences_per_item} answers), up to {s.seq_len} tokens "
             "each" if s.shared_prefix else
             f"{s.global_batch} items x {s.sequences_per_item} sequences x {s.seq_len} tokens"),
            ("FLOPs per step", f"{self.flops_per_step:.3g}", f"{s.gpus} GPU(s), sharding {s.sharding}"),
            ("seconds per step", f"{self.step_seconds:.2f}", "at the assumed peak TFLOP/s and utilisation"),
        ]
        if self.total_hours is not None:
            rows.append(("hours in total", f"{self.total_hours:.2f}", f"{s.steps} steps"))
        return [{"item": item, "value": value, "note": note} for item, value, note in rows]


def item_tokens(shape: ModelShape, setup: Setup) -> dict[str, int]:
    """Tokens one item (an SFT example, a DDPO pair) puts through each part, and the positions the LM head runs on.

    A shared prefix puts one image through the vision tower and projector, and the prompt once plus every answer
    through the decoder; unshared, each answer's sequence carries its own image and prompt.
    """
    answers = setup.sequences_per_item
    answer = setup.answer_len if setup.answer_len is not None else max(setup.seq_len - shape.image_tokens, 0)
    images = 1 if setup.shared_prefix else answers
    language = (setup.seq_len - answer + answers * answer) if setup.shared_prefix else answers * setup.seq_len
    return {"vision": images * shape.vision_tokens, "projector": images * shape.image_tokens, "language": language,
            "logits": answers * answer if setup.answers_only_logits else answers * setup.seq_len}


def estimate(shape: ModelShape, setup: Setup, gpu_memory_gb: float, peak_tflops: float = 312.0,
             utilisation: float = 0.4) -> Plan:
    """Memory per GPU and compute per step of `setup` on a model of `shape`.

    `peak_tflops` defaults to an A100's dense bf16 peak; `utilisation` is the assumed model FLOPs utilisation.
    """
    modules = list(shape.modules())
    warnings = []
    lora_hits = [m for m in modules if setup.lora_r and m.linear and re.fullmatch(setup.lora_targets, m.name)]
    lora_params = {part: sum(setup.lora_r * (m.fan_in + m.fan_out) for m in lora_hits if m.part == part)
                   for part in PARTS}
    saved = [m for m in modules if any(inside(m.name, target) for target in setup.modules_to_save)]
    skipped = shape.family.quant_skip_modules
    quantized = [m for m in modules if setup.load_in_4bit and m.linear and m.numel
                 and not any(m.name == skip or m.name.startswith(skip + ".") for skip in skipped)]
    total = sum(m.numel for m in modules)
    if setup.lora_r:
        trainable = {part: lora_params[part] + sum(m.numel for m in saved if m.part == part) for part in PARTS}
    else:
        trainable = {part: sum(m.numel for m in modules if m.part == part) for part in PARTS}
    n_trainable = sum(trainable.values())

    weight_bytes = BYTES[setup.dtype]
    if setup.lora_r:
        q_numel = sum(m.numel for m in quantized)
        frozen_bytes = 4 if setup.load_in_4bit else weight_bytes  # peft upcasts unquantised weights for k-bit
        weights = q_numel * NF4_BYTES + (total - q_numel) * frozen_bytes + 4 * n_trainable
        grads, optimizer = 4 * n_trainable, 8 * n_trainable
    elif setup.mixed_precision:
        weights, grads, optimizer = 2 * total, 2 * total, 12 * total
    else:
        weights, grads, optimizer = weight_bytes * total, weight_bytes * total, 2 * weight_bytes * total
    stage = int(setup.sharding[-1]) if setup.sharding.startswith("zero") else 0
    weights /= setup.gpus if stage >= 3 else 1
    grads /= setup.gpus if stage >= 2 else 1
    optimizer /= setup.gpus if stage >= 1 else 1

    activation_bytes = 4 if setup.load_in_4bit or (setup.dtype == "float32" and not setup.mixed_precision) else 2
    per_item = item_tokens(shape, setup)
    flows = {part: any(trainable[p] for p in PARTS[: PARTS.index(part) + 1]) for part in PARTS}

    def lora_extra(part: str) -> int:  # per token and layer: the r-dim intermediate (+ dropout copy of the input)
        layer0 = [m for m in lora_hits if m.part == part and ".layers.0." in m.name]
        return sum(setup.lora_r + (m.fan_in if setup.lora_dropout > 0 else 0) for m in layer0)

    kv = shape.kv_heads * shape.head_dim
    per_layer = {
        "language": 7 * shape.hidden + 3 * kv + 4 * shape.intermediate + lora_extra("language"),
        "vision": 7 * shape.vision_hidden + 2 * shape.vision_intermediate + lora_extra("vision"),
    }
    layer_input = {"language": shape.hidden, "vision": shape.vision_hidden}
    tokens = {part: setup.batch_per_gpu * count for part, count in per_item.items()}
    layers = {"language": shape.layers, "vision": shape.vision_layers}
    values = 0
    for part in ("language", "vision"):
        if not flows[part]:
            continue  # nothing upstream needs a gradient: autograd keeps no activations
        if setup.gradient_checkpointing:
            values += tokens[part] * (layers[part] * layer_input[part] + per_layer[part])
        else:
            values += tokens[part] * layers[part] * per_layer[part]
    memory = {
        "weights": weights,
        "gradients": grads,
        "optimizer states": optimizer,
        "activations": values * activation_bytes,
        "logits": tokens["logits"] * shape.vocab * (activation_bytes + 8),
        "sharding buffers": 2 * shape.layer_params() * 2 if stage >= 3 else 0,
        "CUDA context and workspace": CUDA_OVERHEAD,
    }

    step_tokens = {part: setup.global_batch * count for part, count in per_item.items()}

    def passes(part: str, matmul: int, trained: int) -> int:  # FLOPs per token: forward, backward, recompute
        out = 2 * matmul
        if flows[part]:
            out += 2 * matmul + 2 * trained + (2 * matmul if setup.gradient_checkpointing else 0)
        return out

    flops = 0.0
    for part in PARTS:
        matmul = sum(m.matmul_params for m in modules if m.part == part) + lora_params[part]
        trained = matmul if not setup.lora_r else lora_params[part] + sum(
            m.matmul_params for m in saved if m.part == part)
        flops += passes(part, matmul, trained) * step_tokens[part]
    # the LM head runs on the logit positions only (all of them unless `answers_only_logits`)
    head = sum(m.matmul_params for m in modules if m.name == "lm_head")
    head_trained = head if not setup.lora_r or "lm_head" in setup.modules_to_save else 0
    flops -= passes("language", head, head_trained) * (step_tokens["language"] - step_tokens["logits"])
    step_seconds = flops / (setup.gpus * peak_tflops * 1e12 * utilisation)

    needed = sum(memory.values())
    if needed > gpu_memory_gb * GIB:
        warnings.append(f"does not fit: {needed / GIB:.1f} GiB needed per GPU, {gpu_memory_gb:g} GiB available")
    elif needed > 0.9 * gpu_memory_gb * GIB:
        warnings.append(f"tight: {needed / GIB:.1f} of {gpu_memory_gb:g} GiB per GPU; fragmentation may push it over")
    if setup.lora_r and not lora_hits:
        warnings.append(f"LoRA target_modules {setup.lora_targets!r} match no linear layer")
    vision_hits = [m.name for m in lora_hits if m.part == "vision"]
    if vision_hits:
        warnings.append(f"LoRA target_modules hit {len(vision_hits)} vision-tower layers (e.g. {vision_hits[0]}); "
                        f"anchor the regex on the decoder, {shape.family.decoder!r}")
    if not setup.lora_r and not setup.mixed_precision and setup.dtype != "float32":
        warnings.append(f"weights and Adam states in {setup.dtype} without an fp32 master copy: updates below "
                        f"~1/256 of a weight are lost (lr {setup.lr:g}); load float32 weights and set bf16: true")
    return Plan(
        setup=setup,
        gpu_memory_gb=gpu_memory_gb,
        params={"total": total, "trainable": n_trainable, "lora": sum(lora_params.values()),
                "quantized": sum(m.numel for m in quantized)},
        memory=memory,
        flops_per_step=flops,
        tokens_per_step=step_tokens["language"],
        step_seconds=step_seconds,
        warnings=warnings,
    )


def plan(cfg: Config, gpu_memory_gb: float, model_config: Any = None, stage: str = "ddpo",
         num_items: int | None = None, peak_tflops: float = 312.0, utilisation: float = 0.4) -> Plan:
    """The estimate for a run's `stage`; the model's config is read from `cfg.model.base` unless given.

    `model_config`: a transformers config, its dict, or a path to `config.json`. GPU memory is in GiB,
    as cards are quoted (a "24 GB" card has 24 GiB). `num_items`: training pairs, for the total time.
    """
    shape = ModelShape.from_config(model_config if model_config is not None else cfg.model.base, cfg.model.family)
    setup = Setup.from_config(cfg, shape.family, stage, num_items)
    return estimate(shape, setup, gpu_memory_gb, peak_tflops, utilisation)


def check_hardware(cfg: Config) -> str:
    """Fail fast when the params need CUDA GPUs this machine lacks; returns a one-line description of the GPUs.

    Call it before loading anything: a 7B run on a CPU machine would otherwise spend minutes downloading
    and loading before failing.
    """
    import torch

    if not torch.cuda.is_available():
        if cfg.launch.require_cuda:
            raise HardwareError(
                f"params {cfg.name!r} need a CUDA GPU (launch.require_cuda: true), but torch "
                f"{torch.__version__} sees none (torch.cuda.is_available() is False). Run on a GPU machine with "
                "the CUDA build (environment.yml or the Dockerfile), or use params/cpu-tiny.yaml here."
            )
        return "CPU only"
    count = torch.cuda.device_count()
    if "LOCAL_WORLD_SIZE" in os.environ:  # inside a launched process: accelerate already placed the processes
        per_machine, where = int(os.environ["LOCAL_WORLD_SIZE"]), "this machine's launch"
    else:
        machines = 1
        if cfg.launch.accelerate_config:
            config = yaml.safe_load((project_root() / cfg.launch.accelerate_config).read_text()) or {}
            machines = int(config.get("num_machines", 1))
        per_machine = -(-cfg.launch.num_processes // machines)
        where = f"params {cfg.name!r} ({cfg.launch.num_processes} processes on {machines} machine(s))"
    if per_machine > count:
        raise HardwareError(
            f"{where} start(s) {per_machine} processes per machine, but this machine has {count} GPU(s); lower "
            "launch.num_processes or set num_machines in the accelerate config (and launch on every machine)"
        )
    props = torch.cuda.get_device_properties(0)
    return f"{count} x {props.name} ({props.total_memory / GIB:.1f} GiB)"
