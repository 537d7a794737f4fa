"""Every supported model family through the path a user takes, on tiny random-weight models built offline around
the real tokenizers and public chat templates (`tests/model_zoo.py`, `tests/real_tokenizers.py`).

Each family goes through load, features, the cached reference log-probs (against a direct, unpadded forward of
the whole conversation as the family's own processor tokenises it), DDPO full and LoRA (the saved folder
reloaded), the 4-bit build, batched generation, and the planner's count of its weights.
"""

from __future__ import annotations

import functools
import logging
import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from model_zoo import FAMILIES, build_tiny
from PIL import Image
from real_tokenizers import TOKENIZER_FOR_FAMILY, chat_template, load_tokenizer
from tiny_run import CPU_TINY

from rlhfv_nb.config import ModelConfig, load_config
from rlhfv_nb.data import decode_image, encode_image
from rlhfv_nb.families import resolve_family
from rlhfv_nb.features import PairCollator, answers_as_suffix, encode_prompts, response_ids
from rlhfv_nb.generate import GenerationSettings, generate_answers
from rlhfv_nb.logps import reference_logps
from rlhfv_nb.modeling import count_parameters, load_model, load_processor
from rlhfv_nb.pair_logps import shares_prefix
from rlhfv_nb.pipeline import ddpo_dataset
from rlhfv_nb.planner import ModelShape, plan
from rlhfv_nb.train import prepare_for_training, read_log, train_ddpo

PRESETS = {"llava": "qlora-1gpu", "llava_next": "qlora-1gpu-llava-v1.6-7b",
           "llava_onevision": "qlora-1gpu-llava-onevision-7b", "qwen2_vl": "qlora-1gpu-qwen2-vl-7b",
           "qwen2_5_vl": "qlora-1gpu-qwen2.5-vl-7b", "qwen3_vl": "qlora-1gpu-qwen3-vl-8b",
           "idefics3": "qlora-1gpu-idefics3-8b", "smolvlm": "qlora-1gpu-smolvlm2-2.2b",
           "paligemma": "qlora-1gpu-paligemma2-3b", "gemma3": "qlora-1gpu-gemma3-4b",
           "mllama": "qlora-1gpu-llama3.2-vision-11b", "internvl": "qlora-1gpu-internvl3-8b"}
ANSWERS = [("Is there a dog?", "Yes", "No, there is a cat on the mat."),
           ("Describe the image.", "The dog is on the mat.", "The dog, a brown one, sits on a red mat!"),
           ("What colour is the ball in the top left corner?", "It is blue.", "Green")]


@pytest.fixture(scope="session")
def zoo(tmp_path_factory) -> Callable[..., Path]:
    """The tiny model folder of a family, built once per session with its real tokenizer and template."""
    root, built = tmp_path_factory.mktemp("zoo"), {}

    def folder(family: str, tokenizer: str | None = None, template: str | None = None) -> Path:
        """`tokenizer` and `template` name another real tokenizer and template than the family's default."""
        key = (family, tokenizer, template)
        if key not in built:
            name = tokenizer or TOKENIZER_FOR_FAMILY.get(family)
            try:
                text = chat_template(template or family)
            except KeyError:  # PaliGemma has none: its answer is the processor's suffix
                text = None
            built[key] = build_tiny(family, root / "-".join(filter(None, key)),
                                    tokenizer=load_tokenizer(name) if name else None, chat_template=text)
        return built[key]

    return folder


def _image(index: int) -> bytes:
    size = [(40, 30), (30, 44), (36, 36)][index % 3]
    return encode_image(Image.new("RGB", size, (70 * index % 255, 120, 40 + 50 * index)))


def _rows(processor: Any) -> list[dict[str, Any]]:
    return [{"uid": f"pair-{i}", "image": _image(i), "question": question, "chosen": chosen, "rejected": rejected,
             "chosen_ids": response_ids(processor, question, chosen),
             "rejected_ids": response_ids(processor, question, rejected)}
            for i, (question, chosen, rejected) in enumerate(ANSWERS)]


def _load(folder: Path, **model: Any) -> tuple[Any, Any, ModelConfig]:
    cfg = load_config(CPU_TINY, model={"base": str(folder), **model}).model
    return load_model(folder, cfg), load_processor(folder, cfg), cfg


