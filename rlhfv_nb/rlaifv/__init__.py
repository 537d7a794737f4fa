"""RLAIF-V's divide-and-conquer AI feedback (Yu et al., 2024): split each sampled answer into atomic claims, turn
each claim into a yes/no question, let a labeler model answer it about the image, score the answer by minus its
rejected claims, and pair higher- over lower-scored answers of a prompt in the RLAIF-V-Dataset schema.

Modules: `claims` (split and question transformation), `labeler` (local VLM or OpenAI-compatible endpoint),
`scoring`, `pairs`, `config` (`RlaifvFeedbackConfig`) and `build` (components from the config). docs/rlaifv.md
describes the method and what is built.
"""
