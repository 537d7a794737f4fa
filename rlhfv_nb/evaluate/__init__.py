"""Hallucination benchmarks: CHAIR (Object HalBench), POPE, AMBER, MMHal-Bench, LLaVA-Bench, and the LLM judge."""

from rlhfv_nb.evaluate.chair import (
    ChairResult,
    ChairVocabulary,
    Mention,
    evaluate_chair,
    extract_mentions,
    score_responses,
)
from rlhfv_nb.evaluate.judge import JudgeClient, JudgeUnavailable

__all__ = [
    "ChairResult",
    "ChairVocabulary",
    "JudgeClient",
    "JudgeUnavailable",
    "Mention",
    "evaluate_chair",
    "extract_mentions",
    "score_responses",
]