@torch.no_grad()
def direct_answer_logps(model: Any, processor: Any, image: bytes, question: str, answer: str
                        ) -> tuple[list[int], list[float]]:
    """The answer's token ids and log-probs from one unpadded forward over the whole conversation, tokenised by
    the family's processor itself (its chat template, or PaliGemma's prefix + suffix)."""
    picture = decode_image(image)
    if answers_as_suffix(processor):
        text = processor.image_token + question
        prompt = processor(text=[text], images=[picture], return_tensors="pt")
        full = processor(text=[text], images=[picture], suffix=[answer], return_tensors="pt")
        full.pop("labels")
    else:
        user = {"role": "user", "content": [{"type": "image", "image": picture}, {"type": "text", "text": question}]}
        assistant = {"role": "assistant", "content": [{"type": "text", "text": answer}]}
        prompt = processor.apply_chat_template([user], add_generation_prompt=True, tokenize=True, return_dict=True,
                                               return_tensors="pt")
        full = processor.apply_chat_template([user, assistant], tokenize=True, return_dict=True, return_tensors="pt")
        prompt_text = processor.apply_chat_template([user], add_generation_prompt=True, tokenize=False)
        full_text = processor.apply_chat_template([user, assistant], tokenize=False)
        if not full_text.startswith(prompt_text):  # LLaVA-OneVision: "assistant \n" in a conversation, not "\n"
            full_text = prompt_text + full_text[full_text.index(answer):]
            full = processor(text=[full_text], images=[[picture]], return_tensors="pt")
    start = prompt["input_ids"].shape[1]
    ids = full["input_ids"][0]
    assert ids[:start].tolist() == prompt["input_ids"][0].tolist()
    logps = model(**full).logits[0, start - 1 : -1].float().log_softmax(-1)
    return ids[start:].tolist(), logps.gather(-1, ids[start:, None]).squeeze(-1).tolist()


def _assert_as_in_the_conversation(ids: list[int], direct: list[int], tokenizer: Any) -> int:
    """Our answer ids equal the conversation's, but for the template's whitespace after the end of turn, or an EOS
    appended where the template ends a turn with none. Returns how many leading tokens are the same."""
    same = next((i for i, (a, b) in enumerate(zip(ids, direct)) if a != b), min(len(ids), len(direct)))
    rest = direct[same:]
    if same == len(ids):  # the end of turn is the template's own; only its trailing whitespace is cut
        assert not tokenizer.decode(rest).strip(), f"cut more than whitespace: {tokenizer.decode(rest)!r}"
    else:  # the template ends the turn with no special token: EOS appended in place of trailing whitespace
        assert same == len(ids) - 1 and ids[-1] == tokenizer.eos_token_id and not tokenizer.decode(rest).strip()
    return same


TRICKY_ANSWERS = ["Yes", "No.", "The dog is on the mat.", "A red ball, a blue cup; and (maybe) a star!",
                  '"Quoted" text?', "Line one.\nLine two."]


def _conversation_answer_ids(processor: Any, question: str, answer: str) -> list[int]:
    """What follows the prompt when the family's own code tokenises the whole conversation: the tokenizer's chat
    template rendering (which never adds special tokens), or PaliGemma's processor with the answer as suffix."""
    tokenizer = processor.tokenizer
    if answers_as_suffix(processor):
        text, image = [processor.image_token + question], [decode_image(_image(0))]
        prompt = processor(text=text, images=image)["input_ids"][0]
        return list(processor(text=text, images=image, suffix=[answer])["input_ids"][0][len(prompt):])
    user = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}
    assistant = {"role": "assistant", "content": [{"type": "text", "text": answer}]}
    render = functools.partial(tokenizer.apply_chat_template, tokenize=False, chat_template=processor.chat_template)
    prompt, full = render([user], add_generation_prompt=True), render([user, assistant])
    if not full.startswith(prompt):  # LLaVA-OneVision: "assistant \n" in a conversation, not "\n"
        full = prompt + full[full.index(answer):]
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    assert full_ids[: len(prompt_ids)] == prompt_ids
    return full_ids[len(prompt_ids):]


@pytest.mark.parametrize("family", [f for f in FAMILIES if TOKENIZER_FOR_FAMILY.get(f)])
def test_answer_ids_follow_the_prompt_as_in_the_whole_conversation(family, zoo):
    processor = load_processor(zoo(family), ModelConfig())
    tokenizer, question = processor.tokenizer, "Describe the image."
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    for answer in TRICKY_ANSWERS:
        ids = response_ids(processor, question, answer)
        _assert_as_in_the_conversation(ids, _conversation_answer_ids(processor, question, answer), tokenizer)
        assert ids[-1] in special and not any(i in special for i in ids[:-1]), "not exactly one end-of-turn token"
        assert tokenizer.decode(ids[:-1]).strip() == answer


