"""The feedback stage's config: defaults, validation, candidate decoding, and the components it builds."""

from __future__ import annotations

import pytest

from rlhfv_nb.config import ModelConfig
from rlhfv_nb.evaluate.judge import JudgeUnavailable
from rlhfv_nb.generate import answers_header, header_key
from rlhfv_nb.rlaifv.build import build_claims, build_labeler
from rlhfv_nb.rlaifv.claims import LLMClaims, WorldClaims
from rlhfv_nb.rlaifv.config import RlaifvFeedbackConfig
from rlhfv_nb.rlaifv.labeler import LocalLabeler, OpenAILabeler
from rlhfv_nb.rlaifv.pairs import PairRule
from rlhfv_nb.world import WorldConfig


def test_defaults_and_candidate_settings() -> None:
    cfg = RlaifvFeedbackConfig(candidates=3, seed=7)
    assert cfg.pairs == PairRule("all_ordered", 1, 2)
    settings = cfg.candidate_settings()
    assert [s.seed for s in settings] == [7, 8, 9]
    assert {(s.do_sample, s.temperature, s.top_p, s.max_new_tokens) for s in settings} == {(True, 0.7, 1.0, 512)}
    assert len({header_key(answers_header(s)) for s in settings}) == 3  # one answer file per candidate


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"candidates": 1}, "candidates 1 must be >= 2"),
    ({"temperature": 0.0}, "temperature 0.0 must be > 0"),
    ({"top_p": 1.5}, "top_p 1.5 must be in"),
    ({"max_new_tokens": 0}, "max_new_tokens 0 must be >= 1"),
    ({"splitter": "spacy"}, "splitter 'spacy' must be one of"),
    ({"splitter": "llm"}, "splitter_model None must name a model"),
    ({"labeler": "gpt"}, "labeler 'gpt' must be one of"),
    ({"labeler": "openai"}, "labeler_model None must name a model"),
    ({"labeler_batch_size": 0}, "labeler_batch_size 0 must be >= 1"),
    ({"reject_below": 1.0}, "reject_below 1.0 must be in"),
    ({"labeler_prompt": "Is it so?"}, "labeler prompt 'Is it so\\?' must hold {question} exactly once"),
    ({"pair_rule": "random"}, "pair_rule/min_gap/max_pairs_per_prompt: unknown pair rule 'random'"),
    ({"min_gap": 0}, "min_gap must be >= 1"),
])
def test_invalid_values_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RlaifvFeedbackConfig(**kwargs)


def test_validate_after_setting_fields() -> None:
    cfg = RlaifvFeedbackConfig()
    cfg.labeler = "openai"  # as a loader sets fields one by one
    with pytest.raises(ValueError, match="labeler_model None must name a model for labeler openai"):
        cfg.validate()
    cfg.labeler_model = "vision-test"
    assert cfg.validate() is cfg


def test_build_world_and_llm_claims(openai_server) -> None:
    world = WorldConfig(grid=3)
    claims = build_claims(RlaifvFeedbackConfig(), world)
    assert isinstance(claims, WorldClaims) and claims.cfg is world
    llm = build_claims(RlaifvFeedbackConfig(splitter="llm", splitter_model="split-8b",
                                            splitter_base_url=openai_server.url))
    assert isinstance(llm, LLMClaims) and llm.question_client is llm.split_client
    assert llm.split_client.model == "split-8b" and llm.split_client.where == openai_server.url
    two = build_claims(RlaifvFeedbackConfig(splitter="llm", splitter_model="split-8b", question_model="changeq-8b"))
    assert (two.split_client.model, two.question_client.model) == ("split-8b", "changeq-8b")


def test_build_labelers(openai_server, tiny_vlm, tmp_path) -> None:
    cfg = RlaifvFeedbackConfig(labeler="openai", labeler_model="vision-test", labeler_base_url=openai_server.url,
                               labeler_prompt="{question} Answer yes or no.")
    openai = build_labeler(cfg, ModelConfig(), cache_dir=tmp_path)
    assert isinstance(openai, OpenAILabeler) and openai.prompt == "{question} Answer yes or no."
    assert (openai.client.model, openai.client.where, openai.client.cache_dir) == ("vision-test", openai_server.url,
                                                                                     tmp_path)
    with pytest.raises(JudgeUnavailable, match="RLAIFV_NO_KEY"):
        build_labeler(RlaifvFeedbackConfig(labeler="openai", labeler_model="m", api_key_env="RLAIFV_NO_KEY"),
                      ModelConfig())
    with pytest.raises(ValueError, match="labeler_model is null .* no policy model"):
        build_labeler(RlaifvFeedbackConfig(), ModelConfig())
    local = build_labeler(RlaifvFeedbackConfig(labeler_batch_size=3), ModelConfig(), policy=tiny_vlm)
    assert isinstance(local, LocalLabeler) and local.batch_size == 3
    named = build_labeler(RlaifvFeedbackConfig(labeler_model=str(tiny_vlm)), ModelConfig(), policy="unused/path")
    assert named.model.config.model_type == "llava"
