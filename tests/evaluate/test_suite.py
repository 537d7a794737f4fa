"""The benchmark suite end to end on a tiny random model: local COCO fixture, local data and judge servers."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import shutil
from pathlib import Path

import pytest
from conftest import FIXTURES, JUDGE_MODEL, FakeOpenAI
from PIL import Image
from test_benchmarks import pope_repository

from rlhfv_nb import pipeline
from rlhfv_nb.config import Config, TinyModelConfig, load_config
from rlhfv_nb.evaluate import benchmarks, paper
from rlhfv_nb.evaluate.benchmarks import read_jsonl
from rlhfv_nb.evaluate.llava_bench import SCORES_NUDGE
from rlhfv_nb.evaluate.suite import (
    WORLD_ATTRIBUTE_COLUMNS,
    WORLD_COLUMNS,
    Sources,
    answers_path,
    model_slug,
    paper_table,
    run_benchmarks,
    world_scores,
)
from rlhfv_nb.generate import GenerationSettings, answers_header, eval_settings, header_key
from rlhfv_nb.logps import model_fingerprint
from rlhfv_nb.modeling import build_tiny_model

CPU_TINY = Path(__file__).parents[2] / "params" / "cpu-tiny.yaml"

SHAPE = TinyModelConfig(image_size=24, patch_size=12, vision_hidden_size=32, vision_layers=1, vision_heads=2,
                        hidden_size=32, layers=1, heads=2, intermediate_size=64, vocab_size=320,
                        max_position_embeddings=256)
REAL = ["object_halbench", "pope", "mmhal_bench", "llava_bench"]
LIMIT = 3


def _jpeg(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(buffer, format="JPEG")
    return buffer.getvalue()


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    corpus = ["USER: <image>\nIs there a dog in the image? ASSISTANT: Yes, a dog sits on a chair.</s>"] * 8
    return str(build_tiny_model(corpus, SHAPE, tmp_path_factory.mktemp("model"), seed=0))


# the first three images of the released POPE files
POPE_IMAGES = (310196, 210789, 429109)


def _coco_images(folder: Path) -> Path:
    """`folder/val2014/` with an image for each fixture COCO id and the first official POPE images."""
    (folder / "val2014").mkdir(parents=True)
    for image_id in (*range(1, 7), *POPE_IMAGES):
        (folder / "val2014" / f"COCO_val2014_{image_id:012d}.jpg").write_bytes(_jpeg((image_id % 250, 80, 120)))
    return folder


@pytest.fixture
def coco(tmp_path: Path) -> Path:
    """The COCO fixture, images 5 and 6 (4 objects each) added for POPE, plus generated val2014 images."""
    shutil.copytree(FIXTURES / "coco" / "annotations", tmp_path / "coco" / "annotations")
    path = tmp_path / "coco" / "annotations" / "instances_val2014.json"
    instances = json.loads(path.read_text())
    for image_id, categories in ((5, (17, 70, 81, 88)), (6, (1, 3, 7, 51))):
        instances["images"].append({"id": image_id, "file_name": f"COCO_val2014_{image_id:012d}.jpg"})
        instances["annotations"] += [{"id": 1000 * image_id + c, "image_id": image_id, "category_id": c,
                                      "bbox": [0, 0, 5, 5]} for c in categories]
    path.write_text(json.dumps(instances))
    return _coco_images(tmp_path / "coco")


@pytest.fixture
def sources(file_server: tuple[str, Path], hub_server: tuple[str, dict[str, bytes]], tmp_path: Path) -> Sources:
    """Full-size Object HalBench, LLaVA-Bench and MMHal-Bench files on local servers."""
    url, root = file_server
    # Object HalBench: image ids 1, 2, 999 (999 has no COCO annotations) repeating
    _jsonl(root / "objhal.jsonl", [{"image_id": [1, 2, 999][i % 3], "question": "Describe this image in detail.",
                                    "image": base64.b64encode(_jpeg((i % 250, 0, 0))).decode()} for i in range(300)])
    questions = read_jsonl(FIXTURES / "qa_questions.jsonl")
    references = read_jsonl(FIXTURES / "qa_gpt4_answer.jsonl")
    contexts = read_jsonl(FIXTURES / "caps_boxes.jsonl")
    llava = root / "llava"  # laid out like the haotian-liu/LLaVA repository
    qa, table = llava / "playground" / "data" / "coco2014_val_qa_eval", llava / "llava" / "eval" / "table"
    for folder in (qa, table):
        folder.mkdir(parents=True)
    _jsonl(qa / "qa90_questions.jsonl", [{**questions[i % 3], "question_id": i} for i in range(90)])
    _jsonl(qa / "qa90_gpt4_answer.jsonl", [{**references[i % 3], "question_id": i} for i in range(90)])
    _jsonl(table / "caps_boxes_coco2014_val_80.jsonl",
           contexts + [{"image": f"{i:012d}.jpg", "captions": [], "instances": []} for i in range(100, 178)])
    pope_repository(root / "pope")
    hub, files = hub_server
    items = json.loads((FIXTURES / "mmhal_template.json").read_text())
    files["response_template.json"] = json.dumps(items * 12).encode()
    for item in items:
        files["images/" + item["image_src"].rsplit("/", 1)[-1]] = _jpeg((0, 200, 0))
    return Sources(cache_dir=tmp_path / "cache", object_halbench_url=f"{url}/objhal.jsonl",
                   llava_bench_url=f"{url}/llava/", pope_url=f"{url}/pope/output/coco/", hub_endpoint=hub)


EXTRACTOR = "extractor-model"


def _config(run_dir: Path, benchmarks: list[str], coco_dir: Path | None, judge_url: str | None = None,
            **evaluation) -> Config:
    return load_config(CPU_TINY, name="test-suite", run_dir=str(run_dir), model={"tiny": vars(SHAPE)}, evaluation={
        "benchmarks": benchmarks, "max_new_tokens": 6, "num_beams": 1, "batch_size": 4, "limit": LIMIT,
        "coco_dir": str(coco_dir) if coco_dir else None,
        **evaluation, "judge": {"model": JUDGE_MODEL, "base_url": judge_url, "max_concurrency": 2,
                                "extraction_model": EXTRACTOR, **evaluation.get("judge", {})}})


def _judge(prompt: str) -> str:
    if "expert in image objects extraction" in prompt:  # Object HalBench's upstream extraction prompt
        return '["dog", "chair"]'
    return "Fine.\nRating: 4" if "LMM Response to Evaluate" in prompt else "8 6\nThe second answer is shorter."


def test_all_benchmarks_with_a_judge(tiny_model: str, coco: Path, sources: Sources, openai_server: FakeOpenAI,
                                     tmp_path: Path) -> None:
    openai_server.responder = _judge
    cfg = _config(tmp_path / "run", REAL, coco, openai_server.url)
    models = {"SFT": tiny_model, "DDPO gamma=5": tiny_model}
    result = run_benchmarks(cfg, models, sources)

    assert list(result.results) == list(models)
    for name in models:
        by_bench = result.results[name]
        assert list(by_bench) == REAL and all(r.status == "ok" for r in by_bench.values()), by_bench
        chair = by_bench["object_halbench"].metrics
        assert (chair["n_items"], chair["n_responses"], chair["n_missing_gt"]) == (3, 3, 1)
        # a key is set: objects extracted as upstream, by the extraction model
        assert chair["extraction"] == f"llm ({EXTRACTOR})" and by_bench["object_halbench"].judge == EXTRACTOR
        # the two answers with COCO ground truth: extracted by the LLM unless 3 words or fewer (upstream's skip)
        assert chair["n_scored"] == 2 and chair["judge"]["requests"] + chair["judge"]["cache_hits"] == \
            2 - chair["n_skipped_short"]
        pope = by_bench["pope"].metrics
        assert pope["source"].startswith("official") and list(pope["splits"]) == ["random", "popular", "adversarial"]
        assert all(s["n"] == 18 and s["tp"] + s["fn"] == 9 for s in pope["splits"].values())  # 3 images, 3 + 3
        mmhal = by_bench["mmhal_bench"]
        assert mmhal.judge == JUDGE_MODEL and mmhal.metrics["judge"]["judge_model"] == JUDGE_MODEL
        assert (mmhal.metrics["n_items"], mmhal.metrics["n_rated"], mmhal.metrics["score"]) == (3, 3, 4)
        llava = by_bench["llava_bench"]
        usage = llava.metrics["judge"]  # the second model's answers are the same: judged from the cache
        assert llava.judge == JUDGE_MODEL and usage["requests"] + usage["cache_hits"] == 3
        assert llava.metrics["all"]["relative"] == pytest.approx(75.0) and llava.metrics["all"]["n"] == 3
        folder = tmp_path / "run" / "eval" / model_slug(name)
        for task in REAL:
            assert (folder / task / "scores.json").exists()
            answers = Path(by_bench[task].answers)
            # named by the settings and the model's fingerprint (another model in that folder gets another file)
            key = header_key(answers_header(result.generation, model=model_fingerprint(models[name])))
            assert answers == answers_path(folder / task, key)
            assert len(answers.read_text().splitlines()) == by_bench[task].metrics["n_items"]

    table = result.table()
    assert list(table.index) == list(models)
    row = table.loc["SFT"]
    assert row[paper.MMHAL_HALL] == 0 and row[paper.MMHAL_INFO] == pytest.approx(100 / 3)
    assert row["MMHal score"] == 4 and row[paper.LLAVA["conv"]] == pytest.approx(75.0)
    assert row["judge"] == f"{EXTRACTOR}, {JUDGE_MODEL}" and row["notes"] == ""
    sources_of = result.column_sources()
    assert set(sources_of.index) == set(table.columns) - {"judge", "notes"}  # every column says how it was scored
    assert sources_of.loc[paper.RESP, "LLM"] == EXTRACTOR and "upstream" in sources_of.loc[paper.RESP, "scored by"]
    assert sources_of.loc[paper.LLAVA["conv"], "LLM"] == JUDGE_MODEL
    assert sources_of.loc["POPE random acc", "LLM"] == "none"
    assert {paper.RESP, paper.MENTION, "ObjHal CHAIRs", "ObjHal recall", "ObjHal avg_len",
            "POPE adversarial F1", "POPE random yes-ratio"} <= set(table.columns)
    assert row["POPE random acc"] == 100 * result.results["SFT"]["pope"].metrics["splits"]["random"]["accuracy"]
    saved = json.loads(json.dumps(result.to_dict()))
    assert saved["judge"]["model"] == JUDGE_MODEL and saved["generation"]["max_new_tokens"] == 6
    assert saved["results"]["SFT"]["mmhal_bench"]["judge"] == JUDGE_MODEL

    # a re-run reuses the answers and the judge cache: no new judge requests
    again = run_benchmarks(cfg, {"SFT": tiny_model}, sources)
    usage = again.results["SFT"]["llava_bench"].metrics["judge"]
    assert (usage["requests"], usage["cache_hits"]) == (0, 3)
    assert again.table().loc["SFT", paper.RESP] == table.loc["SFT", paper.RESP]


def test_without_a_key_judged_benchmarks_are_skipped(tiny_model: str, coco: Path, monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    cfg = _config(tmp_path / "run", REAL, coco, pope_source="coco")
    # Object HalBench prompts placed in the cache: nothing is downloaded
    cached = tmp_path / "cache" / "object_halbench" / Path(benchmarks.OBJECT_HALBENCH_URL).name
    cached.parent.mkdir(parents=True)
    _jsonl(cached, [{"image_id": 1 + i % 4, "question": "Describe the image.",
                     "image": base64.b64encode(_jpeg((0, 0, i % 250))).decode()} for i in range(300)])
    result = run_benchmarks(cfg, {"SFT": tiny_model}, Sources(cache_dir=tmp_path / "cache"))

    by_bench = result.results["SFT"]
    assert by_bench["mmhal_bench"].status == by_bench["llava_bench"].status == "skipped: no OPENAI_API_KEY"
    assert by_bench["object_halbench"].ok and by_bench["object_halbench"].metrics["n_scored"] == 3
    assert by_bench["pope"].ok and by_bench["pope"].metrics["splits"]["popular"]["n"] == 18
    assert by_bench["pope"].metrics["source"] == "regenerated from COCO val2014 (seed 0)"
    assert not (tmp_path / "run" / "eval" / "sft" / "mmhal_bench").exists()  # no answers generated
    table = result.table()
    row = table.loc["SFT"]
    # word-matched Object HalBench is never put under the paper's (LLM-extracted) columns
    assert paper.RESP not in table.columns and "ObjHal (word match) Resp. (CHAIRs_refine)" in table.columns
    assert 0 <= row["ObjHal (word match) CHAIRs"] <= 100
    assert by_bench["object_halbench"].metrics["extraction"] == "words (WordNet lemmas)"
    assert 0 <= row["POPE (regenerated) random acc"] <= 100 and row["judge"] is None
    assert result.column_sources().loc["ObjHal (word match) CHAIRs", "LLM"] == "none"
    assert row["notes"] == "mmhal_bench: skipped: no OPENAI_API_KEY; llava_bench: skipped: no OPENAI_API_KEY"


def test_failures_are_reported_and_the_rest_runs(tiny_model: str, sources: Sources, openai_server: FakeOpenAI,
                                                 tmp_path: Path) -> None:
    openai_server.responder = _judge
    cfg = _config(tmp_path / "run", ["object_halbench", "llava_bench", "pope"], None, openai_server.url,
                  pope_source="coco")
    _coco_images(sources.cache_dir / "coco2014")  # LLaVA-Bench images are there, the annotations cannot be fetched
    offline = dataclasses.replace(sources, coco_annotations_url="http://127.0.0.1:9/annotations.zip")
    result = run_benchmarks(cfg, {"SFT": tiny_model}, offline)

    by_bench = result.results["SFT"]
    for name in ("object_halbench", "pope"):
        assert by_bench[name].status.startswith(f"failed: preparing {name}: ConnectionError: could not download "
                                                "http://127.0.0.1:9/annotations.zip")
    assert by_bench["llava_bench"].ok and by_bench["llava_bench"].metrics["all"]["n"] == 3
    assert "object_halbench: failed" in result.table().loc["SFT", "notes"]


def test_missing_coco_annotations_and_bad_names(tmp_path: Path) -> None:
    empty = tmp_path / "coco"
    empty.mkdir()
    cfg = _config(tmp_path / "run", ["pope"], empty, pope_source="coco")
    result = run_benchmarks(cfg, {"SFT": str(tmp_path / "no-model")}, Sources(cache_dir=tmp_path / "cache"))
    status = result.results["SFT"]["pope"].status
    assert status.startswith("failed: preparing pope: FileNotFoundError") and "instances_val2014.json" in status
    with pytest.raises(ValueError, match="unknown benchmark"):
        run_benchmarks(_config(tmp_path / "run", ["chair"], None), {"SFT": "x"})
    with pytest.raises(ValueError, match="distinct folder names"):
        run_benchmarks(cfg, {"SFT": "x", "sft": "y"})


def test_world_benchmarks_share_one_generation_pass(tmp_path: Path) -> None:
    cfg = load_config(CPU_TINY, name="test-world", run_dir=str(tmp_path / "run"), model={"tiny": vars(SHAPE)},
                      data={"sft_images": 20, "feedback_images": 2, "eval_images": 3},
                      evaluation={"max_new_tokens": 6, "batch_size": 8, "limit": 2})
    pipeline.prepare_data(cfg)
    result = run_benchmarks(cfg, {"base": pipeline.build_base_model(cfg)})

    by_bench = result.results["base"]
    assert list(by_bench) == ["world_chair", "world_pope"] and all(r.ok for r in by_bench.values())
    assert by_bench["world_chair"].metrics["n_scored"] == 2  # one description per image, limit 2 images
    assert by_bench["world_chair"].metrics["vocabulary"] == "synthetic-world"
    assert by_bench["world_pope"].metrics["splits"]["world"]["n"] > 0
    assert by_bench["world_chair"].answers == by_bench["world_pope"].answers
    assert sorted(p.name for p in (tmp_path / "run" / "eval" / "base").iterdir()) == ["world"]
    assert {"World Resp. (CHAIRs_refine)", "POPE world acc", *WORLD_ATTRIBUTE_COLUMNS.values()} <= set(
        result.table().columns)
    attributes = by_bench["world_chair"].metrics["attributes"]  # colours and places beside CHAIR
    assert attributes["n_descriptions"] == 2 and set(WORLD_ATTRIBUTE_COLUMNS) <= set(attributes)
    scores = world_scores(cfg, result)  # the details behind the numbers, for examples and bootstrap intervals
    assert list(scores) == ["base"] and scores["base"].attributes.summary == attributes
    assert scores["base"].chair.summary == {k: v for k, v in by_bench["world_chair"].metrics.items()
                                            if k in scores["base"].chair.summary}
    assert set(WORLD_COLUMNS) == set(scores["base"].counts())

    # other generation settings (a re-run stage 04 with another max_new_tokens) answer into their own file
    longer = dataclasses.replace(cfg, evaluation=dataclasses.replace(cfg.evaluation, max_new_tokens=4))
    again = run_benchmarks(longer, {"base": pipeline.build_base_model(cfg)}).results["base"]
    assert all(r.ok for r in again.values()) and again["world_chair"].answers != by_bench["world_chair"].answers
    assert len(list((tmp_path / "run" / "eval" / "base" / "world").glob("answers-*.jsonl"))) == 2


def test_paper_table() -> None:
    table = paper_table()
    assert table.loc["Muffin (SFT)", paper.RESP] == 50.5
    assert table.loc["RLHF-V (Muffin-13B + DDPO)", paper.MENTION] == 7.5
    assert table.loc["GPT-4V", paper.LLAVA["detail"]] == 102.5 and table.loc["LLaVA", paper.MMHAL_HALL] == 70.8
    assert table.loc["RLAIF-V 7B (LLaVA-1.5)", paper.RESP] == 8.5
    assert table.loc["RLHF-V with vanilla DPO (ablation)", paper.MHUMAN_ALL] == 57.5
    assert table.loc["LLaVA-RLHF 13B", "source"] == paper.RLHFV_V1 and "human-evaluated" in table.attrs["note"]
    drop = 1 - table.loc["RLHF-V (Muffin-13B + DDPO)", paper.RESP] / table.loc["Muffin (SFT)", paper.RESP]
    assert drop == pytest.approx(0.758, abs=1e-3)  # DESIGN: a 75.8% response-level drop


@pytest.mark.parametrize("preset", ["qlora-1gpu", "full-8xa100"])
def test_real_presets_generate_as_upstream(preset: str) -> None:
    cfg = load_config(Path(__file__).parents[2] / "params" / f"{preset}.yaml")
    assert eval_settings(cfg) == GenerationSettings(max_new_tokens=1024, num_beams=3, repetition_penalty=1.1)
    assert sorted(cfg.evaluation.benchmarks) == sorted(REAL)


def test_unscored_items_make_a_benchmark_partial_and_repeats_give_a_spread(
        tiny_model: str, sources: Sources, openai_server: FakeOpenAI, tmp_path: Path) -> None:
    calls: dict[str, int] = {}
    unreviewable = read_jsonl(FIXTURES / "qa_questions.jsonl")[0]["text"]

    def judge(prompt: str) -> str:
        calls[prompt] = calls.get(prompt, 0) + 1
        if "LMM Response to Evaluate" in prompt:
            return f"Rating: {4 if calls[prompt] == 1 else 2}"  # each MMHal item: 4 in one run, 2 in the other
        if unreviewable in prompt or prompt == SCORES_NUDGE:
            return "no scores here"  # this LLaVA-Bench review never parses, nor after the nudge
        return "8 6\nThe second answer is shorter."

    openai_server.responder = judge
    cfg = _config(tmp_path / "run", ["mmhal_bench", "llava_bench"], None, openai_server.url, judge={"repeats": 2})
    _coco_images(sources.cache_dir / "coco2014")  # LLaVA-Bench's images
    result = run_benchmarks(cfg, {"SFT": tiny_model}, sources)

    mmhal, llava = result.results["SFT"]["mmhal_bench"], result.results["SFT"]["llava_bench"]
    assert mmhal.ok and mmhal.metrics["repeats"] == 2 and mmhal.metrics["score"] == pytest.approx(3.0)
    assert mmhal.metrics["score_std"] > 0  # 3 items, each 4 in one run and 2 in the other: the runs differ
    assert llava.status == "partial: 1 of 3 items not scored (2 failed judgments, 2 unparsed)"
    assert llava.metrics["all"]["relative"] == pytest.approx(75.0)  # over the two reviewed items
    table = result.table()
    assert table.loc["SFT", "MMHal score"] == pytest.approx(3.0) and table.loc["SFT", "MMHal score std"] > 0
    assert table.loc["SFT", paper.LLAVA["all"]] == pytest.approx(75.0)
    assert "llava_bench: partial: 1 of 3 items not scored" in table.loc["SFT", "notes"]

    openai_server.responder = lambda prompt: "no scores here"  # a judge whose reviews never parse: no numbers
    cfg = _config(tmp_path / "run2", ["llava_bench"], None, openai_server.url)
    llava = run_benchmarks(cfg, {"SFT": tiny_model}, sources).results["SFT"]["llava_bench"]
    assert llava.status.startswith("failed: scoring: 3 of 3 items not scored") and not llava.scored
    assert result.column_sources().loc["MMHal score", "LLM"] == f"{JUDGE_MODEL} (mean of 2 runs)"


def test_a_bug_in_a_benchmark_raises_instead_of_becoming_a_note(tiny_model: str, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from rlhfv_nb.evaluate import tasks

    def broken(ctx: tasks.Context) -> tasks.Task:
        def score(answers, judge):
            return {"broken": {"value": 1 / 0}}, {}
        return tasks.Task("broken", ("broken",), [{"id": "0", "image": _jpeg((1, 2, 3)), "question": "Q?"}],
                          score, "a scorer with a bug")

    monkeypatch.setitem(tasks.BUILDERS, "broken", broken)  # a benchmark of the test's own, through the real suite
    with pytest.raises(ZeroDivisionError):
        run_benchmarks(_config(tmp_path / "run", ["broken"], None), {"SFT": tiny_model})