def test_llava_next_mistral_answers_end_once_with_its_template_eos(zoo):
    """llava-v1.6-mistral-7b-hf: Mistral's vocabulary (npm "llama2") and its template, which has no generation
    prompt branch and renders a turn as `[INST] ... [/INST] answer</s> `."""
    processor = load_processor(zoo("llava_next", "llama2", "llava_next_mistral"), ModelConfig())
    tokens = processor.tokenizer.convert_ids_to_tokens
    for answer in TRICKY_ANSWERS:
        ids = response_ids(processor, "Describe the image.", answer)
        _assert_as_in_the_conversation(ids, _conversation_answer_ids(processor, "Describe the image.", answer),
                                       processor.tokenizer)
        assert ids.count(processor.tokenizer.eos_token_id) == 1 and ids[-1] == processor.tokenizer.eos_token_id
    assert tokens(response_ids(processor, "Is there a dog?", "Yes")) == ["\u2581Yes", "</s>"]


def test_real_tokenizers_give_the_tokens_the_model_generates(zoo):
    llava = load_processor(zoo("llava"), ModelConfig())
    tokens = llava.tokenizer.convert_ids_to_tokens
    assert tokens(response_ids(llava, "Describe the image.", "The dog is on the mat.")) == \
        ["▁The", "▁dog", "▁is", "▁on", "▁the", "▁mat", ".", "</s>"]
    assert tokens(response_ids(llava, "Is there a dog?", "Yes")) == ["▁Yes", "</s>"]
    qwen = load_processor(zoo("qwen2_5_vl"), ModelConfig())
    assert qwen.tokenizer.convert_ids_to_tokens(response_ids(qwen, "Is there a dog?", "Yes")) == \
        ["Yes", "<|im_end|>"]


@pytest.mark.parametrize("family", FAMILIES)
def test_prompts_hold_one_bos_at_most(family, zoo):
    processor = load_processor(zoo(family), ModelConfig())
    bos = processor.tokenizer.bos_token_id
    encoded = encode_prompts(processor, [_image(0), _image(1)], ["Describe the image.", "Yes?"], "right")
    with_bos = family in ("llava", "llava_next", "gemma3", "mllama", "idefics3", "paligemma")
    for row in encoded["input_ids"].tolist():
        assert row.count(bos) == 1 if with_bos else bos is None or row.count(bos) <= 1


