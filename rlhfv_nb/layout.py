"""Every path of a run folder, in one place: no other module joins run-folder paths.

    data/          stage 01: sft.parquet, eval.parquet, preferences.parquet (loaded pairs), feedback_scenes.json,
                   world_synonyms.txt, report.json; logps/ (the reference cache, written by stage 03)
    base/          the tiny base model (stage 02 builds it; a hub base lives elsewhere)
    sft/           stage 02: log.jsonl, checkpoints/, final/
    feedback/      stage 02: answers-<key>.jsonl (per SFT model and sampling settings), rlhfv_feedback.parquet,
                   preferences.parquet (collected pairs), stats.json
    ddpo/gammaG/   stage 03: log.jsonl, checkpoints/, final/
    eval/          stage 04: one folder per model, judge_cache/
    rlaifv/        stage 06 (RLAIF-V's loop): labeler/ (the world labeler), round-0/ (the start policy's evaluation),
                   round-K/ (one `RoundFolder` per round)
    stages/        one manifest per finished stage (rlhfv_nb.manifests)
    notebooks/, logs/, launch/, params.yaml, metrics.json, runner.lock
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rlhfv_nb.generate import GenerationSettings


@dataclass(frozen=True)
class TrainingFolder:
    """A training stage's folder (`sft/`, `ddpo/gammaG/`): its log, its checkpoints and the final model."""

    root: Path

    @property
    def log(self) -> Path:
        return self.root / "log.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def final(self) -> Path:
        return self.root / "final"

    @property
    def epochs(self) -> Path:
        """The models at the end of each epoch but the last (`train.save_epochs`), for checkpoint selection."""
        return self.root / "epochs"

    def epoch(self, number: int) -> Path:
        return self.epochs / f"epoch-{number}"

    def saved_epochs(self) -> list[int]:
        """The epochs whose model is saved, in order (a model being written, `*.partial`, is not one)."""
        return sorted(int(path.name.removeprefix("epoch-")) for path in self.epochs.glob("epoch-*")
                      if path.is_dir() and path.name.removeprefix("epoch-").isdigit())


