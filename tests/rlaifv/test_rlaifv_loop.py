"""RLAIF-V's loop in miniature: the world labeler on hand-made scenes, the feedback audit against the truth, a
2-round loop on a reduced cpu-tiny run that resumes after a kill between rounds and inside a round, and a round on a
prompt dataset, trained under `accelerate launch`, that picks among every gamma's models after each epoch by
Object HalBench and world CHAIR."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from rlhfv_nb import pipeline, runner
from rlhfv_nb.config import Config, ConfigError, load_config
from rlhfv_nb.data import load_raw, write_parquet
from rlhfv_nb.evaluate import benchmarks
from rlhfv_nb.evaluate.suite import Sources
from rlhfv_nb.files import read_json
from rlhfv_nb.rlaifv.audit import audit_feedback
from rlhfv_nb.rlaifv.claims import WorldClaims
from rlhfv_nb.rlaifv.loop import run_loop
from rlhfv_nb.rlaifv.measure import measure
from rlhfv_nb.rlaifv.pairs import RLAIFV_COLUMNS
from rlhfv_nb.rlaifv.report import round_table
from rlhfv_nb.rlaifv.scoring import ClaimVerdict, ScoredAnswer, score_answers
from rlhfv_nb.rlaifv.select import SelectionError, SelectMetric
from rlhfv_nb.rlaifv.world_labeler import LabelerTraining, WorldLabeler, scene_images, train_or_load
from rlhfv_nb.world import Scene, WorldConfig, WorldObject, make_fresh_scenes
from tests.tiny_run import CPU_TINY, SHAPE

WORLD = WorldConfig()
SCENE = Scene((WorldObject("ball", "red", 0, 0), WorldObject("box", "blue", 1, 1)))


@pytest.fixture(scope="module")
def labeler(tmp_path_factory: pytest.TempPathFactory) -> WorldLabeler:
    check = make_fresh_scenes(WORLD, 50, 7)
    trained, report = train_or_load(tmp_path_factory.mktemp("labeler"), WORLD, LabelerTraining(300, 300), check)
    assert 0.85 <= report["cell_accuracy"] < 1.0  # a model: right on most cells, not all
    return trained


def test_world_labeler_answers_claim_questions_about_a_hand_made_scene(labeler: WorldLabeler) -> None:
    questions = {
        "Is there a red ball in the top left?": True,
        "Is there a ball in the image?": True,
        "Is there a blue box in the bottom right?": True,
        "Is there a blue cube in the image?": True,  # a synonym, read as its category
        "Is there a red ball in the bottom right?": False,  # wrong place
        "Is there a green ball in the top left?": False,  # wrong colour
        "Is there a star in the image?": False,  # absent
        "Is there a tent in the top right?": False,  # an empty cell
    }
    (image,) = scene_images([SCENE], WORLD)
    p_yes = labeler.p_yes([image] * len(questions), list(questions))
    assert {q: p >= 0.5 for q, p in zip(questions, p_yes)} == questions
    assert all(0.0 <= p <= 1.0 for p in p_yes)
    with pytest.raises(ValueError, match="names 0 world objects"):
        labeler.p_yes([image], ["Is it sunny?"])


def test_world_labeler_scores_hand_made_answers(labeler: WorldLabeler) -> None:
    answers = ["A red ball is in the top left. A blue box is in the bottom right.",
               "A red ball is in the top left. A green star is at the top.",
               "There is a purple tent in the bottom left, a yellow kite in the top right."]
    (scored,) = score_answers(scene_images([SCENE], WORLD), [answers], WorldClaims(WORLD), labeler)
    assert [answer.score for answer in scored] == [0, -1, -2]
    assert [v.rejected for v in scored[1].claims] == [False, True]


def _verdict(claim: str, rejected: bool) -> ClaimVerdict:
    question = WorldClaims(WORLD).questions([claim])[0]
    return ClaimVerdict(claim, question, 0.0 if rejected else 1.0, rejected)


def test_audit_counts_labeler_mistakes_and_wrongly_ordered_pairs() -> None:
    true_ball, false_star = "There is a red ball in the top left.", "There is a star in the image."
    # The labeler accepts the false star and rejects the true ball: answer 1 (true) scores below answer 0 (false).
    wrong = ScoredAnswer("A star.", (_verdict(false_star, rejected=False),))
    right = ScoredAnswer("A red ball in the top left.", (_verdict(true_ball, rejected=True),))
    also_right = ScoredAnswer("A ball.", (_verdict("There is a ball in the image.", rejected=False),))
    report = audit_feedback([SCENE], [[wrong, right, also_right]], [[(0, 1), (2, 1)]], WorldClaims(WORLD))
    assert report["questions"] == 3 and report["false_claims"] == 1
    assert report["labeler_accuracy"] == pytest.approx(1 / 3)
    assert report["pairs"] == 2
    assert report["wrongly_ordered"] == 0.5  # (0, 1): chosen is false, rejected true
    assert report["tied_in_truth"] == 0.5  # (2, 1): both true
    assert report["true_score_mean"] == pytest.approx(-1 / 3)


def test_config_section_is_checked_and_turns_notebook_06_on() -> None:
    with pytest.raises(ConfigError, match="rlaifv.rounds: must be >= 0"):
        load_config(CPU_TINY, rlaifv={"rounds": -1})
    with pytest.raises(ConfigError, match="rlaifv.pairs_per_round: must be >= 0, got -5"):
        load_config(CPU_TINY, rlaifv={"pairs_per_round": -5})
    with pytest.raises(ConfigError, match="rlaifv.feedback: .*needs splitter 'world'"):
        load_config(CPU_TINY, rlaifv={"feedback": {"labeler": "world", "splitter": "llm", "splitter_model": "m"}})
    with pytest.raises(ConfigError, match=r"rlaifv.select_by\[1\] 'POPE': unknown benchmark"):
        load_config(CPU_TINY, rlaifv={"select_by": ["world.CHAIRi", "POPE"], "select_images": 5})
    with pytest.raises(ConfigError, match="rlaifv.select_by: world metrics are measured on rlaifv.select_images"):
        load_config(CPU_TINY, rlaifv={"select_by": ["world.CHAIRs"]})
    with pytest.raises(ConfigError, match="select_checkpoints: epochs needs rlaifv.select_by"):
        load_config(CPU_TINY, rlaifv={"select_checkpoints": "epochs"})
    with pytest.raises(ConfigError, match="rlaifv.prompts: file or folder 'no/such/prompts.parquet' does not exist"):
        load_config(CPU_TINY, rlaifv={"prompts": "no/such/prompts.parquet"})
    assert "06_rlaifv" not in [s.name for s in runner.stages(cfg=load_config(CPU_TINY))]
    preset = load_config(CPU_TINY.with_name("cpu-tiny-rlaifv.yaml"))
    assert preset.rlaifv.rounds >= 3 and "06_rlaifv" in [s.name for s in runner.stages(cfg=preset)]


# ---------------------------------------------------------------- the loop on a reduced cpu-tiny run

REDUCED = {
    "model": {"tiny": {**vars(SHAPE), "image_size": 48, "patch_size": 24, "vision_pretrain_steps": 30}},
    "data": {"sft_images": 60, "feedback_images": 2, "eval_images": 6, "max_length": 128},
    "sft": {"max_steps": 100, "batch_size": 8, "lr": 0.005, "logging_steps": 50},
    "ddpo": {"max_steps": 2, "batch_size": 4, "logging_steps": 1, "ablation_gammas": [1.0]},
    "evaluation": {"max_new_tokens": 24},
}
LOOP = {"prompts_per_round": 6, "labeler_images": 40, "labeler_steps": 30, "select_images": 3,
        "select_by": ["world.CHAIRi"],
        "feedback": {"candidates": 3, "max_new_tokens": 24, "temperature": 1.0, "labeler": "world"}}


def _config(run_dir: Path, rounds: int) -> Config:
    return load_config(CPU_TINY, run_dir=str(run_dir), rlaifv={**LOOP, "rounds": rounds}, **REDUCED)


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_two_rounds_resume_after_a_kill_between_rounds_and_inside_one(tmp_path: Path) -> None:
    one = _config(tmp_path, rounds=1)
    pipeline.prepare_data(one)
    pipeline.run_sft(one)
    first = run_loop(one, progress=False)  # round 1 finishes; the process dies before round 2 starts
    round1 = one.layout.rlaifv_round(1)
    assert [r["round"] for r in first["rounds"]] == [0, 1]
    before = _mtimes(round1.root)

    two = _config(tmp_path, rounds=2)
    section = run_loop(two, progress=False)
    assert _mtimes(round1.root) == before  # round 1 skipped: nothing of it generated, scored or trained again
    rows = section["rounds"]
    assert [r["round"] for r in rows] == [0, 1, 2] and rows[1] == first["rounds"][1]
    round2 = two.layout.rlaifv_round(2)
    # round 2 started from round 1's picked model, trained on its own pairs in the RLAIF-V-Dataset schema
    assert rows[1]["policy"] == "sft/final"
    assert rows[2]["policy"] == f"rlaifv/round-1/ddpo/gamma{rows[1]['gamma']:g}/final"
    assert load_raw(str(round2.pairs)).column_names == list(RLAIFV_COLUMNS)
    assert list((round2.run.data / "logps").glob("ref-*.settings.json"))
    assert (round2.run.ddpo(5.0).final / "config.json").exists()
    assert rows[2]["trained_pairs"] == rows[2]["pairs"] > 0
    for row in rows[1:]:
        assert 0.0 <= row["labeler_accuracy"] <= 1.0 and 0.0 <= row["wrongly_ordered"] <= 1.0
        assert set(row["selection"]) == {"gamma=5", "gamma=1"}
    for row in rows:  # CHAIRi is None for a model that names no object (this SFT model is briefly trained)
        assert 0.0 <= row["CHAIRs"] <= 1.0 and (row["CHAIRi"] is None or 0.0 <= row["CHAIRi"] <= 1.0)
    metrics = json.loads(two.layout.metrics.read_text())["rlaifv"]
    assert metrics["rounds"] == rows and 0.0 < metrics["labeler"]["cell_accuracy"] < 1.0
    assert list(round_table(rows).index) == [0, 1, 2]

    # a kill inside round 2 (after its answers, before its manifest): the re-run keeps what was made
    candidates = _mtimes(round2.root / "candidates")
    round2.manifest.unlink()
    again = run_loop(two, progress=False)
    assert _mtimes(round2.root / "candidates") == candidates
    assert {k: v for k, v in again["rounds"][2].items() if k != "seconds"} == \
        {k: v for k, v in rows[2].items() if k != "seconds"}

    # notebook 06 through the runner: both rounds are finished, so it shows them without training again
    runner.run(CPU_TINY, only=["06_rlaifv"], progress=False,
               overrides={**REDUCED, "run_dir": str(tmp_path), "rlaifv": {**LOOP, "rounds": 2}})
    executed = nbformat.read(two.layout.notebook("06_rlaifv"), as_version=4)
    outputs = [output for cell in executed.cells if cell.cell_type == "code" for output in cell.outputs]
    (table,) = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert all(column in table for column in ("labeler_accuracy", "wrongly_ordered", "CHAIRs", "world.CHAIRi"))
    assert any("image/png" in o.get("data", {}) for o in outputs)  # CHAIR per round
    assert [r["round"] for r in read_json(two.layout.manifest("06_rlaifv"))["rounds"]] == [0, 1, 2]
    assert _mtimes(round2.root / "candidates") == candidates


COCO = Path(__file__).parents[1] / "evaluate" / "fixtures" / "coco"


def _prompt_file(path: Path, scenes: int) -> Path:
    """A prompt dataset of world images, each prompt in two rows (as a preference dataset repeats them)."""
    images = scene_images(make_fresh_scenes(WORLD, scenes, 11), WORLD)
    rows = [{"image": image, "question": "Describe the image.", "idx": 2 * i + k}
            for i, image in enumerate(images) for k in range(2)]
    return write_parquet(rows, path)


def _object_halbench_cache(cache: Path) -> None:
    """Object HalBench's prompt file (300 rows, as released) where the suite caches it (nothing downloaded): world
    images under COCO ids 1-4."""
    path = cache / "object_halbench" / Path(benchmarks.OBJECT_HALBENCH_URL).name
    path.parent.mkdir(parents=True)
    images = scene_images(make_fresh_scenes(WORLD, 4, 12), WORLD)
    path.write_text("".join(json.dumps({"image_id": 1 + i % 4, "question": "Describe this image in detail.",
                                        "image": base64.b64encode(images[i % 4]).decode()}) + "\n"
                            for i in range(300)))


@pytest.mark.slow
def test_a_round_on_a_prompt_dataset_picks_among_epochs_by_benchmarks(tmp_path: Path) -> None:
    prompts = _prompt_file(tmp_path / "prompts.parquet", 6)
    sources = Sources(cache_dir=tmp_path / "cache")
    _object_halbench_cache(tmp_path / "cache")
    select_by = ["object_halbench.CHAIRs", "world.CHAIRi"]
    cfg = load_config(CPU_TINY, run_dir=str(tmp_path / "run"), **{
        **REDUCED, "ddpo": {**REDUCED["ddpo"], "max_steps": -1, "epochs": 2.0, "batch_size": 2},
        "launch": {"num_processes": 2},  # each gamma trained by `accelerate launch` (2 CPU processes, gloo)
        "evaluation": {**REDUCED["evaluation"], "limit": 3, "coco_dir": str(COCO),
                       "object_halbench_extraction": "words"},
        "rlaifv": {**LOOP, "rounds": 1, "prompts": str(prompts), "select_by": select_by,
                   "select_checkpoints": "epochs"}})
    pipeline.prepare_data(cfg)
    pipeline.run_sft(cfg)
    section = run_loop(cfg, progress=False, sources=sources)
    start, row = section["rounds"]
    assert set(start["select"]) == set(select_by) and "CHAIRs" in start  # round 0: the SFT model, measured
    # every gamma's final model and its model after epoch 1 were measured on both metrics, on their own answers
    assert set(row["selection"]) == {"gamma=5", "gamma=5 epoch=1", "gamma=1", "gamma=1 epoch=1"}
    folder = cfg.layout.rlaifv_round(1)
    assert (folder.root / "launch" / "ddpo.yaml").exists()  # the params the launched processes read
    assert [folder.run.ddpo(gamma).saved_epochs() for gamma in (5.0, 1.0)] == [[1], [1]]
    for name, values in row["selection"].items():
        assert set(values) == set(select_by) and 0.0 <= values["object_halbench.CHAIRs"] <= 1.0
        slug = name.replace("=", "-").replace(" ", "-")
        assert len(list((folder.root / "eval" / slug / "object_halbench").glob("answers-*.jsonl"))) == 1
    # the picked model has the best mean rank: pandas' average ranks (no value last), the earlier model on ties
    table = pd.DataFrame(row["selection"]).T
    ranks = (table["object_halbench.CHAIRs"].rank(method="average", na_option="bottom")
             + table["world.CHAIRi"].astype(float).rank(method="average", na_option="bottom")) / 2
    picked = f"gamma={row['gamma']:g}" + ("" if row["epoch"] is None else f" epoch={row['epoch']}")
    assert picked == ranks.idxmin()
    assert row["select"] == row["selection"][picked]
    epoch_part = f"epochs/epoch-{row['epoch']}" if row["epoch"] else "final"
    assert row["model"] == f"rlaifv/round-1/ddpo/gamma{row['gamma']:g}/{epoch_part}"
    # the round's prompts are the dataset's, each once; its pairs name the dataset as their origin
    assert row["prompts"] == 6 and "labeler_accuracy" not in row  # no scenes behind a dataset's prompts
    pairs = load_raw(str(folder.pairs))
    assert set(pairs["origin_dataset"]) == {str(prompts)} and len(set(pairs["question"])) == 1

    # a benchmark that cannot score (MMHal-Bench's judge has no key) stops the selection, naming it
    with pytest.raises(SelectionError, match="selection benchmark mmhal_bench of model SFT: skipped: no OPENAI"):
        measure(cfg, folder, {"SFT": pipeline.sft_model_path(cfg)}, [SelectMetric.parse("mmhal_bench.score")],
                sources, progress=False)
