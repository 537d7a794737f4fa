"""Claim splitting and question transformation: the world's rules and chat models behind a local server."""

from __future__ import annotations

import random

import pytest

from rlhfv_nb.rlaifv.claims import (
    QUESTION_NUDGE,
    QUESTION_SYSTEM,
    SPLIT_SYSTEM,
    LLMClaims,
    WorldClaim,
    WorldClaims,
    parse_claims,
    parse_question,
)
from rlhfv_nb.rlaifv.llm import FeedbackError
from rlhfv_nb.world import Scene, WorldConfig, WorldObject, describe, expected_scene, make_fresh_scenes

CFG = WorldConfig()


@pytest.mark.parametrize(("answer", "claims"), [
    ("A red sphere is in the top left. There is a blue star in the bottom right.",
     ["There is a red ball in the top left.", "There is a blue star in the bottom right."]),
    ("In the top right, there is a green tent.", ["There is a green tent in the top right."]),
    ("There is a red ball and a yellow star in the top left.",  # one place: both objects are there
     ["There is a red ball in the top left.", "There is a yellow star in the top left."]),
    ("A red ball is in the top left, and a blue crate is at the bottom.",  # two places pair up in order
     ["There is a red ball in the top left.", "There is a blue box at the bottom."]),
    ("THERE IS A PURPLE HOOP IN THE BOTTOM LEFT", ["There is a purple ring in the bottom left."]),
    ("Two red balls.", ["There is a red ball in the image."]),  # counts are not claims; no place said
    ("A kite is in the top left and on the right.", ["There is a kite in the image."]),  # places do not pair up
    ("There is a tent in the top left. There is a tent in the top left.",  # a repeated claim counts twice
     ["There is a tent in the top left.", "There is a tent in the top left."]),
    ("", []),
    ("I see nothing in the top left.", []),  # no world object
    ("There is a red apple.", []),
])
def test_world_split(answer: str, claims: list[str]) -> None:
    assert WorldClaims(CFG).split([answer]) == [claims]


def test_world_questions() -> None:
    claims = ["There is a red ball in the top left.", "There is a kite in the image.", "A green rod is at the bottom.",
              "a blue sphere"]
    assert WorldClaims(CFG).questions(claims) == [
        "Is there a red ball in the top left?", "Is there a kite in the image?",
        "Is there a green stick at the bottom?", "Is there a blue ball in the image?"]


@pytest.mark.parametrize("claim", ["There is a red ball and a blue box.", "The sky is blue.", "",
                                   "A red ball is in the top left or in the bottom right."])
def test_world_question_of_a_claim_without_exactly_one_object_names_it(claim: str) -> None:
    with pytest.raises(ValueError, match=f"claim {claim!r} names"):
        WorldClaims(CFG).questions(["There is a ball.", claim])


def test_world_claims_hold_exactly_for_the_objects_in_the_scene() -> None:
    """Claims of a true description all hold; of a companion-expecting caption, exactly the added objects fail."""
    rng = random.Random(0)
    splitter = WorldClaims(CFG)
    hallucinated = 0
    for scene in make_fresh_scenes(CFG, 30, seed=1):
        claims = splitter.claims(describe(scene, rng, CFG))
        assert len(claims) == len(scene.objects) and all(claim.holds(scene, CFG) for claim in claims)
        seen = expected_scene(scene, rng, CFG)
        failing = [claim for claim in splitter.claims(describe(seen, rng, CFG)) if not claim.holds(scene, CFG)]
        added = [obj for obj in seen.objects if obj not in scene.objects]  # the caption writer's companions
        assert sorted(claim.kind for claim in failing) == sorted(obj.kind for obj in added)
        assert all(splitter.parse(claim.text) == claim for claim in claims)
        hallucinated += len(failing)
    assert hallucinated > 0


def test_world_claim_truth() -> None:
    scene = Scene((WorldObject("ball", "red", 0, 0),))
    assert WorldClaim("ball").holds(scene, CFG) and WorldClaim("ball", "red", "in the top left").holds(scene, CFG)
    assert not WorldClaim("ball", "blue").holds(scene, CFG)
    assert not WorldClaim("ball", None, "in the bottom right").holds(scene, CFG)
    assert not WorldClaim("star").holds(scene, CFG)


# ---------------------------------------------------------------- reply parsing


@pytest.mark.parametrize(("reply", "claims"), [
    ("There is a red ball.\nThe ball is on a table.", ["There is a red ball.", "The ball is on a table."]),
    ("Claims:\n1. There is a dog.\n2) The dog is brown.\n- It is sunny.\n* A tree.\n\u2022 A cat.\n\n",
     ["There is a dog.", "The dog is brown.", "It is sunny.", "A tree.", "A cat."]),
    ("NONE", []),
    ("None.", []),
])
def test_parse_claims(reply: str, claims: list[str]) -> None:
    assert parse_claims(reply) == claims


