"""Settings of the RLAIF-V feedback stage: candidates, their decoding, the claim splitter, the labeler, the pairs.

Decoding defaults are upstream's (`script/data_gen/llava15/llava15_diverse_gen.sh`: 10 answers per prompt,
temperature 0.7, up to 512 new tokens), and so is the pair rule (every two candidates whose scores differ by 1 or
more, 2 per prompt; here the widest gaps, not a random 2). Splitter and labeler default to what runs offline: the
synthetic world's rules and a local labeler (by default the model being aligned, labelling its own answers); the
cpu-tiny loop's presets pick the "world" labeler, a small classifier trained on world images of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlhfv_nb.generate import GenerationSettings
from rlhfv_nb.rlaifv.labeler import DEFAULT_PROMPT, check_prompt
from rlhfv_nb.rlaifv.pairs import PairRule
from rlhfv_nb.rlaifv.scoring import REJECT_BELOW

SPLITTERS = ("world", "llm")
LABELERS = ("local", "openai", "world")


@dataclass
class RlaifvFeedbackConfig:
    """One round's AI feedback: sample candidates, score them claim by claim, pair them.

    Checked when constructed; a loader that sets fields one by one (as `rlhfv_nb.config` builds its sections)
    calls `validate()` after.
    """

    # Candidates: `candidates` sampled answers per prompt from the current policy; candidate i is decoded with
    # seed `seed + i` (`candidate_settings`), so a re-run samples the same answers.
    candidates: int = 10
    temperature: float = 0.7  # sampling temperature (> 0: identical candidates make no pairs)
    top_p: float = 1.0  # nucleus sampling mass
    max_new_tokens: int = 512
    seed: int = 0
    # Claim splitting and question transformation: "world" (rules of the synthetic world's sentences) or "llm"
    # (chat models behind an OpenAI-compatible endpoint, `rlhfv_nb.rlaifv.claims.LLMClaims`).
    splitter: str = "world"
    splitter_model: str | None = None  # llm: the split model's name at the endpoint
    question_model: str | None = None  # llm: the question-transformation model (None: the split model)
    splitter_base_url: str | None = None  # llm: the endpoint (None: the OpenAI API)
    # Labeler: "local" (a Hugging Face VLM, read at its next token), "openai" (an OpenAI-compatible vision endpoint)
    # or "world" (the cpu-tiny miniature's cell classifier, trained by the loop: `rlhfv_nb.rlaifv.world_labeler`).
    labeler: str = "local"
    labeler_model: str | None = None  # local: hub id or folder (None: the policy itself); openai: the model name
    labeler_base_url: str | None = None  # openai: the endpoint (None: the OpenAI API)
    api_key_env: str = "OPENAI_API_KEY"  # environment variable holding the endpoints' key (never stored)
    labeler_prompt: str = DEFAULT_PROMPT  # what the labeler is asked: a template with one {question}
    labeler_batch_size: int = 16  # local: prompts per forward pass
    reject_below: float = REJECT_BELOW  # a claim is rejected when the labeler's P(yes) is below this
    # Pairs (`rlhfv_nb.rlaifv.pairs`): "best_vs_worst" or "all_ordered", least score gap, most pairs per prompt.
    pair_rule: str = "all_ordered"
    min_gap: int = 1
    max_pairs_per_prompt: int | None = 2
    # Upstream's length filter on a round's pairs (`pairs.length_balanced`): drop the pairs whose chosen answer is
    # much shorter than the rejected one, so the kept pairs do not favour shorter answers. Off by default here.
    length_filter: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> RlaifvFeedbackConfig:
        """This config, if every field is valid; ValueError naming the first bad field and its value otherwise."""
        checks = {
            "candidates": (self.candidates >= 2, "must be >= 2 (pairs need two answers)"),
            "temperature": (self.temperature > 0, "must be > 0 (greedy candidates are all the same answer)"),
            "top_p": (0 < self.top_p <= 1, "must be in (0, 1]"),
            "max_new_tokens": (self.max_new_tokens >= 1, "must be >= 1"),
            "splitter": (self.splitter in SPLITTERS, f"must be one of {SPLITTERS}"),
            "splitter_model": (self.splitter != "llm" or bool(self.splitter_model),
                               "must name a model for splitter llm"),
            "labeler": (self.labeler in LABELERS, f"must be one of {LABELERS}"),
            "labeler_model": (self.labeler != "openai" or bool(self.labeler_model),
                              "must name a model for labeler openai"),
            "labeler_batch_size": (self.labeler_batch_size >= 1, "must be >= 1"),
            "reject_below": (0 < self.reject_below < 1, "must be in (0, 1)"),
        }
        for name, (ok, rule) in checks.items():
            if not ok:
                raise ValueError(f"rlaifv feedback {name} {getattr(self, name)!r} {rule}")
        if self.labeler == "world" and self.splitter != "world":
            raise ValueError(f"rlaifv feedback labeler 'world' answers the world's claim questions only: it needs "
                             f"splitter 'world', not {self.splitter!r}")
        check_prompt(self.labeler_prompt)
        try:
            PairRule(self.pair_rule, self.min_gap, self.max_pairs_per_prompt)
        except ValueError as err:
            raise ValueError(f"rlaifv feedback pair_rule/min_gap/max_pairs_per_prompt: {err}") from err
        return self

    @property
    def pairs(self) -> PairRule:
        """The pair-selection rule."""
        return PairRule(self.pair_rule, self.min_gap, self.max_pairs_per_prompt)

    def candidate_settings(self) -> list[GenerationSettings]:
        """The decoding settings of each candidate (sampling; candidate i seeded `seed + i`), for
        `rlhfv_nb.generate` backends: one answer file per candidate, resumable."""
        return [GenerationSettings(max_new_tokens=self.max_new_tokens, do_sample=True, temperature=self.temperature,
                                   top_p=self.top_p, seed=self.seed + i) for i in range(self.candidates)]
