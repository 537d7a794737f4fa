"""DDPO maths against hand-computed values: changed-token weights, per-token log-probs, scores, loss.

The last tests run the real trainer on a tiny model: at step 0 the policy is the reference (loss log 2),
which proves the cached reference log-probs line up token for token with the training forward, and a
few DDPO steps on a fixed batch lower the loss.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import random

import pytest
import torch
from tiny_run import CPU_TINY, make_run

from rlhfv_nb.ddpo import (
    changed_token_spans,
    ddpo_loss,
    diff_token_weights,
    selective_logps,
    sequence_logps,
)

G = 5.0  # gamma in the hand-made cases


# ---------------------------------------------------------------- changed-token weights
def test_replacement_inside_long_matches_weighs_only_the_replaced_tokens():
    # matches [1 2 3 4] and [5 6 7 8] (>= 3 tokens) are kept; the gap between them is 9 -> 10 11.
    rejected = [1, 2, 3, 4, 9, 5, 6, 7, 8]
    chosen = [1, 2, 3, 4, 10, 11, 5, 6, 7, 8]
    chosen_w, rejected_w = diff_token_weights(chosen, rejected, G)
    assert chosen_w == [1, 1, 1, 1, G, G, 1, 1, 1, 1]
    assert rejected_w == [1, 1, 1, 1, G, 1, 1, 1, 1]
    assert changed_token_spans(chosen, rejected) == ([(4, 6)], [(4, 5)])


def test_replacements_at_the_start_and_end_are_changed():
    # before the first kept match: 9 -> 8 8; after the last one (before difflib's end sentinel): 6 -> 7.
    rejected = [9, 1, 2, 3, 6]
    chosen = [8, 8, 1, 2, 3, 7]
    chosen_w, rejected_w = diff_token_weights(chosen, rejected, G)
    assert chosen_w == [G, G, 1, 1, 1, G]
    assert rejected_w == [G, 1, 1, 1, G]


def test_pure_insertion_is_not_weighted():
    # chosen adds 7 8 between kept matches; the rejected side of that gap is empty, so nothing is paired
    # and upstream's get_diff_ids marks no token (weights stay 1), also for an insertion at the end.
    rejected = [1, 2, 3, 4, 5, 6]
    chosen = [1, 2, 3, 7, 8, 4, 5, 6, 9, 9]
    assert diff_token_weights(chosen, rejected, G) == ([1.0] * 10, [1.0] * 6)
    assert changed_token_spans(chosen, rejected) == ([], [])


def test_pure_deletion_is_not_weighted():
    rejected = [1, 2, 3, 7, 8, 4, 5, 6]
    chosen = [1, 2, 3, 4, 5, 6]
    assert diff_token_weights(chosen, rejected, G) == ([1.0] * 6, [1.0] * 8)


def test_match_shorter_than_min_match_is_changed_and_merges_spans():
    # blocks: [1 2 3 4] (kept), [5 6] (2 < 3: dropped), [7 8 9 10] (kept). Dropping [5 6] merges the two
    # edits around it into one gap, indices 4..7 on both sides, the matching 5 6 included.
    rejected = [1, 2, 3, 4, 20, 5, 6, 21, 7, 8, 9, 10]
    chosen = [1, 2, 3, 4, 30, 5, 6, 31, 7, 8, 9, 10]
    chosen_w, rejected_w = diff_token_weights(chosen, rejected, G)
    assert chosen_w == rejected_w == [1, 1, 1, 1, G, G, G, G, 1, 1, 1, 1]
    # with min_match 2 the short match survives and the two edits stay apart
    chosen_w, _ = diff_token_weights(chosen, rejected, G, min_match=2)
    assert chosen_w == [1, 1, 1, 1, G, 1, 1, G, 1, 1, 1, 1]


def test_short_common_prefix_is_changed():
    # [1 2] matches but is shorter than 3, so the first kept match is [3 4 5]: gap (0, 3) on both sides.
    rejected = [1, 2, 40, 3, 4, 5]
    chosen = [1, 2, 41, 3, 4, 5]
    assert diff_token_weights(chosen, rejected, G) == ([G, G, G, 1, 1, 1], [G, G, G, 1, 1, 1])


def test_identical_answers_are_all_weight_one():
    ids = [5, 6, 7, 8, 9]
    assert diff_token_weights(ids, ids, G) == ([1.0] * 5, [1.0] * 5)


def test_completely_different_answers_are_all_changed():
    # no match at all: the single gap is the whole of both answers
    assert diff_token_weights([4, 5, 6, 7], [1, 2, 3], G) == ([G] * 4, [G] * 3)


def test_multiple_changes():
    # kept blocks [1 2 3], [4 5 6], [7 8 9]; gaps 50 -> 51 52 and 60 61 -> 62
    rejected = [1, 2, 3, 50, 4, 5, 6, 60, 61, 7, 8, 9]
    chosen = [1, 2, 3, 51, 52, 4, 5, 6, 62, 7, 8, 9]
    chosen_w, rejected_w = diff_token_weights(chosen, rejected, G)
    assert chosen_w == [1, 1, 1, G, G, 1, 1, 1, G, 1, 1, 1]
    assert rejected_w == [1, 1, 1, G, 1, 1, 1, G, G, 1, 1, 1]


def test_difflib_autojunk_is_kept_as_upstream():
    # chosen has 200 tokens, so difflib's autojunk treats a token seen more than 200 // 100 + 1 = 3 times
    # (here 7, five times) as "popular": it cannot seed a match. The shared run 7 7 7 7 7 is then never
    # found, nothing is kept, and both answers are changed throughout (upstream uses the default autojunk).
    rejected = [50, 7, 7, 7, 7, 7, 51]
    chosen = [60, 7, 7, 7, 7, 7, 61] + list(range(1000, 1193))
    chosen_w, rejected_w = diff_token_weights(chosen, rejected, G)
    assert chosen_w == [G] * 200 and rejected_w == [G] * 7


def _upstream_diff_ids(a_seq: list[int], b_seq: list[int], min_match_size: int = 3) -> tuple[list[int], list[int]]:
    """Changed indices of (a = rejected, b = chosen), written from the description of Muffin's get_diff_ids:
    alternate gap/match spans over the kept matching blocks, then keep gaps non-empty on both sides."""
    blocks = difflib.SequenceMatcher(None, a_seq, b_seq).get_matching_blocks()
    blocks = [m for m in blocks[:-1] if m.size >= min_match_size] + [blocks[-1]]
    a_changed: set[int] = set()
    b_changed: set[int] = set()
    a_end = b_end = 0
    for m in blocks:
        a_gap, b_gap = range(a_end, m.a), range(b_end, m.b)
        if len(a_gap) and len(b_gap):
            a_changed.update(a_gap)
            b_changed.update(b_gap)
        a_end, b_end = m.a + m.size, m.b + m.size
    return sorted(a_changed), sorted(b_changed)


def test_weights_agree_with_upstream_on_random_edits():
    rng = random.Random(0)
    for trial in range(300):
        length = rng.choice([5, 30, 250])  # 250: autojunk applies
        vocab = rng.choice([4, 20, 400])
        rejected = [rng.randrange(vocab) for _ in range(length)]
        chosen = list(rejected)
        for _ in range(rng.randrange(4)):
            at = rng.randrange(len(chosen) + 1)
            chosen[at : at + rng.randrange(3)] = [rng.randrange(vocab) for _ in range(rng.randrange(4))]
        rejected_ids, chosen_ids = _upstream_diff_ids(rejected, chosen)
        chosen_w, rejected_w = diff_token_weights(chosen, rejected, 2.0)
        assert [i for i, w in enumerate(chosen_w) if w == 2.0] == chosen_ids, trial
        assert [i for i, w in enumerate(rejected_w) if w == 2.0] == rejected_ids, trial


# ---------------------------------------------------------------- per-token log-probs, scores, loss
def _log_softmax(row: list[float], index: int) -> float:
    return row[index] - math.log(sum(math.exp(v) for v in row))


def test_selective_logps_is_the_log_softmax_at_the_label():
    logits = [[0.0, 1.0, 2.0], [3.0, 0.5, -1.0], [1.0, 1.0, 1.0], [400.0, -300.0, 399.0]]
    labels = [2, 0, 1, 2]
    logps = selective_logps(torch.tensor(logits), torch.tensor(labels))
    expected = [_log_softmax(row, label) for row, label in zip(logits[:3], labels[:3])]
    assert logps[:3].tolist() == pytest.approx(expected, abs=1e-6)
    assert logps[2].item() == pytest.approx(math.log(1 / 3), abs=1e-6)  # uniform logits
    assert logps[3].item() == pytest.approx(-math.log1p(math.e), abs=1e-5)  # large logits: no overflow
    bf16 = selective_logps(torch.tensor(logits[:3], dtype=torch.bfloat16), torch.tensor(labels[:3]))
    assert bf16.dtype == torch.float32


def test_sequence_logps_sum_and_average_with_weights_and_mask():
    per_token = torch.tensor([[-1.0, -2.0, -3.0, -4.0], [-0.5, -1.5, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    weights = torch.tensor([[1.0, 5.0, 1.0, 7.0], [2.0, 1.0, 9.0, 9.0]])  # masked weights must not count
    # row 0: -1*1 - 2*5 - 3*1 = -14, weight sum 7; row 1: -0.5*2 - 1.5*1 = -2.5, weight sum 3
    assert sequence_logps(per_token, mask, weights).tolist() == pytest.approx([-14.0, -2.5])
    assert sequence_logps(per_token, mask, weights, average=True).tolist() == pytest.approx([-2.0, -2.5 / 3])
    # no weights: plain sum and mean log-prob
    assert sequence_logps(per_token, mask).tolist() == pytest.approx([-6.0, -2.0])
    assert sequence_logps(per_token, mask, average=True).tolist() == pytest.approx([-2.0, -1.0])


def test_ddpo_loss_and_rewards_by_hand():
    beta = 0.5
    policy_chosen, policy_rejected = torch.tensor([-10.0, -3.0]), torch.tensor([-12.0, -2.0])
    ref_chosen, ref_rejected = torch.tensor([-11.0, -3.0]), torch.tensor([-11.0, -4.0])
    losses, chosen_rewards, rejected_rewards = ddpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected,
                                                         beta)
    # pair 0: rewards 0.5 * (-10 + 11) = 0.5 and 0.5 * (-12 + 11) = -0.5, margin 1 -> log(1 + e^-1)
    # pair 1: rewards 0 and 0.5 * (-2 + 4) = 1, margin -1 -> log(1 + e^1)
    assert chosen_rewards.tolist() == pytest.approx([0.5, 0.0])
    assert rejected_rewards.tolist() == pytest.approx([-0.5, 1.0])
    assert losses.tolist() == pytest.approx([math.log(1 + math.exp(-1)), math.log(1 + math.exp(1))])
    # policy == reference: the loss is log 2 whatever the scores
    assert ddpo_loss(policy_chosen, policy_rejected, policy_chosen, policy_rejected, beta)[0].tolist() == \
        pytest.approx([math.log(2)] * 2)


def test_ddpo_loss_from_weighted_token_logps_by_hand():
    # one pair; the chosen answer's token 1 and the rejected answer's token 2 were changed (gamma 3)
    gamma, beta = 3.0, 0.1
    policy = torch.tensor([[-0.2, -1.0, -0.4], [-0.3, -0.6, -2.0]])
    reference = torch.tensor([[-0.3, -1.5, -0.4], [-0.3, -0.5, -1.0]])
    mask = torch.ones(2, 3)
    weights = torch.tensor([[1.0, gamma, 1.0], [1.0, 1.0, gamma]])
    for average in (False, True):
        s_pi = sequence_logps(policy, mask, weights, average)
        s_ref = sequence_logps(reference, mask, weights, average)
        losses, chosen_r, rejected_r = ddpo_loss(s_pi[:1], s_pi[1:], s_ref[:1], s_ref[1:], beta)
        norm = 5.0 if average else 1.0  # sum of weights of each answer: 1 + 3 + 1
        d_chosen = (-0.2 + 3 * -1.0 - 0.4 - (-0.3 + 3 * -1.5 - 0.4)) / norm  # = 1.6 / norm
        d_rejected = (-0.3 - 0.6 + 3 * -2.0 - (-0.3 - 0.5 + 3 * -1.0)) / norm  # = -3.1 / norm
        assert chosen_r.item() == pytest.approx(beta * d_chosen)
        assert rejected_r.item() == pytest.approx(beta * d_rejected)
        assert losses.item() == pytest.approx(-math.log(1 / (1 + math.exp(-beta * (d_chosen - d_rejected)))))


def _dpo_loss(policy_chosen: list[float], policy_rejected: list[float], ref_chosen: list[float],
              ref_rejected: list[float], beta: float) -> float:
    """Plain DPO on summed token log-probs (Rafailov et al.), written out independently."""
    margin = (sum(policy_chosen) - sum(ref_chosen)) - (sum(policy_rejected) - sum(ref_rejected))
    return math.log(1 + math.exp(-beta * margin))


def test_gamma_one_is_standard_dpo():
    rng = random.Random(1)
    chosen_ids, rejected_ids = [1, 2, 3, 4, 9, 5, 6, 7], [1, 2, 3, 4, 8, 8, 5, 6, 7]
    n_c, n_r = len(chosen_ids), len(rejected_ids)
    width = max(n_c, n_r)
    tokens = {name: [-rng.uniform(0.1, 3.0) for _ in range(width)] for name in ("pc", "pr", "rc", "rr")}
    mask = torch.tensor([[1] * n_c + [0] * (width - n_c), [1] * n_r + [0] * (width - n_r)])

    def loss(gamma: float) -> float:
        chosen_w, rejected_w = diff_token_weights(chosen_ids, rejected_ids, gamma)
        weights = torch.tensor([chosen_w + [0.0] * (width - n_c), rejected_w + [0.0] * (width - n_r)])
        policy = sequence_logps(torch.tensor([tokens["pc"], tokens["pr"]]), mask, weights)
        reference = sequence_logps(torch.tensor([tokens["rc"], tokens["rr"]]), mask, weights)
        return ddpo_loss(policy[:1], policy[1:], reference[:1], reference[1:], beta=0.5)[0].item()

    dpo = _dpo_loss(tokens["pc"][:n_c], tokens["pr"][:n_r], tokens["rc"][:n_c], tokens["rr"][:n_r], beta=0.5)
    assert loss(1.0) == pytest.approx(dpo, rel=1e-6)
    assert loss(5.0) != pytest.approx(dpo, rel=1e-3)  # the weights do matter once gamma != 1


# ---------------------------------------------------------------- the trainer on a tiny model
@pytest.fixture(scope="module")
def ddpo_setup(tmp_path_factory):
    from rlhfv_nb.config import load_config
    from rlhfv_nb.logps import reference_logps
    from rlhfv_nb.modeling import load_model, load_processor
    from rlhfv_nb.pipeline import ddpo_dataset, tokenise_pairs

    params = make_run(tmp_path_factory.mktemp("ddpo") / "run", pairs=4)
    params["ddpo"].update(max_steps=5, batch_size=4, lr=2e-3, use_average=False, sft_weight=0.0)  # the pure DDPO loss
    cfg = load_config(CPU_TINY, **params)
    processor = load_processor(cfg.run_path / "base", cfg.model)
    model = load_model(cfg.run_path / "base", cfg.model)
    rows, bad = tokenise_pairs(cfg, processor)
    assert len(rows) == 4 and bad.count == 0
    reference = reference_logps(model, processor, rows, cfg.run_path / "ref.jsonl", batch_size=3, progress=False)
    pairs = ddpo_dataset(rows, reference, cfg.ddpo.gamma, cfg.ddpo.min_match)
    assert any(cfg.ddpo.gamma in w for w in pairs["chosen_weights"])  # the fixture has changed tokens
    return cfg, model, processor, pairs


def _batch_loss(cfg, model, processor, pairs) -> tuple[float, dict]:
    """DDPOTrainer.compute_loss on all pairs as one batch, with the trainer's own collator."""
    from rlhfv_nb.features import PairCollator
    from rlhfv_nb.pair_logps import shares_prefix
    from rlhfv_nb.train import DDPOTrainer, training_arguments

    trainer = DDPOTrainer(model=model, args=training_arguments(cfg.ddpo, cfg.run_path / "probe", cfg.seed),
                          ddpo=cfg.ddpo)
    batch = PairCollator(processor, shares_prefix(model))([pairs[i] for i in range(len(pairs))])
    with torch.no_grad():
        loss = trainer.compute_loss(model, dict(batch)).item()
    metrics = {name: values[-1] for name, values in trainer._metrics.items()}
    return loss, metrics


