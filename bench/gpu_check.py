"""GPU check: 7B-shaped LLaVA-1.5 and Qwen2.5-VL through rlhfv_nb's reference pass and DDPO, measured beside the
planner's prediction.

    python -m bench.gpu_check --size 7b            # one H200: ~4-6 min expected, stopped at --max-minutes (7.5)
    python -m bench.gpu_check --size 7b --dry-run  # any machine, ~10 s: configs, processors, data, planner only
    python -m bench.gpu_check --size tiny          # CPU, ~10 s: the same code at a toy width (CI)

Writes `bench/results/gpu_check-<size>-<device>.json` and `.md` (`--out` elsewhere) after every phase, so a run
stopped from outside keeps what it measured. Exit status 1 when a phase failed (its error and traceback are in
the JSON; the other phases still run).

Models: the configs of `llava-hf/llava-1.5-7b-hf` (CLIP ViT-L/14-336 + Llama-2-7B, 7.06 B parameters) and
`Qwen/Qwen2.5-VL-7B-Instruct` (8.29 B) with random weights, no download. Processors are the families' real classes
(LLaVA: CLIP 336 px, 576 image tokens; Qwen: 448 x 448 px, 256 merged tokens) around a small BPE trained here
(token ids are real but few; the LM heads keep their 32,064 and 152,064 rows). Data: synthetic images with a
question and a ~135-token description; the rejected answer names a wrong object in a few sentences, so DDPO's
dense weights (gamma 5) fall on a few changed tokens.

Random weights, fast and honest: the model is built with the GPU as the default device (`with
torch.device("cuda")`: the classes' own initialisation runs as GPU kernels, seconds for 7B, where a CPU init
takes minutes) in bfloat16 and saved once, from the GPU, with safetensors, into one folder with the processor.
Every phase then reads that folder through `rlhfv_nb.modeling.load_model`/`load_processor` like a hub
checkpoint. The save is needed anyway: QLoRA must go through the real 4-bit path, which quantises weights as it
reads them from a folder; reading the same folder for bf16 keeps every phase on rlhfv_nb's loading code.
Writing 14-17 GB should take ~10-20 s on an H200 host (device-to-host copies plus a write to /dev/shm, or to the
page cache, which 128 GiB of RAM holds: no disk wait either way); each load back ~5-15 s. The folder goes to
/dev/shm when it has room for a checkpoint and a trained copy (~2.2x the bf16 weights), else to the temp
folder, else the script stops before building anything.

Steps for one model (LLaVA, then Qwen), with what they should take on one H200:

    build   config + processor + random bf16 weights, saved          ~15-30 s
    full    load_model (bf16)                                         ~5-15 s
            reference pass: reference_logps, 32 pairs, batch 8       ~3-5 s (after one untimed warm-up batch)
            the same pass, one row per answer (no shared prefix)     ~4-8 s: the shared prefix's speed-up
            train_ddpo: 4 full-fine-tuning steps, pure bf16          ~8-15 s, then its final save ~10-20 s
    qlora   load_model (4-bit NF4, quantised while loading)           ~15-40 s
            reference pass with the 4-bit model                       ~3-6 s
            train_ddpo: 4 QLoRA steps (LoRA r 16 + projector)         ~10-20 s

Each group is skipped, with a note, when the time left is shorter than the same group took on the previous
model (scaled by parameters); a timer (SIGALRM) aborts whatever runs at --max-minutes less 15 s, and the results
so far are written. Memory is freed between groups (the model dropped, gc, `empty_cache`; what stays allocated
is recorded).

How it is run and measured:
- DDPO is `rlhfv_nb.pipeline.ddpo_dataset` + `rlhfv_nb.train.train_ddpo` (HF Trainer, `max_steps` 4, `save_steps`
  0, gradient checkpointing, AdamW, bf16 autocast); it saves the trained model at its end, timed apart (`save_s`).
  Step times are when the trainer's own per-step log records (`logging_steps` 1, written after a `.item()`, i.e.
  once the GPU finished the step) appear in its `log.jsonl`; the first step (optimizer states allocated,
  warm-up) is left out of the median. Host-side collation of one batch (`collate_s`, part of every step: the
  package's dataloader has no workers by default) is timed on its own.
- "Full bf16" is pure bf16: weights, gradients and AdamW states in bfloat16, no fp32 master copy (with one,
  Qwen's 8.3 B x 16 bytes would not fit 141 GB). The planner is told so (`mixed_precision=False`: 8 bytes a
  parameter); `Setup.from_config` would say `mixed_precision=True` for these params, which is recorded.
- tokens/s counts real tokens: prompt (image tokens included) + answer, chosen and rejected, no padding.
- Peak memory: `torch.cuda.max_memory_allocated`, reset before each phase (so a DDPO phase's peak includes the
  loaded weights); on CPU the peak RSS above the post-import baseline, sampled every 20 ms. It is compared with
  the planner's total less its 1 GiB CUDA-context allowance, which `max_memory_allocated` does not see.
- Predictions: `rlhfv_nb.planner.estimate` with the same `Setup` as run (1 GPU, the batch, `seq_len` = the longest
  real pair, LoRA / 4-bit / checkpointing / precision as run; for a reference pass nothing trainable, i.e.
  forward only), the device's memory, its peak and the planner's default 40% utilisation for step time. The 4-bit
  reference pass runs before peft's k-bit preparation, so its unquantised weights are still bf16 where the
  planner (modelling training) counts them in fp32: expect its memory ratio below 1.
- MFU = the planner's FLOPs per token for the same setup x measured real tokens/s / the dense bf16 peak (H100 and
  H200 989 TFLOP/s, A100 312; `--peak-tflops` overrides; on CPU a nominal 0.1 TFLOP/s a thread, only so CI sees
  finite numbers). Taking the FLOPs from the planner keeps MFU and the planned step time comparable. The planner
  has no freeze_vision, so in full fine-tuning it also counts the frozen vision encoder's backward (LLaVA +2.6%
  FLOPs, Qwen +14%); "MFU, vision frozen" uses the planner's FLOPs for the run as done.
"""

from __future__ import annotations

import time

IMPORT_START = time.perf_counter()

import argparse  # noqa: E402
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import functools  # noqa: E402
import gc  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # dataloader workers fork after the tokenizer ran

import torch  # noqa: E402
import transformers as tf  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402
from transformers.utils import is_torchvision_available  # noqa: E402

