"""Labelers: a tiny local VLM read at its next token, and an OpenAI-compatible vision endpoint (a local server)."""

from __future__ import annotations

import base64
import io

import pytest
import torch
from PIL import Image

from rlhfv_nb.config import ModelConfig
from rlhfv_nb.data import DataError, encode_image
from rlhfv_nb.modeling import load_model, load_processor
from rlhfv_nb.rlaifv.labeler import YES_NO_NUDGE, LocalLabeler, OpenAILabeler, parse_yes_no
from rlhfv_nb.rlaifv.llm import FeedbackError
from rlhfv_nb.served import image_data_uri
from rlhfv_nb.world import WorldConfig, make_fresh_scenes, render

CFG = WorldConfig()
IMAGES = [encode_image(render(scene, CFG)) for scene in make_fresh_scenes(CFG, 3, seed=5)]
QUESTIONS = ["Is there a red ball in the top left?", "Is there a star?",
             "Is there a blue star in the bottom right of the picture, next to a green tent?"]


@pytest.fixture(scope="module")
def local(tiny_vlm) -> LocalLabeler:
    cfg = ModelConfig()
    return LocalLabeler(load_model(tiny_vlm, cfg), load_processor(tiny_vlm, cfg), batch_size=2)


def _direct_p_yes(labeler: LocalLabeler, image: bytes, question: str) -> float:
    """P(yes) from one unpadded forward pass over the tiny model's prompt, written out by hand."""
    prompt = f"USER: <image>\n{question} ASSISTANT:"  # rlhfv_nb.modeling.TINY_CHAT_TEMPLATE's generation prompt
    inputs = labeler.processor(text=[prompt], images=[[Image.open(io.BytesIO(image)).convert("RGB")]],
                               return_tensors="pt")
    with torch.no_grad():
        logps = labeler.model(**inputs).logits[0, -1].log_softmax(-1)
    tokenizer = labeler.processor.tokenizer
    yes, no = ({tokenizer.encode(f" {word}", add_special_tokens=False)[0] for word in words}
               for words in (("Yes", "yes"), ("No", "no")))
    p_yes, p_no = logps[sorted(yes)].exp().sum(), logps[sorted(no)].exp().sum()
    return (p_yes / (p_yes + p_no)).item()


def test_local_labeler_matches_a_direct_forward_pass(local) -> None:
    images, questions = [*IMAGES, IMAGES[0]], [*QUESTIONS, QUESTIONS[2]]
    p_yes = local.p_yes(images, questions)  # batches of 2: prompts of two lengths, then two of one length
    assert p_yes == pytest.approx([_direct_p_yes(local, i, q) for i, q in zip(images, questions)], abs=1e-5)
    assert all(0 < p < 1 for p in p_yes) and len(set(p_yes)) == 4
    tokenizer = local.processor.tokenizer
    assert local.answer_ids(QUESTIONS[0]) == (tokenizer.convert_tokens_to_ids(["ĠYes", "Ġyes"]),
                                              tokenizer.convert_tokens_to_ids(["ĠNo", "Ġno"]))


def test_local_labeler_prompt_template(local) -> None:
    templated = LocalLabeler(local.model, local.processor, prompt="{question} Answer yes or no.")
    question = QUESTIONS[1]
    assert templated.p_yes(IMAGES[:1], [question]) == pytest.approx(
        [_direct_p_yes(local, IMAGES[0], f"{question} Answer yes or no.")], abs=1e-5)


def test_local_labeler_errors_name_their_input(local) -> None:
    with pytest.raises(ValueError, match="share first token"):
        LocalLabeler(local.model, local.processor, yes_words=("Yes",), no_words=("No", "Yes")).p_yes(IMAGES[:1],
                                                                                                      QUESTIONS[:1])
    with pytest.raises(DataError, match=r"image 1 \(asked 'Is there a star\?'\): field 'image' is an undecodable"):
        local.p_yes([IMAGES[0], b"not an image"], QUESTIONS[:2])
    with pytest.raises(DataError, match=r"image 2 \(asked 'Is there a blue star"):  # counted over batches of 2
        local.p_yes([*IMAGES[:2], b"not an image"], QUESTIONS)
    with pytest.raises(ValueError, match="2 images for 3 questions"):
        local.p_yes(IMAGES[:2], QUESTIONS)
    with pytest.raises(ValueError, match=r"labeler prompt 'Q: \{q\}'"):
        LocalLabeler(local.model, local.processor, prompt="Q: {q}")


# ---------------------------------------------------------------- an OpenAI-compatible vision endpoint