def test_policy_equals_reference_at_step_zero(ddpo_setup):
    cfg, model, processor, pairs = ddpo_setup
    loss, metrics = _batch_loss(cfg, model, processor, pairs)
    # the reference cache was computed in other batches (of 3), yet every score matches the training forward
    assert loss == pytest.approx(math.log(2), abs=1e-5)
    assert metrics["rewards/chosen"] == pytest.approx(0.0, abs=1e-5)
    for name in ("logps/chosen", "logps/rejected", "scores/chosen", "scores/rejected"):
        ref = name.replace("/", "_ref/")
        assert metrics[name] == pytest.approx(metrics[ref], abs=1e-4)
    # logps are the plain summed log-probs; scores the gamma-weighted sums the loss compares (use_average off here)
    rows = [pairs[i] for i in range(len(pairs))]
    plain = [sum(r["ref_chosen_logps"]) for r in rows]
    weighted = [sum(w * lp for w, lp in zip(r["chosen_weights"], r["ref_chosen_logps"])) for r in rows]
    assert metrics["logps_ref/chosen"] == pytest.approx(sum(plain) / len(rows), abs=1e-4)
    assert metrics["scores_ref/chosen"] == pytest.approx(sum(weighted) / len(rows), abs=1e-4)
    assert not cfg.ddpo.use_average and metrics["scores_ref/chosen"] != pytest.approx(metrics["logps_ref/chosen"])