from bench.common import RESULTS, _Sampler, markdown_table, recorded_args, rss_mib  # noqa: E402
from rlhfv_nb.config import Config, ModelConfig, load_config  # noqa: E402
from rlhfv_nb.data import encode_image  # noqa: E402
from rlhfv_nb.features import PairCollator, prompt_length, response_ids  # noqa: E402
from rlhfv_nb.files import write_json  # noqa: E402
from rlhfv_nb.layout import TrainingFolder  # noqa: E402
from rlhfv_nb.logps import reference_logps  # noqa: E402
from rlhfv_nb.modeling import TINY_CHAT_TEMPLATE, load_model, load_processor, train_tokenizer  # noqa: E402
from rlhfv_nb.pair_logps import shares_prefix  # noqa: E402
from rlhfv_nb.pipeline import ddpo_dataset  # noqa: E402
from rlhfv_nb.planner import CUDA_OVERHEAD, GIB, ModelShape, Plan, Setup, estimate  # noqa: E402
from rlhfv_nb.processing import without_video  # noqa: E402
from rlhfv_nb.train import read_log, train_ddpo  # noqa: E402

# Dense bf16 peak TFLOP/s by GPU name (SXM parts); MFU divides by this.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0}
CPU_TFLOPS_PER_THREAD = 0.1  # nominal, for CI: a CPU has no meaningful "bf16 dense peak" here
H200_GIB = 140.4  # 143,771 MiB as nvidia-smi reports it
UTILISATION = 0.4  # the planner's assumed MFU for its step-time prediction (its default)
WRITE_MARGIN_S = 15.0  # kept back from --max-minutes for freeing memory, writing results and removing the work folder
NOTHING = r"(?!)"  # a LoRA target regex that matches no module: the planner's forward-only (nothing trained) case


@dataclass(frozen=True)
class Size:
    """Run knobs of one size: pairs, batch (pairs per step), optimizer steps, answer length, tokenizer size."""

    name: str
    pairs: int
    batch: int
    steps: int
    sentences: int  # per answer, ~11 tokens each
    bpe_vocab: int
    lora_r: int = 16


SIZES = {
    # 32 pairs = batch x steps: one epoch, each pair trained on once; ~16k (LLaVA) / ~9k (Qwen) tokens a step
    "7b": Size("7b", pairs=32, batch=8, steps=4, sentences=14, bpe_vocab=2000),
    "tiny": Size("tiny", pairs=4, batch=2, steps=2, sentences=3, bpe_vocab=400, lora_r=4),
}

# Hub configs: llava-hf/llava-1.5-7b-hf (CLIP ViT-L/14-336 + Vicuna/Llama-2-7B), Qwen/Qwen2.5-VL-7B-Instruct.
LLAVA_VISION = {
    "7b": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=336,
               patch_size=14, projection_dim=768, hidden_act="quick_gelu", layer_norm_eps=1e-5),
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=28,
                 patch_size=14, projection_dim=32),
}
LLAVA_TEXT = {
    "7b": dict(vocab_size=32064, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
               num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5),
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=2, max_position_embeddings=512),
}
QWEN_VISION = {
    "7b": dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584, patch_size=14,
               spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[7, 15, 23, 31],
               tokens_per_second=2),
    "tiny": dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=14,
                 spatial_merge_size=2, temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1]),
}
QWEN_TEXT = {
    "7b": dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
               num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=128000, rms_norm_eps=1e-6,
               use_sliding_window=False, sliding_window=32768, max_window_layers=28,
               rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}),
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=1, max_position_embeddings=512,
                 rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [4, 6, 6]}),
}
IMAGE_SIDE = {("llava", "7b"): 336, ("llava", "tiny"): 28, ("qwen2_5_vl", "7b"): 448, ("qwen2_5_vl", "tiny"): 56}

QWEN_TOKENS = {"eos": "<|im_end|>", "pad": "<|endoftext|>", "image": "<|image_pad|>", "video": "<|video_pad|>",
               "vision_start": "<|vision_start|>", "vision_end": "<|vision_end|>", "start": "<|im_start|>"}
# Qwen2.5-VL-Instruct's conversation format (ChatML, default system prompt), images only.
QWEN_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system{{ '\n' }}You are a helpful assistant.<|im_end|>"
    "{{ '\n' }}{% endif %}{% for message in messages %}<|im_start|>{{ message['role'] }}{{ '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>{{ '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant{{ '\n' }}{% endif %}"
)

OBJECTS = ("cup", "ball", "book", "lamp", "chair", "clock", "plant", "bottle", "phone", "shoe", "hat", "kite")
COLOURS = ("red", "green", "blue", "yellow", "white", "black", "orange", "purple")
PLACES = ("near the top left corner", "near the top right corner", "in the middle", "at the bottom",
          "next to the window", "on the table", "under the chair", "beside the door")
QUESTIONS = ("Describe the image in detail.", "What can you see in this picture?",
             "Give a detailed description of the scene.")


class TimeLimit(BaseException):  # noqa: N818  (BaseException: no library's `except Exception` swallows it)
    """Raised by the timer when --max-minutes is reached."""


# ---------------------------------------------------------------- models, processors, data


def qwen_tokenizer(texts: list[str], vocab_size: int) -> tf.PreTrainedTokenizerFast:
    """A byte-level BPE trained on `texts` with Qwen2.5-VL's special tokens and chat template (no BOS)."""
    specials = list(QWEN_TOKENS.values())
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(texts, trainer=trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = tf.PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=QWEN_TOKENS["eos"],
                                           pad_token=QWEN_TOKENS["pad"], additional_special_tokens=specials[2:])
    tokenizer.chat_template = QWEN_TEMPLATE
    return tokenizer


def llava_checkpoint(size: str, texts: list[str], vocab: int) -> tuple[tf.PretrainedConfig, tf.ProcessorMixin]:
    """LLaVA-1.5: `LlavaProcessor` (CLIP image processor, LLaVA's template) and `LlavaConfig`."""
    tokenizer = train_tokenizer(texts, vocab)
    side, patch = LLAVA_VISION[size]["image_size"], LLAVA_VISION[size]["patch_size"]
    image_processor = tf.CLIPImageProcessorPil(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    processor = tf.LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch,
                                  vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                  chat_template=TINY_CHAT_TEMPLATE)
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    config = tf.LlavaConfig(
        vision_config=tf.CLIPVisionConfig(**LLAVA_VISION[size]),
        text_config=tf.LlamaConfig(**LLAVA_TEXT[size], **ids, tie_word_embeddings=False),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"), image_seq_length=(side // patch) ** 2,
        vision_feature_layer=-2, vision_feature_select_strategy="default", projector_hidden_act="gelu",
        tie_word_embeddings=False,
    )
    return config, processor