@pytest.mark.parametrize("reply", ["Claims:", "NONE\nThere is a dog.", "  \n - \n"])
def test_parse_claims_rejects(reply: str) -> None:
    with pytest.raises(ValueError, match="reply"):
        parse_claims(reply)


@pytest.mark.parametrize(("reply", "question"), [
    ("Is there a dog?", "Is there a dog?"),
    ('Question: "Is the dog brown?"\n', "Is the dog brown?"),
])
def test_parse_question(reply: str, question: str) -> None:
    assert parse_question(reply) == question


@pytest.mark.parametrize("reply", ["Sure!", "Is there a dog?\nIs it brown?", "There is a dog."])
def test_parse_question_rejects(reply: str) -> None:
    with pytest.raises(ValueError, match="not one question line"):
        parse_question(reply)


# ---------------------------------------------------------------- chat models behind a local server

SPLITS = {
    "A red ball sits on a wooden table.": "Claims:\n1. There is a red ball.\n2. The ball is on a table.\n"
                                          "3. The table is wooden.",
    "Nothing to see.": "NONE",
}


def _reply(content: str) -> str:
    """The stand-in split and question models: a split from `SPLITS`, or "Is it true that <claim>?"."""
    first, rest = content.split("\n", 1)
    if first == "Description:":
        return SPLITS[rest.split("\n")[0]]
    claim = first.removeprefix("Claim: ")
    return f"Question: Is it true that {claim[0].lower()}{claim[1:].rstrip('.')}?"


def test_llm_split_and_questions_are_cached_across_a_restart(openai_server, judge_client) -> None:
    openai_server.responder = _reply
    answers = ["A red ball sits on a wooden table.", "  ", "Nothing to see."]
    client = judge_client(prices={"judge-test": (1.0, 2.0)})
    claims = LLMClaims(client).split(answers)
    assert claims == [["There is a red ball.", "The ball is on a table.", "The table is wooden."], [], []]
    assert len(openai_server.requests) == 2  # the blank answer costs no call
    assert [r["messages"][0] for r in openai_server.requests] == [{"role": "system", "content": SPLIT_SYSTEM}] * 2
    assert sorted(r["messages"][1]["content"].split("\n")[1] for r in openai_server.requests) == sorted(SPLITS)
    questions = LLMClaims(client).questions(claims[0])
    assert questions == ["Is it true that there is a red ball?", "Is it true that the ball is on a table?",
                         "Is it true that the table is wooden?"]
    assert openai_server.requests[2]["messages"][0] == {"role": "system", "content": QUESTION_SYSTEM}
    usage = client.usage()
    assert (usage["requests"], usage["prompt_tokens"], usage["completion_tokens"]) == (5, 50, 25)
    assert usage["estimated_cost_usd"] == pytest.approx((50 * 1.0 + 25 * 2.0) / 1e6)

    restarted = LLMClaims(judge_client())
    assert restarted.split(answers) == claims and restarted.questions(claims[0]) == questions
    assert len(openai_server.requests) == 5  # nothing asked again
    usage = restarted.split_client.usage()
    assert (usage["requests"], usage["cache_hits"]) == (0, 5)


def test_llm_question_model_can_differ_from_the_split_model(openai_server, judge_client) -> None:
    openai_server.responder = _reply
    splitter, asker = judge_client(), judge_client(max_tokens=99)
    claims = LLMClaims(splitter, asker)
    claims.questions(["There is a cat."])
    assert splitter.usage()["requests"] == 0 and asker.usage()["requests"] == 1


def test_llm_unparseable_reply_is_nudged_and_a_lasting_one_names_the_claim(openai_server, judge_client) -> None:
    openai_server.script.extend(["Sure, here it is.", "Is there a cat?"])
    client = judge_client()
    assert LLMClaims(client).questions(["There is a cat."]) == ["Is there a cat?"]
    assert openai_server.requests[1]["messages"][-1] == {"role": "user", "content": QUESTION_NUDGE}
    assert client.usage()["unparsed"] == 1
    openai_server.script.extend(["No idea.", "Still no idea."])
    with pytest.raises(FeedbackError, match=r"question transformation .* failed for 1 of 1 inputs: claim 'A dog.': "
                                            "unparseable"):
        LLMClaims(client).questions(["A dog."])


def test_llm_questions_refuse_an_empty_claim(judge_client) -> None:
    with pytest.raises(ValueError, match="claim 1 of 2 is empty"):
        LLMClaims(judge_client()).questions(["A dog.", " "])