def _parts(content: list[dict]) -> tuple[str, str]:
    """(image URL, text) of a user message's content parts."""
    (image,), (text,) = ([p for p in content if p["type"] == kind] for kind in ("image_url", "text"))
    return image["image_url"]["url"], text["text"]


def test_openai_labeler_sends_the_image_caches_and_counts(openai_server, judge_client) -> None:
    openai_server.responder = lambda content: "Yes, there is." if "red" in _parts(content)[1] else "No."
    client = judge_client(prices={"judge-test": (1.0, 2.0)})
    labeler = OpenAILabeler(client, prompt="{question} Answer yes or no.")
    assert labeler.p_yes(IMAGES[:2], QUESTIONS[:2]) == [1.0, 0.0]
    sent = {_parts(r["messages"][0]["content"])[1]: _parts(r["messages"][0]["content"])[0]
            for r in openai_server.requests}
    assert set(sent) == {f"{q} Answer yes or no." for q in QUESTIONS[:2]}
    url = sent[f"{QUESTIONS[0]} Answer yes or no."]
    assert url.startswith("data:image/png;base64,") and base64.b64decode(url.split(",", 1)[1]) == IMAGES[0]
    usage = client.usage()
    assert (usage["requests"], usage["prompt_tokens"], usage["completion_tokens"]) == (2, 20, 10)
    assert usage["estimated_cost_usd"] == pytest.approx((20 * 1.0 + 10 * 2.0) / 1e6)

    restarted = OpenAILabeler(judge_client(), prompt="{question} Answer yes or no.")
    assert restarted.p_yes(IMAGES[:2], QUESTIONS[:2]) == [1.0, 0.0]
    assert len(openai_server.requests) == 2
    assert (restarted.client.usage()["requests"], restarted.client.usage()["cache_hits"]) == (0, 2)
    assert OpenAILabeler(judge_client()).p_yes(IMAGES[:1], QUESTIONS[:1]) == [1.0]  # another prompt: a new call
    assert len(openai_server.requests) == 3


def test_openai_labeler_nudges_then_names_what_failed(openai_server, judge_client) -> None:
    openai_server.script.extend(["It is hard to tell.", "No"])
    labeler = OpenAILabeler(judge_client())
    assert labeler.p_yes(IMAGES[:1], QUESTIONS[:1]) == [0.0]
    assert openai_server.requests[1]["messages"][-1] == {"role": "user", "content": YES_NO_NUDGE}
    openai_server.script.extend(["Maybe.", "Perhaps."])
    with pytest.raises(FeedbackError, match=r"labelling .* failed for 1 of 1 inputs: question 'Is there a star\?' "
                                            "on image 0: unparseable"):
        labeler.p_yes(IMAGES[:1], QUESTIONS[1:2])
    with pytest.raises(DataError, match=r"image 0 \(asked 'Is there a star\?'\)"):
        labeler.p_yes([b"GIF89a broken"], QUESTIONS[1:2])
    assert len(openai_server.requests) == 4  # the broken image was never sent
    openai_server.script.append("Yes")
    with pytest.raises(DataError, match=r"image 1 \(asked 'Is there a star\?'\)"):  # in the second chunk
        OpenAILabeler(judge_client(), chunk_size=1).p_yes([IMAGES[0], b"broken"], QUESTIONS[:2])
    assert len(openai_server.requests) == 5  # the first chunk was asked


@pytest.mark.parametrize(("reply", "p"), [("Yes", 1.0), ("yes.", 1.0), ("**No**, there is not.", 0.0), (" NO", 0.0)])
def test_parse_yes_no(reply: str, p: float) -> None:
    assert parse_yes_no(reply) == p


@pytest.mark.parametrize("reply", ["Yesterday", "Not really", "I think yes"])
def test_parse_yes_no_rejects(reply: str) -> None:
    with pytest.raises(ValueError, match="does not start with yes or no"):
        parse_yes_no(reply)


def test_image_data_uri_keeps_web_formats_and_converts_others() -> None:
    image = Image.new("RGB", (4, 4), (200, 30, 30))
    jpeg, bmp = io.BytesIO(), io.BytesIO()
    image.save(jpeg, format="JPEG")
    image.save(bmp, format="BMP")
    assert image_data_uri(jpeg.getvalue()) == "data:image/jpeg;base64," + base64.b64encode(jpeg.getvalue()).decode()
    assert image_data_uri({"bytes": bmp.getvalue(), "path": None}) == (
        "data:image/png;base64," + base64.b64encode(encode_image(image)).decode())