def qwen_checkpoint(size: str, texts: list[str], vocab: int) -> tuple[tf.PretrainedConfig, tf.ProcessorMixin]:
    """Qwen2.5-VL: its processor (without its video processor where torchvision is missing) and config."""
    tokenizer = qwen_tokenizer(texts, vocab)
    vision = QWEN_VISION[size]
    image_processor = tf.Qwen2VLImageProcessorPil(
        size={"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 16384}, patch_size=vision["patch_size"],
        temporal_patch_size=vision["temporal_patch_size"], merge_size=vision["spatial_merge_size"])
    kwargs = dict(image_processor=image_processor, tokenizer=tokenizer, chat_template=QWEN_TEMPLATE)
    if is_torchvision_available():
        processor = tf.Qwen2_5_VLProcessor(video_processor=tf.Qwen2VLVideoProcessor(), **kwargs)
    else:
        processor = without_video(tf.Qwen2_5_VLProcessor)(video_processor=None, **kwargs)
        processor.video_processor_dict = {"video_processor_type": "Qwen2VLVideoProcessor"}
    token_id = tokenizer.convert_tokens_to_ids
    text = {**QWEN_TEXT[size], "bos_token_id": None, "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id}
    config = tf.Qwen2_5_VLConfig(
        text_config=text, vision_config=vision, image_token_id=token_id(QWEN_TOKENS["image"]),
        video_token_id=token_id(QWEN_TOKENS["video"]), vision_start_token_id=token_id(QWEN_TOKENS["vision_start"]),
        vision_end_token_id=token_id(QWEN_TOKENS["vision_end"]), tie_word_embeddings=False)
    return config, processor


@dataclass(frozen=True)
class Family:
    key: str  # transformers model_type, rlhfv_nb.families key
    label: str
    build: Callable[[str, list[str], int], tuple[tf.PretrainedConfig, tf.ProcessorMixin]]


FAMILIES = {
    "llava": Family("llava", "LLaVA-1.5-7B", llava_checkpoint),
    "qwen2_5_vl": Family("qwen2_5_vl", "Qwen2.5-VL-7B-Instruct", qwen_checkpoint),
}


def synthetic_pairs(count: int, sentences: int, side: int, seed: int = 0) -> list[dict[str, Any]]:
    """Image + question + chosen/rejected descriptions; the rejected one names a wrong object in a few sentences."""
    rng = random.Random(seed)
    rows = []
    for index in range(count):
        items = [(rng.choice(COLOURS), rng.choice(OBJECTS), rng.choice(PLACES)) for _ in range(sentences)]
        wrong = set(rng.sample(range(sentences), max(1, sentences // 5)))
        swapped = [(c, rng.choice([o for o in OBJECTS if o != obj]) if i in wrong else obj, p)
                   for i, (c, obj, p) in enumerate(items)]
        image = Image.new("RGB", (side, side), "gray")
        draw = ImageDraw.Draw(image)
        for colour, _, _ in items:
            x, y = rng.randrange(side), rng.randrange(side)
            draw.rectangle([x, y, x + side // 6, y + side // 6], fill=colour)
        rows.append({"uid": f"pair-{index}", "image": encode_image(image), "question": rng.choice(QUESTIONS),
                     "chosen": " ".join(f"There is a {c} {o} {p}." for c, o, p in items),
                     "rejected": " ".join(f"There is a {c} {o} {p}." for c, o, p in swapped)})
    return rows


def tokenised(processor: tf.ProcessorMixin, pairs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict]:
    """Rows as the reference pass and DDPO take them, and their token counts (image tokens included)."""
    rows, real, longest, prompts, answers = [], [], 0, [], []
    for pair in pairs:
        chosen = response_ids(processor, pair["question"], pair["chosen"])
        rejected = response_ids(processor, pair["question"], pair["rejected"])
        prompt = prompt_length(processor, pair["question"], pair["image"])
        rows.append({"uid": pair["uid"], "image": pair["image"], "question": pair["question"],
                     "chosen_ids": chosen, "rejected_ids": rejected})
        real.append(2 * prompt + len(chosen) + len(rejected))
        longest = max(longest, prompt + max(len(chosen), len(rejected)))
        prompts.append(prompt)
        answers += [len(chosen), len(rejected)]
    stats = {"pairs": len(rows), "tokens_per_pair": statistics.mean(real), "tokens_total": sum(real),
             "max_length": longest, "prompt_tokens_min": min(prompts), "prompt_tokens_max": max(prompts),
             "answer_tokens_min": min(answers), "answer_tokens_max": max(answers)}
    return rows, stats


def save_random_weights(config: tf.PretrainedConfig, folder: Path, device: torch.device, dtype: torch.dtype) -> None:
    """Random weights initialised by the model class itself, built directly on `device`, saved to `folder`."""
    torch.manual_seed(0)
    with torch.device(device):
        model = tf.AutoModelForImageTextToText.from_config(config, dtype=dtype)
    model.save_pretrained(folder)
    del model
    free(device)


# ---------------------------------------------------------------- measuring


def timed(fn: Callable[[], Any]) -> float:
    """Seconds `fn()` takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@dataclass
class Clock:
    """Seconds since the script started, and the --max-minutes deadline (a SIGALRM timer raising `TimeLimit`)."""

    start: float
    limit_s: float
    previous: Any = None  # the SIGALRM handler before `arm`

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.limit_s - WRITE_MARGIN_S - self.elapsed()

    def arm(self) -> bool:
        """Start the timer (main thread only); False where signals cannot be used."""
        if threading.current_thread() is not threading.main_thread():
            return False

        def expire(signum: int, frame: Any) -> None:
            raise TimeLimit(f"--max-minutes {self.limit_s / 60:g} reached")

        self.previous = signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, max(self.left(), 0.001))
        return True

    def disarm(self) -> None:
        """Stop the timer and put the previous handler back."""
        if self.previous is not None:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.previous)
            self.previous = None


@contextlib.contextmanager
def measured(device: torch.device, baseline_mib: float) -> Iterator[dict[str, Any]]:
    """Wall time and peak memory of the block: CUDA peak allocated (reset first), or sampled RSS above baseline."""
    out: dict[str, Any] = {}
    sampler = None
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        sampler = _Sampler(os.getpid())
        sampler.start()
    start = time.perf_counter()
    try:
        yield out
    finally:
        if device.type == "cuda":
            torch.cuda.synchronize()
            out["peak_memory_gib"] = torch.cuda.max_memory_allocated() / GIB
            out["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / GIB
        else:
            out["peak_memory_gib"] = max(sampler.stop(), rss_mib()) / 1024 - baseline_mib / 1024
        out["wall_s"] = time.perf_counter() - start


class LogTimes(threading.Thread):
    """When train_ddpo's JSONL log appears (its `on_train_begin` creates it) and when each record is added to it."""

    def __init__(self, path: Path, interval: float = 0.005):
        super().__init__(daemon=True)
        self.path, self.interval = path, interval
        self.begin: float | None = None
        self.times: list[float] = []  # one per complete line, when it was first seen
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self._poll()
            time.sleep(self.interval)

    def _poll(self) -> None:
        try:
            lines = self.path.read_bytes().count(b"\n")  # a few kB at most
        except FileNotFoundError:
            return
        now = time.perf_counter()
        if self.begin is None:
            self.begin = now
        self.times += [now] * (lines - len(self.times))

    def stop(self) -> None:
        self._stop_event.set()
        self.join()
        self._poll()  # records written since the last poll


def step_times(watch: LogTimes) -> tuple[list[float], float | None]:
    """Seconds of each optimizer step (between consecutive per-step log records) and when training ended."""
    records = read_log(watch.path)
    ends = [t for t, r in zip(watch.times, records) if "loss" in r and "train_runtime" not in r]
    marks = [watch.begin, *ends] if watch.begin is not None else ends
    done = next((t for t, r in zip(watch.times, records) if "train_runtime" in r), None)
    return [b - a for a, b in zip(marks, marks[1:])], done


# ---------------------------------------------------------------- planner


def run_config(size: Size, variant: str, gpu: bool, max_length: int, workers: int) -> Config:
    """The run's params, validated by rlhfv_nb: bf16 (4-bit compute in bf16) on a GPU, float32 on CPU."""
    model: dict[str, Any] = {"dtype": "bfloat16" if gpu else "float32", "attn_implementation": "sdpa",
                             "gradient_checkpointing": True}
    if variant == "qlora":
        model.update(load_in_4bit=True, lora={"enabled": True, "r": size.lora_r, "alpha": 2 * size.lora_r,
                                              "dropout": 0.05})
    ddpo = dict(gamma=5.0, beta=0.1, use_average=False, max_steps=size.steps, batch_size=size.batch, grad_accum=1,
                lr=1e-5 if variant == "qlora" else 1e-6, scheduler="constant", warmup_ratio=0.0, weight_decay=0.0,
                logging_steps=1, save_steps=0, bf16=gpu, tf32=gpu and tf32_capable(),
                num_workers=workers, ref_batch_size=size.batch)
    return load_config({"name": f"gpu-check-{variant}", "model": model, "ddpo": ddpo,
                        "data": {"max_length": max_length}})


def tf32_capable() -> bool:
    """Ampere or newer (TrainingArguments refuses tf32 elsewhere); assumed for a dry run's H200."""
    return not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] >= 8


def setups(cfg: Config, shape: ModelShape) -> tuple[Setup, Setup, list[str]]:
    """The planner's (DDPO, reference pass) setups for the run as it is done, and where `Setup.from_config` differs."""
    ddpo = Setup.from_config(cfg, shape.family, "ddpo")
    notes = []
    if not cfg.model.lora.enabled and cfg.model.dtype != "float32" and ddpo.mixed_precision:
        ddpo = dataclasses.replace(ddpo, mixed_precision=False)
        notes.append(f"Setup.from_config says mixed_precision=True (ddpo.bf16), but weights loaded in "
                     f"{cfg.model.dtype} have no fp32 master copy (AdamW keeps its states in the weights' dtype): "
                     "the planner is given mixed_precision=False")
    # Forward only: nothing trainable (a rank-1 LoRA on no module), one reference batch per step.
    reference = dataclasses.replace(ddpo, batch_per_gpu=cfg.ddpo.ref_batch_size, grad_accum=1, lora_r=1,
                                    lora_targets=NOTHING, lora_dropout=0.0, modules_to_save=(), steps=None)
    return ddpo, reference, notes


def vision_frozen(setup: Setup, shape: ModelShape) -> Setup | None:
    """Full fine-tuning with the vision encoder frozen (as run: `freeze_vision`), in terms the planner has: every
    module outside the vision encoder trained in full ("saved") under a LoRA that adapts nothing. For FLOPs only: the
    planner's `Setup` has no freeze_vision, so for full fine-tuning it counts the encoder's backward pass too."""
    if setup.lora_r:
        return None
    family = shape.family
    return dataclasses.replace(setup, lora_r=1, lora_targets=NOTHING,
                               modules_to_save=(family.decoder, *family.projector, "lm_head"))


def vision_note(key: str, shape: ModelShape, plan: Plan, frozen: Plan) -> str:
    """How much the planner's full fine-tuning figures count for the frozen vision encoder."""
    vision = sum(m.numel for m in shape.weights if m.part == "vision")
    states = (plan.memory["gradients"] + plan.memory["optimizer states"]) * vision / plan.params["total"]
    return (f"{key}: the planner has no freeze_vision, so for full fine-tuning it counts the frozen vision encoder "
            f"({params_text(vision)} parameters) as trained: +{states / GIB:.1f} GiB of gradients and AdamW states, "
            f"+{plan.flops_per_step / frozen.flops_per_step - 1:.1%} FLOPs. 'MFU' uses the planner's FLOPs (as its "
            "step time does); 'MFU, vision frozen' those of the run as done")


def planned(plan: Plan) -> dict[str, Any]:
    """The planner's figures for one phase, memory in GiB."""
    warnings = [w for w in plan.warnings if plan.setup.lora_targets != NOTHING or "match no linear" not in w]
    return {"memory_gib": plan.total_bytes / GIB,
            "memory_gib_without_cuda_context": (plan.total_bytes - CUDA_OVERHEAD) / GIB,
            "memory_parts_gib": {name: value / GIB for name, value in plan.memory.items()},
            "step_s": plan.step_seconds, "flops_per_step": plan.flops_per_step,
            "tokens_per_step": plan.tokens_per_step, "params": plan.params, "warnings": warnings,
            "setup": dataclasses.asdict(plan.setup)}


def compare(record: dict[str, Any], plan: Plan, tokens_per_step: float, peak_tflops: float) -> None:
    """Tokens/s, MFU (the planner's FLOPs per token x real tokens/s) and measured/planned ratios, into `record`."""
    m, p = record["measured"], record["planned"]
    m["tokens_per_step"] = tokens_per_step
    m["tokens_per_s"] = tokens_per_step / m["step_s"]
    m["achieved_tflops"] = plan.flops_per_step / plan.tokens_per_step * m["tokens_per_s"] / 1e12
    m["mfu"] = m["achieved_tflops"] / peak_tflops
    m["mfu_vision_frozen"] = m["mfu"] * p.get("flops_per_step_vision_frozen", plan.flops_per_step) / plan.flops_per_step
    record["ratio"] = {"memory": m["peak_memory_gib"] / p["memory_gib_without_cuda_context"],
                       "step_time": m["step_s"] / p["step_s"]}


# ---------------------------------------------------------------- phases


@dataclass
class Context:
    """What every phase needs: device, clock, the report being filled, and what earlier groups took."""

    args: argparse.Namespace
    size: Size
    device: torch.device
    clock: Clock
    report: dict[str, Any]
    out: tuple[Path, Path]
    work: Path
    baseline_mib: float
    peak_tflops: float
    gpu_memory_gb: float
    gpu: bool  # run (or, for a dry run, plan) as on a GPU: bf16
    durations: dict[str, tuple[float, int]] = dataclasses.field(default_factory=dict)
    stopped: str | None = None

    def log(self, message: str) -> None:
        print(f"[{self.clock.elapsed():7.1f} s] {message}", flush=True)

    def expected(self, kind: str, params: int) -> float:
        """Seconds a group of `kind` took on an earlier model, scaled to `params`; 0 when none ran yet."""
        seconds, done_params = self.durations.get(kind, (0.0, 1))
        return seconds * params / done_params

    def save(self) -> None:
        self.report["elapsed_s"] = self.clock.elapsed()
        write_json(self.out[0], self.report)
        self.out[1].write_text(markdown(self.report))


PHASES = {"full": ("reference", "ddpo-full"), "qlora": ("reference-4bit", "ddpo-qlora")}


def records_of(ctx: Context, key: str, variant: str | None = None) -> list[dict[str, Any]]:
    """The phase records of family `key` (of one group, if `variant` is given), in run order."""
    return [r for r in ctx.report["phases"] if r["family"] == key and variant in (None, r["variant"])]


def attempt(ctx: Context, records: list[dict[str, Any]], what: str, fn: Callable[[], Any]) -> Any:
    """`fn()`, or None with its failure (or the time limit) recorded in every record that still waits for it."""
    import traceback

    try:
        return fn()
    except TimeLimit as err:
        ctx.stopped = str(err)
        status, note, trace = "aborted", f"{what}: {err}", None
    except Exception as err:  # one phase failing must not lose the others' results
        status, note, trace = "error", f"{what}: {type(err).__name__}: {err}"[:2000], traceback.format_exc()[-4000:]
    ctx.log(f"{note}")
    for record in records:
        if record["status"] in ("pending", "running"):
            record.update(status=status, note=note, **({"traceback": trace} if trace else {}))
    return None


def device_map(device: torch.device) -> str | dict[str, int]:
    """Where `load_model` puts the weights: straight onto the GPU (as {"": index}: Trainer sees one device)."""
    return {"": torch.cuda.current_device()} if device.type == "cuda" else "cpu"


def reference_phase(ctx: Context, model: Any, processor: Any, rows: list[dict], cfg: Config, stats: dict,
                    record: dict[str, Any], plan: Plan) -> dict[str, dict[str, list[float]]]:
    """rlhfv_nb's reference pass over every pair, after one untimed warm-up batch."""
    batch = cfg.ddpo.ref_batch_size
    folder = ctx.work / f"ref-{record['family']}-{record['phase']}"
    try:
        reference_logps(model, processor, rows[:batch], folder / "warmup.jsonl", batch, progress=False)
        shared_by = shares_prefix(model, cfg.model.family, cfg.ddpo.share_prefix)
        collate_s = timed(lambda: PairCollator(processor, shared_by)(rows[:batch]))
        with measured(ctx.device, ctx.baseline_mib) as m:
            reference = reference_logps(model, processor, rows, folder / "reference.jsonl", batch, progress=False,
                                        share_prefix=cfg.ddpo.share_prefix, family=cfg.model.family)
        # the same pass with every answer in its own row (image and prompt encoded twice per pair)
        with measured(ctx.device, ctx.baseline_mib) as unshared:
            reference_logps(model, processor, rows, folder / "unshared.jsonl", batch, progress=False,
                            share_prefix=False)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    steps = math.ceil(len(rows) / batch)
    record["measured"] = {**m, "steps": steps, "step_s": m["wall_s"] / steps, "collate_s": collate_s,
                          "unshared_step_s": unshared["wall_s"] / steps,
                          "shared_prefix_speedup": unshared["wall_s"] / m["wall_s"]}
    compare(record, plan, stats["tokens_total"] / steps, ctx.peak_tflops)
    values = [v for entry in reference.values() for side in ("chosen", "rejected") for v in entry[side]]
    record["measured"]["mean_token_logp"] = statistics.mean(values)
    return reference


def ddpo_phase(ctx: Context, model: Any, processor: Any, rows: list[dict], reference: dict, cfg: Config,
               stats: dict, record: dict[str, Any], plan: Plan) -> None:
    """`train_ddpo` for `max_steps` steps; step times from its own per-step log records."""
    pairs = ddpo_dataset(rows, reference, cfg.ddpo.gamma, cfg.ddpo.min_match)
    collator = PairCollator(processor, shares_prefix(model, cfg.model.family, cfg.ddpo.share_prefix))
    collate_s = timed(lambda: collator([pairs[i] for i in range(min(cfg.ddpo.batch_size, len(pairs)))]))
    folder = ctx.work / f"ddpo-{record['family']}-{record['phase']}"
    watch = LogTimes(TrainingFolder(folder).log)
    watch.start()
    try:
        with measured(ctx.device, ctx.baseline_mib) as m:
            try:
                train_ddpo(model, processor, pairs, cfg.ddpo, cfg.model, folder, cfg.seed)
            finally:
                returned = time.perf_counter()
                watch.stop()
        steps, trained = step_times(watch)
        log = read_log(watch.path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # the trained model train_ddpo saved (a full 7B: ~15 GB)
    if not steps:
        raise RuntimeError(f"no per-step records in train_ddpo's {watch.path.name}: cannot time the steps")
    summary = next((r for r in log if "train_runtime" in r), {})
    record["measured"] = {
        **m, "steps": len(steps), "step_times_s": steps, "step_s": statistics.median(steps[1:] or steps),
        "first_step_s": steps[0], "save_s": returned - trained if trained else None,
        "train_runtime_s": summary.get("train_runtime"), "collate_s": collate_s,
        "losses": [r["loss"] for r in log if "loss" in r and "train_runtime" not in r],
    }
    compare(record, plan, stats["tokens_per_pair"] * cfg.ddpo.batch_size, ctx.peak_tflops)


def run_group(ctx: Context, fam: dict[str, Any], variant: str) -> None:
    """Load the checkpoint as `variant` asks, run the reference pass, then DDPO; free everything after."""
    records = records_of(ctx, fam["key"], variant)
    cfg = fam["configs"][variant]
    plans = fam["plans"][variant]
    start = time.perf_counter()
    model = None
    try:
        for record in records:
            record["status"] = "running"
        with measured(ctx.device, ctx.baseline_mib) as load:
            model = attempt(ctx, records, f"load ({variant})",
                            lambda: load_model(fam["folder"], cfg.model, device_map=device_map(ctx.device)))
        if model is None:
            return
        fam["record"]["loads"][variant] = load
        ctx.log(f"{fam['key']}: loaded ({variant}) in {load['wall_s']:.1f} s")
        reference = attempt(ctx, records[:1], "reference pass", lambda: reference_phase(
            ctx, model, fam["processor"], fam["rows"], cfg, fam["stats"], records[0], plans[0]))
        if reference is None:
            return
        records[0]["status"] = "ok"
        ctx.log(f"{fam['key']}: {records[0]['phase']} {records[0]['measured']['wall_s']:.1f} s")
        ctx.save()
        done = attempt(ctx, records[1:], "DDPO", lambda: ddpo_phase(
            ctx, model, fam["processor"], fam["rows"], reference, cfg, fam["stats"], records[1], plans[1]) or True)
        if done:
            records[1]["status"] = "ok"
            ctx.log(f"{fam['key']}: {records[1]['phase']} {records[1]['measured']['wall_s']:.1f} s")
    finally:
        for record in records:
            if record["status"] in ("pending", "running"):
                record.update(status="skipped", note="an earlier step of its group did not finish")
        model = None  # the lambdas above share this variable: dropping it frees the weights
        free(ctx.device)
        if ctx.device.type == "cuda":
            left = torch.cuda.memory_allocated() / GIB
            fam["record"].setdefault("allocated_after_free_gib", {})[variant] = left
            ctx.log(f"{fam['key']}: {variant} done, {left:.2f} GiB still allocated")
        ctx.durations[variant] = (time.perf_counter() - start, fam["params"])
        ctx.save()


def skip(ctx: Context, records: list[dict[str, Any]], note: str) -> None:
    ctx.log(note)
    for record in records:
        if record["status"] == "pending":
            record.update(status="skipped", note=note)


def run_family(ctx: Context, fam: dict[str, Any]) -> None:
    """Random weights into the checkpoint folder, then the groups in order, each only if its time is left."""
    records = records_of(ctx, fam["key"])
    need = ctx.expected("build", fam["params"]) + ctx.expected(ctx.args.groups[0], fam["params"])
    if ctx.stopped or ctx.clock.left() < need:
        return skip(ctx, records, ctx.stopped or f"{fam['key']}: {ctx.clock.left():.0f} s left, "
                    f"building and its first group took ~{need:.0f} s on the previous model")
    dtype = torch.bfloat16 if ctx.gpu else torch.float32
    with measured(ctx.device, ctx.baseline_mib) as build:
        built = attempt(ctx, records, "random weights", lambda: save_random_weights(
            fam["config"], fam["folder"], ctx.device, dtype) or True)
    fam["record"]["build"] = {**build, "dtype": str(dtype).removeprefix("torch."),
                              "checkpoint_gb": sum(f.stat().st_size for f in fam["folder"].iterdir()) / 1e9}
    ctx.durations["build"] = (build["wall_s"], fam["params"])
    ctx.log(f"{fam['key']}: random weights saved in {build['wall_s']:.1f} s")
    try:
        for variant in ctx.args.groups if built else ():
            group = records_of(ctx, fam["key"], variant)
            need = ctx.expected(variant, fam["params"])
            if ctx.stopped or ctx.clock.left() < need:
                skip(ctx, group, ctx.stopped or f"{fam['key']} {variant}: {ctx.clock.left():.0f} s left, "
                     f"~{need:.0f} s needed (the previous model's time, scaled by parameters)")
                continue
            run_group(ctx, fam, variant)
    finally:
        shutil.rmtree(fam["folder"], ignore_errors=True)
        ctx.save()


# ---------------------------------------------------------------- preparation (also all of --dry-run)


def prepare(ctx: Context, key: str) -> dict[str, Any]:
    """Config and processor of family `key`, its meta-device shape and the planner's prediction for every phase."""
    family, size = FAMILIES[key], ctx.size
    side = IMAGE_SIDE[key, size.name]
    pairs = synthetic_pairs(size.pairs, size.sentences, side)
    texts = [p[k] for p in pairs for k in ("question", "chosen", "rejected")]
    config, processor = family.build(size.name, texts, size.bpe_vocab)
    shape = ModelShape.from_config(config)  # the real model class, built on the meta device
    params = sum(m.numel for m in shape.weights)
    return {"key": key, "config": config, "processor": processor, "pairs": pairs, "shape": shape, "params": params,
            "record": {"label": family.label, "params": params, "image_side": side, "loads": {},
                       "config": config.to_diff_dict()}}


def save_checkpoint(ctx: Context, fam: dict[str, Any]) -> dict[str, Any]:
    """Processor + config into the checkpoint folder; the processor is read back as the runs read it; data, plans."""
    folder = fam["folder"] = ctx.work / fam["key"]
    fam["processor"].save_pretrained(folder)
    fam["config"].save_pretrained(folder)
    fam["processor"] = load_processor(folder, ModelConfig())
    fam["rows"], fam["stats"] = tokenised(fam["processor"], fam["pairs"])
    fam["record"]["data"] = fam["stats"]
    fam["configs"] = {v: run_config(ctx.size, v, ctx.gpu, fam["stats"]["max_length"], ctx.args.workers)
                      for v in PHASES}
    fam["plans"], notes = {}, []
    for variant, cfg in fam["configs"].items():
        ddpo, reference, changed = setups(cfg, fam["shape"])
        notes += changed
        fam["plans"][variant] = [estimate(fam["shape"], s, ctx.gpu_memory_gb, ctx.peak_tflops, UTILISATION)
                                 for s in (reference, ddpo)]
        for record, plan in zip(phase_records(ctx, fam["key"], variant), fam["plans"][variant]):
            record["planned"] = planned(plan)
        frozen = vision_frozen(ddpo, fam["shape"])
        if frozen is not None and variant in ctx.args.groups:
            frozen_plan = estimate(fam["shape"], frozen, ctx.gpu_memory_gb, ctx.peak_tflops, UTILISATION)
            phase_records(ctx, fam["key"], variant)[1]["planned"]["flops_per_step_vision_frozen"] = \
                frozen_plan.flops_per_step
            notes.append(vision_note(fam["key"], fam["shape"], fam["plans"][variant][1], frozen_plan))
    fam["record"]["notes"] = notes
    ctx.report["models"][fam["key"]] = fam["record"]
    return fam


def phase_records(ctx: Context, key: str, variant: str) -> list[dict[str, Any]]:
    """The (reference, DDPO) records of one group; a throw-away pair for a group left out by --groups."""
    return records_of(ctx, key, variant) or [{}, {}]


def new_records(families: list[str], groups: list[str], gpu: bool) -> list[dict[str, Any]]:
    precision = {"full": "bfloat16" if gpu else "float32",
                 "qlora": f"NF4 + LoRA, {'bfloat16' if gpu else 'float32'} compute"}
    return [{"family": key, "variant": variant, "phase": phase, "precision": precision[variant], "status": "pending"}
            for key in families for variant in groups for phase in PHASES[variant]]


def work_root(requested: Path | None, need_bytes: float) -> Path:
    """A fresh folder for checkpoints: under `requested`, else /dev/shm (no disk) or the temp folder, with room."""
    roots = [requested] if requested else [Path("/dev/shm"), Path(tempfile.gettempdir())]
    for root in roots:
        if root.is_dir() and os.access(root, os.W_OK) and shutil.disk_usage(root).free >= need_bytes:
            return Path(tempfile.mkdtemp(prefix="gpu_check-", dir=root))
    raise SystemExit(f"gpu_check needs {need_bytes / 1e9:.1f} GB free for its checkpoints under "
                     f"{' or '.join(map(str, roots))}; pass --work-dir")


# ---------------------------------------------------------------- report


def environment(device: torch.device, peak_tflops: float, gpu_memory_gb: float, dry_run: bool = False
                ) -> dict[str, Any]:
    """Device, library versions and the figures the predictions use."""
    import importlib.metadata as meta
    import platform

    versions = {}
    for name in ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "tokenizers"):
        with contextlib.suppress(meta.PackageNotFoundError):
            versions[name] = meta.version(name)
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    return {"device": f"dry run on {name}, planned for an H200" if dry_run else name,
            "cuda": torch.version.cuda, "python": platform.python_version(), "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torchvision": is_torchvision_available(), **versions,
            "peak_tflops": peak_tflops, "gpu_memory_gib": gpu_memory_gb, "planner_utilisation": UTILISATION}


def params_text(params: int) -> str:
    return f"{params / 1e9:.3f} B" if params >= 1e8 else f"{params / 1e6:.2f} M"


def markdown(report: dict[str, Any]) -> str:
    """The results as Markdown: measured/planned ratios first, then the figures, then per-model set-up times."""
    env = report["environment"]
    header = ["model", "phase", "memory measured/planned", "step time measured/planned", "peak memory (GiB)",
              "planned (GiB)", "step (s)", "planned step (s)", "tokens/s", "MFU", "MFU, vision frozen", "pairs/step",
              "max length", "wall (s)", "shared-prefix speed-up", "status"]
    rows = []
    for r in report["phases"]:
        m, p, ratio = r.get("measured", {}), r.get("planned", {}), r.get("ratio", {})
        setup = p.get("setup", {})
        rows.append([r["family"], f"{r['phase']} ({r['precision']})", ratio.get("memory"), ratio.get("step_time"),
                     m.get("peak_memory_gib"), p.get("memory_gib_without_cuda_context"), m.get("step_s"),
                     p.get("step_s"), m.get("tokens_per_s"), m.get("mfu"), m.get("mfu_vision_frozen"),
                     setup.get("batch_per_gpu"), setup.get("seq_len"), m.get("wall_s"), m.get("shared_prefix_speedup"),
                     r["status"]])
    models = [[key, params_text(m["params"]), m.get("build", {}).get("wall_s"),
               m["loads"].get("full", {}).get("wall_s"), m["loads"].get("qlora", {}).get("wall_s"),
               m.get("data", {}).get("tokens_per_pair"), m.get("data", {}).get("max_length")]
              for key, m in report["models"].items()]
    memory = "nothing measured (dry run)" if report["dry_run"] else "torch.cuda.max_memory_allocated" \
        if torch.cuda.is_available() else "peak RSS above the post-import baseline"
    lines = [
        f"## GPU check: `--size {report['size']}` on {env['device']}",
        "",
        f"torch {env.get('torch')}, transformers {env.get('transformers')}, peft {env.get('peft')}, bitsandbytes "
        f"{env.get('bitsandbytes')}; {report['started']}; {report['elapsed_s']:.0f} s in all. Memory: {memory} vs the "
        f"planner's total without its 1 GiB CUDA allowance; step time vs the planner's at {UTILISATION:.0%} of "
        f"{env['peak_tflops']:g} TFLOP/s; MFU from the planner's FLOPs per token.",
        "",
        markdown_table(header, rows),
        "",
        markdown_table(["model", "parameters", "random weights built + saved (s)", "load bf16 (s)",
                        "load 4-bit (s)", "tokens/pair", "max length"], models),
    ]
    notes = report["notes"] + [f"{r['family']} {r['phase']}: {r['note']}" for r in report["phases"] if r.get("note")]
    notes += [n for m in report["models"].values() for n in m.get("notes", [])]
    if notes:
        lines += ["", *(f"- {n}" for n in dict.fromkeys(notes))]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="7b")
    parser.add_argument("--families", default="llava,qwen2_5_vl", help="comma-separated, run in this order")
    parser.add_argument("--groups", default="full,qlora", help="comma-separated: full (bf16), qlora; in this order")
    parser.add_argument("--max-minutes", type=float, default=7.5)
    parser.add_argument("--steps", type=int, help="optimizer steps per DDPO phase (default: the size's)")
    parser.add_argument("--batch-size", type=int, help="pairs per step and per reference batch (default: the size's)")
    parser.add_argument("--pairs", type=int, help="synthetic pairs (default: the size's)")
    parser.add_argument("--workers", type=int, default=0, help="DDPO dataloader workers (ddpo.num_workers)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: 1 without a GPU, where the tiny "
                        "model gains nothing from more and busy-waiting threads on shared cores cost 3x; else torch's)")
    parser.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak (default: by GPU name)")
    parser.add_argument("--dry-run", action="store_true", help="configs, processors, data, planner: no weights")
    parser.add_argument("--work-dir", type=Path, help="where checkpoints go (default: /dev/shm or the temp folder)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = parser.parse_args(argv)
    args.families = [f.strip() for f in args.families.split(",") if f.strip()]
    args.groups = [g.strip() for g in args.groups.split(",") if g.strip()]
    unknown = sorted(set(args.families) - set(FAMILIES)) + sorted(set(args.groups) - set(PHASES))
    if unknown or not args.families or not args.groups:
        parser.error(f"unknown or no families/groups: {unknown} (families {list(FAMILIES)}, groups {list(PHASES)})")
    return args


def bitsandbytes_missing() -> str | None:
    """Why bitsandbytes cannot be imported, or None (its 4-bit layers then run on CPU too)."""
    try:
        import bitsandbytes  # noqa: F401
    except Exception as err:  # ImportError, or a build that fails on import without CUDA
        return f"{type(err).__name__}: {err}"
    return None


def peak_tflops(device: torch.device, override: float | None, dry_run: bool) -> float:
    """Dense bf16 TFLOP/s that MFU divides by and the planner's step time assumes."""
    if override or dry_run:
        return override or PEAK_TFLOPS["H200"]
    if device.type != "cuda":
        return CPU_TFLOPS_PER_THREAD * torch.get_num_threads()
    name = torch.cuda.get_device_name(0)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), 312.0)


def device_memory_gb(device: torch.device, dry_run: bool) -> float:
    """GiB the planner checks the fit against: the GPU's, an H200's for a dry run, else the machine's RAM."""
    import psutil

    if dry_run:
        return H200_GIB
    if device.type == "cuda":
        return torch.cuda.get_device_properties(0).total_memory / GIB
    return psutil.virtual_memory().total / GIB


def main(argv: list[str] | None = None, started: float | None = None) -> dict[str, Any]:
    """Run the check; returns the report (also written as JSON and Markdown under --out)."""
    args = parse_args(argv)
    clock = Clock(started if started is not None else time.perf_counter(), args.max_minutes * 60)
    threads = torch.get_num_threads()
    if args.threads is None and not torch.cuda.is_available():
        args.threads = 1
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return run_check(args, clock)
    finally:
        torch.set_num_threads(threads)


def run_check(args: argparse.Namespace, clock: Clock) -> dict[str, Any]:
    """Prepare every family (configs, processors, data, plans), then run them in order under the clock."""
    device = torch.device("cuda" if torch.cuda.is_available() and not args.dry_run else "cpu")
    gpu = device.type == "cuda" or args.dry_run
    if args.size != "tiny" and device.type != "cuda" and not args.dry_run:
        raise SystemExit(f"--size {args.size} needs a CUDA GPU; here use --dry-run, or --size tiny")
    base = SIZES[args.size]
    size = dataclasses.replace(base, steps=args.steps or base.steps, batch=args.batch_size or base.batch,
                               pairs=args.pairs or base.pairs)
    slug = "dry-run" if args.dry_run else re.sub(r"[^a-z0-9]+", "-", environment(device, 0, 0)["device"].lower())
    out = (args.out / f"gpu_check-{size.name}-{slug}.json", args.out / f"gpu_check-{size.name}-{slug}.md")
    tflops, memory_gb = peak_tflops(device, args.peak_tflops, args.dry_run), device_memory_gb(device, args.dry_run)
    report = {"script": "bench.gpu_check", "size": size.name, "dry_run": args.dry_run, "args": recorded_args(args),
              "run": dataclasses.asdict(size), "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "environment": environment(device, tflops, memory_gb, args.dry_run), "notes": [], "models": {},
              "phases": new_records(args.families, args.groups, gpu)}
    ctx = Context(args, size, device, clock, report, out, Path(), rss_mib(), tflops, memory_gb, gpu)
    missing = None if gpu or "qlora" not in args.groups else bitsandbytes_missing()
    if missing:
        args.groups.remove("qlora")
        skip(ctx, [r for r in report["phases"] if r["variant"] == "qlora"], f"no 4-bit on this CPU: {missing}")
    ctx.log(f"gpu_check --size {size.name} on {report['environment']['device']}: preparing "
            f"{', '.join(args.families)}")
    prepared = [attempt(ctx, records_of(ctx, key), f"{key}: preparing", functools.partial(prepare, ctx, key))
                for key in args.families]  # a family that cannot be prepared is recorded; the others still run
    families = [fam for fam in prepared if fam is not None]
    bytes_per_param = 2 if gpu else 4
    need = 0 if args.dry_run else max((f["params"] for f in families), default=0) * bytes_per_param * 2.2 + 1e8
    ctx.work = work_root(args.work_dir, need)
    report["work_dir"] = str(ctx.work)
    try:
        families = [fam for fam in families if attempt(ctx, records_of(ctx, fam["key"]), f"{fam['key']}: saving",
                                                       functools.partial(save_checkpoint, ctx, fam))]
        ctx.log(f"prepared in {clock.elapsed():.1f} s; checkpoints under {ctx.work}")
        if args.dry_run:
            report["notes"].append("--dry-run: configs, processors, data and the planner only; nothing loaded")
            for record in report["phases"]:
                record["status"] = "planned only" if record["status"] == "pending" else record["status"]
            return report
        if not clock.arm():
            report["notes"].append("no timer outside the main thread: --max-minutes only skips groups")
        for fam in families if args.groups else ():
            run_family(ctx, fam)
    except TimeLimit as err:
        report["notes"].append(f"stopped: {err}")
        skip(ctx, report["phases"], f"not run: {err}")
    finally:
        clock.disarm()
        shutil.rmtree(ctx.work, ignore_errors=True)
        ctx.save()
        ctx.log(f"wrote {out[0]} and {out[1]}")
    return report


if __name__ == "__main__":
    result = main(sys.argv[1:], started=IMPORT_START)
    sys.exit(1 if any(r["status"] == "error" for r in result["phases"]) else 0)