@pytest.mark.parametrize("family", FAMILIES)
def test_reference_log_probs_equal_a_direct_forward_of_the_conversation(family, zoo, tmp_path):
    model, processor, _ = _load(zoo(family))
    rows = _rows(processor)
    cached = reference_logps(model, processor, rows, tmp_path / "ref.jsonl", batch_size=3, progress=False)
    for row in rows:
        for side in ("chosen", "rejected"):
            ids = row[f"{side}_ids"]
            direct_ids, direct = direct_answer_logps(model, processor, row["image"], row["question"], row[side])
            same = _assert_as_in_the_conversation(ids, direct_ids, processor.tokenizer)
            assert len(cached[row["uid"]][side]) == len(ids)
            assert cached[row["uid"]][side][:same] == pytest.approx(direct[:same], abs=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_later_token_leaves_earlier_log_probs_unchanged(family, zoo, tmp_path):
    model, processor, _ = _load(zoo(family))
    row = _rows(processor)[1]
    changed = dict(row, uid="changed", chosen_ids=[*row["chosen_ids"][:-2], row["rejected_ids"][0],
                                                   row["chosen_ids"][-1]])
    cached = reference_logps(model, processor, [row, changed], tmp_path / "ref.jsonl", batch_size=2, progress=False)
    before, after = cached[row["uid"]]["chosen"], cached["changed"]["chosen"]
    assert after[:-2] == pytest.approx(before[:-2], abs=1e-6) and after[-2] != pytest.approx(before[-2], abs=1e-4)


def _scores_and_gradients(model: Any, processor: Any, pairs: Any, shared_by: Any) -> tuple[float, dict, dict]:
    """DDPO loss, per-token policy log-probs and parameter gradients of one batch of every pair, with the
    trainer's own loss and collator."""
    from rlhfv_nb.pair_logps import answer_logps
    from rlhfv_nb.train import DDPOTrainer, training_arguments

    ddpo = load_config(CPU_TINY).ddpo
    trainer = DDPOTrainer(model=model, args=training_arguments(ddpo, Path(tempfile.mkdtemp()), 0), ddpo=ddpo)
    batch = PairCollator(processor, shared_by)([pairs[i] for i in range(len(pairs))])
    model.zero_grad()
    loss = trainer.compute_loss(model, dict(batch))
    loss.backward()
    with torch.no_grad():
        logps, mask = answer_logps(model, batch)
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return loss.item(), {"logps": logps, "mask": mask}, grads


@pytest.mark.parametrize("family", FAMILIES)
def test_a_shared_prefix_scores_and_trains_as_separate_rows(family, zoo, tmp_path):
    """One row per pair (image and prompt once) gives the per-token log-probs, reference cache, DDPO loss and
    gradients of one row per answer, for every family's attention and positions (Qwen's 3D rotary positions,
    PaliGemma's prefix-LM, Gemma 3's image blocks)."""
    model, processor, _ = _load(zoo(family))
    model.eval()  # no dropout: both paths see the same network
    rows = _rows(processor)
    family_rules = shares_prefix(model)
    assert family_rules is not None and family_rules.name == family
    separate = reference_logps(model, processor, rows, tmp_path / "separate.jsonl", 3, False, share_prefix=False)
    shared = reference_logps(model, processor, rows, tmp_path / "shared.jsonl", 3, False, share_prefix=True)
    for row in rows:
        for side in ("chosen", "rejected"):
            assert shared[row["uid"]][side] == pytest.approx(separate[row["uid"]][side], abs=1e-5)
    pairs = ddpo_dataset(rows, separate, gamma=5.0, min_match=1)
    loss, scores, grads = _scores_and_gradients(model, processor, pairs, None)
    shared_loss, shared_scores, shared_grads = _scores_and_gradients(model, processor, pairs, family_rules)
    assert shared_loss == pytest.approx(loss, abs=1e-5)
    assert torch.equal(shared_scores["mask"], scores["mask"])
    assert (shared_scores["logps"] - scores["logps"]).abs().max() < 1e-5
    assert shared_grads.keys() == grads.keys() and len(grads) > 0
    assert max((shared_grads[n] - g).abs().max().item() for n, g in grads.items()) < 1e-5
    assert max(g.abs().max().item() for g in grads.values()) > 1e-4  # the comparison is not of zeros


def test_a_shared_prefix_keeps_gemma3_sliding_windows(zoo, tmp_path):
    """Gemma 3's sliding-window layers drop keys by position, not by index in the packed row."""
    model, processor, _ = _load(zoo("gemma3"), attn_implementation="eager")
    model.eval()
    rows = _rows(processor)
    wide = reference_logps(model, processor, rows, tmp_path / "wide.jsonl", 3, False, share_prefix=True)
    model.config.text_config.sliding_window = 6  # far shorter than a prompt: the window decides every score
    scores = {share: reference_logps(model, processor, rows, tmp_path / f"narrow-{share}.jsonl", 3, False,
                                     share_prefix=share) for share in (False, True)}
    for row in rows:
        assert scores[True][row["uid"]]["rejected"] == pytest.approx(scores[False][row["uid"]]["rejected"], abs=1e-5)
        assert scores[True][row["uid"]]["rejected"] != pytest.approx(wide[row["uid"]]["rejected"], abs=1e-3)


def test_attention_without_custom_masks_scores_answers_in_separate_rows(zoo, caplog):
    model, _, _ = _load(zoo("llava"))
    assert shares_prefix(model, requested=False) is None
    model.config.text_config._attn_implementation = "flash_attention_2"
    with caplog.at_level(logging.INFO, logger="rlhfv_nb.pair_logps"):
        assert shares_prefix(model) is None
    assert "'flash_attention_2' takes no custom mask" in caplog.text


def _projector_state(model: Any, family_name: str) -> dict[str, torch.Tensor]:
    family = resolve_family({"model_type": family_name})
    return {name.split("base_model.model.")[-1].replace(".modules_to_save.default", ""): p.detach().clone()
            for name, p in model.named_parameters()
            if family.part_of(name) == "projector" and ".original_module." not in name}


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("family", FAMILIES)
def test_two_ddpo_steps_train_and_save_what_the_family_names(family, lora, zoo, tmp_path):
    folder = zoo(family)
    lora_cfg = {"enabled": lora, "r": 4, "alpha": 8, "dropout": 0.0}
    model, processor, model_cfg = _load(folder, lora=lora_cfg)
    rows = _rows(processor)
    reference = reference_logps(model, processor, rows, tmp_path / "ref.jsonl", batch_size=3, progress=False)
    start = _projector_state(model, family)
    vision_start = {n: p.detach().clone() for n, p in model.named_parameters()
                    if resolve_family(model).frozen_by_freeze_vision(n)}
    ddpo = load_config(CPU_TINY, **{"ddpo": {"max_steps": 2, "batch_size": 2, "lr": 5e-3, "warmup_ratio": 0.0,
                                 "logging_steps": 1, "sft_weight": 0.0}}).ddpo
    final = train_ddpo(model, processor, ddpo_dataset(rows, reference, gamma=5.0, min_match=1), ddpo, model_cfg,
                       tmp_path / "ddpo", seed=0)
    steps = [r for r in read_log(tmp_path / "ddpo" / "log.jsonl") if "ddpo_loss" in r]
    assert [r["step"] for r in steps] == [1, 2] and all(math.isfinite(r["ddpo_loss"]) for r in steps)
    # at step 0 the policy is the reference: the training forward scores exactly what the reference pass cached
    assert steps[0]["ddpo_loss"] == pytest.approx(math.log(2), abs=1e-4)

    reloaded = load_model(final, model_cfg)
    trained = _projector_state(reloaded, family)
    assert trained.keys() == start.keys() and any(not torch.equal(trained[n], start[n]) for n in start)
    reloaded_params = dict(reloaded.named_parameters())
    for name, value in vision_start.items():
        key = next(k for k in reloaded_params if k.endswith(name.split("base_model.model.")[-1]))
        assert torch.equal(reloaded_params[key], value), f"{name} moved although freeze_vision is on"
    if lora:
        from safetensors.torch import load_file

        adapter = load_file(final / "adapter_model.safetensors")
        family_cfg = resolve_family(reloaded)
        assert any(".lora_B." in k and v.abs().max() > 0 for k, v in adapter.items())
        assert all(family_cfg.part_of(k) == "projector" for k in adapter if ".lora_" not in k)
        assert any(family_cfg.part_of(k) == "projector" for k in adapter), "the projector is not saved"


@pytest.mark.parametrize("family", FAMILIES)
def test_4bit_build_quantises_the_decoder_only(family, zoo, tmp_path):
    bnb = pytest.importorskip("bitsandbytes")
    folder = zoo(family)
    cfg = load_config(CPU_TINY, **{"model": {"base": str(folder), "load_in_4bit": True,
                                 "lora": {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0}}}).model
    model, processor = load_model(folder, cfg, device_map="cpu"), load_processor(folder, cfg)
    layout = resolve_family(model)
    four_bit = [n for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert four_bit and all(layout.part_of(n) == "language" and n != "lm_head" for n in four_bit)
    rows = _rows(processor)[:2]
    cached = reference_logps(model, processor, rows, tmp_path / "ref.jsonl", batch_size=2, progress=False)
    assert all(math.isfinite(v) and v <= 0 for r in cached.values() for v in r["chosen"] + r["rejected"])
    trainable = [n for n, p in prepare_for_training(model, cfg).named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n or layout.part_of(n) == "projector" for n in trainable)


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_generation_stops_on_the_models_own_tokens(family, zoo):
    model, processor, _ = _load(zoo(family))
    items = [{"id": str(i), "image": _image(i), "question": ANSWERS[i][0]} for i in range(3)]
    answers = generate_answers(model, processor, items, GenerationSettings(max_new_tokens=5), progress=False)
    assert [a["id"] for a in answers] == ["0", "1", "2"] and all(0 < a["new_tokens"] <= 5 for a in answers)
    single = generate_answers(model, processor, items[1:2], GenerationSettings(max_new_tokens=5), progress=False)
    assert single[0]["answer"] == answers[1]["answer"]  # left padding in a batch changes nothing


@pytest.mark.parametrize("family", FAMILIES)
def test_planner_counts_the_real_model_and_the_family_preset_resolves(family, zoo):
    folder = zoo(family)
    model, _, _ = _load(folder)
    shape = ModelShape.from_config(folder)
    assert sum(m.numel for m in shape.modules()) == count_parameters(model)["total"]
    layout = resolve_family(model)
    by_part = {part: sum(p.numel() for n, p in model.named_parameters() if layout.part_of(n) == part)
               for part in ("vision", "projector", "language")}
    assert by_part == {part: sum(m.numel for m in shape.modules() if m.part == part) for part in by_part}
    assert all(by_part.values())
    preset = load_config(f"params/{PRESETS[family]}.yaml")
    planned = plan(preset, gpu_memory_gb=24, model_config=folder, num_items=16)
    assert planned.params["lora"] > 0 and planned.params["quantized"] > 0
    assert not any("match no linear layer" in w or "vision-tower" in w for w in planned.warnings)