def test_ddpo_steps_lower_the_loss_on_a_fixed_batch(ddpo_setup, tmp_path):
    from rlhfv_nb.train import read_log, train_ddpo

    cfg, model, processor, pairs = ddpo_setup
    before, _ = _batch_loss(cfg, model, processor, pairs)
    # batch_size == number of pairs: every step sees the same (whole) batch
    train_ddpo(model, processor, pairs, cfg.ddpo, cfg.model, tmp_path / "ddpo", cfg.seed)
    after, metrics = _batch_loss(cfg, model, processor, pairs)
    assert after < before - 0.01
    assert metrics["rewards/margins"] > 0
    log = [r for r in read_log(tmp_path / "ddpo" / "log.jsonl") if "ddpo_loss" in r]
    assert len(log) == cfg.ddpo.max_steps and log[0]["ddpo_loss"] == pytest.approx(math.log(2), abs=1e-5)


def test_sft_term_subtracts_alpha_times_chosen_score(ddpo_setup):
    cfg, model, processor, pairs = ddpo_setup
    alpha = 0.5
    cfg = dataclasses.replace(cfg, ddpo=dataclasses.replace(cfg.ddpo, sft_weight=alpha))
    loss, metrics = _batch_loss(cfg, model, processor, pairs)
    # upstream's optional term: loss = DDPO loss - alpha * mean S_pi(chosen), the (weighted) DDPO score
    assert loss == pytest.approx(metrics["ddpo_loss"] - alpha * metrics["scores/chosen"], rel=1e-5)
    assert loss != pytest.approx(metrics["ddpo_loss"], rel=1e-3)  # the term is not negligible here


