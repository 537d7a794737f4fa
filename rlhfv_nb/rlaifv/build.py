"""The feedback stage's components from its config: the claim extractor and the labeler."""

from __future__ import annotations

from pathlib import Path

from rlhfv_nb.config import ModelConfig
from rlhfv_nb.evaluate.judge import JudgeClient
from rlhfv_nb.rlaifv.claims import ClaimExtractor, LLMClaims, WorldClaims
from rlhfv_nb.rlaifv.config import RlaifvFeedbackConfig
from rlhfv_nb.rlaifv.labeler import Labeler, LocalLabeler, OpenAILabeler
from rlhfv_nb.world import WorldConfig


def build_claims(cfg: RlaifvFeedbackConfig, world: WorldConfig | None = None,
                 cache_dir: str | Path | None = None) -> ClaimExtractor:
    """`WorldClaims` on `world` (splitter "world"), or `LLMClaims` on the configured models, their replies cached
    under `cache_dir` (splitter "llm"; the API key from `cfg.api_key_env`)."""
    if cfg.splitter == "world":
        return WorldClaims(world)
    split = JudgeClient(cfg.splitter_model, base_url=cfg.splitter_base_url, api_key_env=cfg.api_key_env,
                        cache_dir=cache_dir)
    if cfg.question_model in (None, cfg.splitter_model):
        return LLMClaims(split)
    question = JudgeClient(cfg.question_model, base_url=cfg.splitter_base_url, api_key_env=cfg.api_key_env,
                           cache_dir=cache_dir)
    return LLMClaims(split, question)


def build_labeler(cfg: RlaifvFeedbackConfig, model_cfg: ModelConfig, policy: str | Path | None = None,
                  cache_dir: str | Path | None = None) -> Labeler:
    """`LocalLabeler` on `cfg.labeler_model`, else on `policy` (the model being aligned), loaded with `model_cfg`
    (labeler "local"); or `OpenAILabeler` on the configured endpoint, replies cached under `cache_dir` ("openai").
    The "world" labeler is trained on images, not loaded: `rlhfv_nb.rlaifv.world_labeler.train_or_load`."""
    if cfg.labeler == "world":
        raise ValueError("rlaifv feedback labeler 'world' is a classifier the loop trains "
                         "(rlhfv_nb.rlaifv.world_labeler.train_or_load), not a model build_labeler loads")
    if cfg.labeler == "openai":
        client = JudgeClient(cfg.labeler_model, base_url=cfg.labeler_base_url, api_key_env=cfg.api_key_env,
                             cache_dir=cache_dir)
        return OpenAILabeler(client, cfg.labeler_prompt)
    path = cfg.labeler_model or policy
    if path is None:
        raise ValueError("rlaifv feedback labeler_model is null (the policy labels itself) but no policy model was "
                         "given to build_labeler")
    return LocalLabeler.load(path, model_cfg, batch_size=cfg.labeler_batch_size, prompt=cfg.labeler_prompt)
