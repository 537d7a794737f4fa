"""DDPO (dense direct preference optimization, RLHF-V): token weights, sequence scores and the loss.

Small pure functions over token ids and tensors; the trainer in `rlhfv_nb.train` composes them.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def changed_token_spans(
    chosen_ids: Sequence[int], rejected_ids: Sequence[int], min_match: int = 3
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Paired spans ([start, end) token indices) that the correction changed.

    As upstream RLHF-V (`get_diff_ids` in thunlp/Muffin): `difflib.SequenceMatcher(None, rejected,
    chosen)` on token ids (default autojunk), keep matching blocks of at least `min_match` tokens, and
    pair the gaps between consecutive kept matches; a gap pair is a change when both sides are non-empty
    (a pure insertion or deletion has nothing to pair with and stays at weight 1).
    """
    matcher = difflib.SequenceMatcher(None, list(rejected_ids), list(chosen_ids))
    blocks = matcher.get_matching_blocks()
    kept = [block for block in blocks[:-1] if block.size >= min_match] + [blocks[-1]]
    rejected_spans, chosen_spans = [], []
    rejected_start = chosen_start = 0
    for block in kept:
        rejected_gap = (rejected_start, block.a)
        chosen_gap = (chosen_start, block.b)
        if rejected_gap[0] < rejected_gap[1] and chosen_gap[0] < chosen_gap[1]:
            rejected_spans.append(rejected_gap)
            chosen_spans.append(chosen_gap)
        rejected_start, chosen_start = block.a + block.size, block.b + block.size
    return chosen_spans, rejected_spans


def diff_token_weights(
    chosen_ids: Sequence[int], rejected_ids: Sequence[int], gamma: float, min_match: int = 3
) -> tuple[list[float], list[float]]:
    """Per-token weights of the chosen and rejected responses: `gamma` on changed tokens, 1 elsewhere."""
    chosen_spans, rejected_spans = changed_token_spans(chosen_ids, rejected_ids, min_match)
    return _span_weights(len(chosen_ids), chosen_spans, gamma), _span_weights(len(rejected_ids), rejected_spans, gamma)


def _span_weights(length: int, spans: list[tuple[int, int]], gamma: float) -> list[float]:
    weights = [1.0] * length
    for start, end in spans:
        weights[start:end] = [gamma] * (end - start)
    return weights


def selective_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """`log_softmax(logits)[label]` for each row of `[rows, vocab]` logits, in float32, without building the
    full log-softmax: the label's logit minus the row's `logsumexp`."""
    logits = logits.float()
    return logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def sequence_logps(
    per_token_logps: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor | None = None, average: bool = False
) -> torch.Tensor:
    """Sequence score `S(y) = sum_t w_t l_t`, or `sum_t w_t l_t / sum_t w_t` when `average`.

    `mask` selects response tokens; `weights` default to 1 (then `average` is the mean log-prob).
    """
    mask = mask.to(per_token_logps.dtype)
    weights = mask if weights is None else weights.to(per_token_logps.dtype) * mask
    total = (per_token_logps * weights).sum(-1)
    if average:
        return total / weights.sum(-1).clamp_min(1e-8)
    return total


def ddpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair DPO loss on (dense) sequence scores, and the implicit rewards `beta * (S_pi - S_ref)`.

    `-log sigmoid(beta * ((S_pi(y_w) - S_ref(y_w)) - (S_pi(y_l) - S_ref(y_l))))`.
    """
    chosen_rewards = beta * (policy_chosen - ref_chosen)
    rejected_rewards = beta * (policy_rejected - ref_rejected)
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards)
    return losses, chosen_rewards.detach(), rejected_rewards.detach()