def test_reference_is_computed_under_the_training_precision(tmp_path):
    """bf16 autocast on CPU: the reference pass runs under the autocast training uses, so at step 0 the policy's
    plain and weighted scores equal the cached ones (here exactly; 1e-4 allowed), while an fp32 reference of the
    same model differs by far more than that."""
    from rlhfv_nb.config import load_config
    from rlhfv_nb.launch import ddpo_inputs, launch_stage
    from rlhfv_nb.logps import read_cache
    from rlhfv_nb.train import read_log

    params = make_run(tmp_path / "run", pairs=8)
    params["ddpo"].update(max_steps=1, batch_size=4, logging_steps=1, bf16=True)
    cfg = load_config(CPU_TINY, **params)
    rows, cache = ddpo_inputs(cfg, compute_missing=True)
    fp32 = load_config(CPU_TINY, **{**params, "ddpo": {**params["ddpo"], "bf16": False},
                                    "run_dir": str(tmp_path / "fp32")})
    fp32.layout.root.mkdir()
    for name in ("base", "feedback"):
        (fp32.layout.root / name).symlink_to(cfg.layout.root / name)
    _, fp32_cache = ddpo_inputs(fp32, compute_missing=True)
    bf16_logps, fp32_logps = read_cache(cache), read_cache(fp32_cache)
    gap = max(abs(sum(bf16_logps[uid]["chosen"]) - sum(fp32_logps[uid]["chosen"])) for uid in bf16_logps)
    assert gap > 1e-3  # what the policy/reference mismatch at step 0 was with an fp32 reference

    final = launch_stage(cfg, "ddpo", gamma=2.0)
    first = next(r for r in read_log(final.parent / "log.jsonl") if "ddpo_loss" in r)
    for name in ("logps/chosen", "logps/rejected", "scores/chosen", "scores/rejected"):
        assert first[name] == pytest.approx(first[name.replace("/", "_ref/")], abs=1e-4)
    assert first["ddpo_loss"] == pytest.approx(math.log(2), abs=1e-5)


def test_pairs_are_tokenised_once_per_process_for_the_same_inputs(tmp_path):
    from rlhfv_nb.config import load_config
    from rlhfv_nb.data import read_parquet, write_parquet
    from rlhfv_nb.modeling import load_processor
    from rlhfv_nb.pipeline import preferences_path, prepared_pairs

    params = make_run(tmp_path / "run", pairs=4)
    cfg = load_config(CPU_TINY, **params)
    processor = load_processor(cfg.layout.base, cfg.model)
    rows, _, cache = prepared_pairs(cfg, processor)
    assert prepared_pairs(cfg, processor)[0] is rows and len(rows) == 4  # a second gamma reuses them
    shorter = load_config(CPU_TINY, **{**params, "data": {**params["data"], "max_length": 40}})
    assert prepared_pairs(shorter, processor)[0] is not rows  # other length settings: tokenised again
    path = preferences_path(cfg)
    write_parquet(list(read_parquet(path))[:3], path)  # the data changed: tokenised again, another cache key
    again, _, other_cache = prepared_pairs(cfg, processor)
    assert len(again) == 3 and other_cache != cache