@dataclass(frozen=True)
class RunLayout:
    """The paths of the run folder `root`."""

    root: Path

    # stage 01: data
    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def sft_rows(self) -> Path:
        return self.data / "sft.parquet"

    @property
    def eval_rows(self) -> Path:
        return self.data / "eval.parquet"

    @property
    def loaded_preferences(self) -> Path:
        """Preference pairs loaded from a hub id or file by stage 01."""
        return self.data / "preferences.parquet"

    @property
    def feedback_scenes(self) -> Path:
        return self.data / "feedback_scenes.json"

    @property
    def world_synonyms(self) -> Path:
        return self.data / "world_synonyms.txt"

    @property
    def data_report(self) -> Path:
        return self.data / "report.json"

    @property
    def reference_cache_dir(self) -> Path:
        return self.data / "logps"

    # stage 02: base, SFT, feedback
    @property
    def base(self) -> Path:
        return self.root / "base"

    @property
    def base_built(self) -> bool:
        """Whether the tiny base model is complete (its config is written last, by the rename)."""
        return (self.base / "config.json").exists()

    @property
    def base_recipe(self) -> Path:
        """What the tiny base model was built from (`pipeline.base_recipe`)."""
        return self.base / "recipe.json"

    @property
    def base_partial(self) -> Path:
        """Where the tiny base is built; renamed to `base` when complete."""
        return self.root / "base.partial"

    @property
    def vision_pretrain_log(self) -> Path:
        return self.base / "vision_pretrain.json"

    @property
    def sft(self) -> TrainingFolder:
        return TrainingFolder(self.root / "sft")

    @property
    def feedback(self) -> Path:
        return self.root / "feedback"

    def feedback_answers(self, settings: GenerationSettings, model_id: str) -> Path:
        """The SFT model's sampled answers, one file per model fingerprint and sampling settings."""
        from rlhfv_nb.generate import answers_header, header_key

        return self.feedback / f"answers-{header_key(answers_header(settings, model=model_id))}.jsonl"

    @property
    def feedback_records(self) -> Path:
        """The collected pairs in the RLHF-V-Dataset schema."""
        return self.feedback / "rlhfv_feedback.parquet"

    @property
    def feedback_preferences(self) -> Path:
        """The collected pairs after the same loader as hub data."""
        return self.feedback / "preferences.parquet"

    @property
    def feedback_stats(self) -> Path:
        return self.feedback / "stats.json"

    # stage 03: DDPO
    def ddpo(self, gamma: float) -> TrainingFolder:
        return TrainingFolder(self.root / "ddpo" / f"gamma{gamma:g}")

    # stage 04: evaluation
    @property
    def eval(self) -> Path:
        return self.root / "eval"

    def eval_model(self, slug: str) -> Path:
        return self.eval / slug

    @property
    def judge_cache(self) -> Path:
        return self.eval / "judge_cache"

    # stage 06: RLAIF-V's iterative loop
    @property
    def rlaifv(self) -> Path:
        return self.root / "rlaifv"

    @property
    def rlaifv_labeler(self) -> Path:
        """The miniature's world labeler: its classifier weights and report."""
        return self.rlaifv / "labeler"

    def rlaifv_round(self, number: int) -> RoundFolder:
        """Round `number` of the loop (0: the start policy, evaluated only)."""
        return RoundFolder(self.rlaifv / f"round-{number}")

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    # bookkeeping
    def manifest(self, stage: str) -> Path:
        return self.root / "stages" / f"{stage}.json"

    @property
    def notebooks(self) -> Path:
        return self.root / "notebooks"

    def notebook(self, stage: str) -> Path:
        return self.notebooks / f"{stage}.ipynb"

    def log(self, stage: str) -> Path:
        return self.root / "logs" / f"{stage}.log"

    def launch_params(self, stage: str) -> Path:
        return self.root / "launch" / f"{stage}.yaml"

    @property
    def params(self) -> Path:
        return self.root / "params.yaml"

    @property
    def lock(self) -> Path:
        """Held by the one runner working on this folder (`rlhfv_nb.lock`)."""
        return self.root / "runner.lock"



@dataclass(frozen=True)
class RoundFolder:
    """One round of RLAIF-V's loop, `rlaifv/round-K/`:

        candidates/answers-I.jsonl   candidate I of every prompt, sampled from the round's starting policy
        scores.json                  every candidate's claims, the labeler's P(yes) and verdicts, its true score
        feedback/                    rlaifv_pairs.parquet (RLAIF-V-Dataset schema), preferences.parquet (loaded)
        data/logps/, ddpo/gammaG/    the reference log-probs and DDPO models (as in a run folder: `run`)
        eval/                        world answers of the round's models (selection and evaluation)
        started.json, round.json     the inputs' hash when the round began, and its manifest when it finished
    """

    root: Path

    @property
    def run(self) -> RunLayout:
        """The round as a run folder: where the stage functions (tokenise_pairs, compute_reference, run_ddpo) read
        its pairs and write its reference and models."""
        return RunLayout(self.root)

    def candidates(self, index: int) -> Path:
        return self.root / "candidates" / f"answers-{index}.jsonl"

    @property
    def scores(self) -> Path:
        return self.root / "scores.json"

    @property
    def pairs(self) -> Path:
        """The round's pairs in the RLAIF-V-Dataset schema (before the loader)."""
        return self.run.feedback / "rlaifv_pairs.parquet"

    def eval_answers(self, split: str, model: str) -> Path:
        """Answers of `model` (e.g. "gamma5") on a world split ("select" or "eval")."""
        return self.root / "eval" / f"{split}-{model}.jsonl"

    @property
    def started(self) -> Path:
        return self.root / "started.json"

    @property
    def manifest(self) -> Path:
        return self.root / "round.json"
