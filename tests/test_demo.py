"""The Gradio demo on tiny checkpoints: input checks, highlighting, one shared base for two adapters, and the
served app answering through `gradio_client` on a free localhost port."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import gradio as gr
import httpx
import numpy as np
import pytest
from demo_run import free_port, make_demo_run
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from rlhfv_nb.cli import build_parser, main
from rlhfv_nb.compare import load_answerers
from rlhfv_nb.config import DemoConfig, load_config
from rlhfv_nb.data import decode_image
from rlhfv_nb.demo import (
    COLORS,
    CSS,
    HALLUCINATED,
    PRESENT,
    UNJUDGED,
    WRONG_COLOR,
    WRONG_PLACE,
    Demo,
    DemoInputError,
    MissingModel,
    check_models,
    ground_truth,
    highlight,
    read_image,
    served_message,
    verdict,
)
from rlhfv_nb.evaluate.chair import ChairVocabulary
from rlhfv_nb.generate import GenerationSettings
from rlhfv_nb.modeling import count_parameters, load_model
from rlhfv_nb.world import Scene, WorldConfig, WorldObject, synonyms_text
from rlhfv_nb.world_eval import WORLD_VOCABULARY, check_attributes, eval_items, scene_from_text

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_demo_run(tmp_path_factory.mktemp("demo") / "run")


@pytest.fixture(scope="module")
def demo(run):
    return Demo.from_config(run)


@pytest.fixture(scope="module")
def served(demo):
    app = demo.launch(server_port=free_port(), prevent_thread_lock=True, quiet=True)
    yield app, Client(app.local_url, verbose=False)
    app.close()


@pytest.fixture(scope="module")
def coco():
    return ChairVocabulary.coco()


def _png(path, size, noise=False):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8) if noise else np.zeros((size[1], size[0], 3),
                                                                                                    np.uint8)
    Image.fromarray(pixels).save(path)
    return str(path)


# ---------------------------------------------------------------- input checks
def test_read_image_accepts_a_picture(tmp_path):
    image = read_image(_png(tmp_path / "ok.png", (40, 30)), DemoConfig())
    assert image.size == (40, 30) and image.mode == "RGB"


def test_non_image_upload_gets_a_clear_message(tmp_path):
    (tmp_path / "notes.png").write_text("not a picture at all")
    with pytest.raises(DemoInputError, match="not an image"):
        read_image(tmp_path / "notes.png", DemoConfig())


def test_too_large_file_is_refused(tmp_path):
    path = _png(tmp_path / "noise.png", (200, 200), noise=True)  # ~120 kB of incompressible pixels
    with pytest.raises(DemoInputError, match=r"MB; the limit is 0.05 MB"):
        read_image(path, DemoConfig(max_upload_mb=0.05))


def test_oversized_dimensions_are_refused(tmp_path):
    path = _png(tmp_path / "wide.png", (5000, 8))
    with pytest.raises(DemoInputError, match=r"5000x8 pixels.*4096 pixels"):
        read_image(path, DemoConfig(max_image_side=4096))


def test_ground_truth_maps_names_through_the_vocabulary(coco):
    assert ground_truth("", coco) is None
    assert ground_truth(" dogs, Teddy Bear ,motorbike", coco) == {"dog", "teddy bear", "motorcycle"}
    with pytest.raises(DemoInputError, match="'unicorn' is not an object of the coco vocabulary"):
        ground_truth("dog, unicorn", coco)


# ---------------------------------------------------------------- highlighting
def test_highlight_judges_mentions_against_ground_truth(coco):
    text = "A dog and two cats sit on a sofa."
    spans = highlight(text, coco, {"dog"})
    assert "".join(piece for piece, _ in spans) == text
    assert [(p, label) for p, label in spans if label] == [("dog", PRESENT), ("cats", HALLUCINATED),
                                                           ("sofa", HALLUCINATED)]
    assert verdict("SFT", spans) == "**SFT**: 2 of 3 object mention(s) hallucinated: cats, sofa."


def test_without_ground_truth_mentions_are_not_judged(coco):
    spans = highlight("A dog on a sofa.", coco, None)
    assert [label for _, label in spans if label] == [UNJUDGED, UNJUDGED]
    assert "not judged" in verdict("SFT", spans)
    assert highlight("", coco, None) == [] and verdict("SFT", []) == "**SFT**: no object mentioned."


def test_world_answers_get_wrong_colours_and_places_marked():
    """The issue's case: every object is there, so CHAIR finds nothing; two of the three places are wrong."""
    world = WorldConfig()
    vocab = ChairVocabulary.from_synonyms_text(synonyms_text(world), name=WORLD_VOCABULARY)
    scene = Scene((WorldObject("star", "blue", 0, 1), WorldObject("ball", "green", 1, 0),
                   WorldObject("box", "red", 1, 1)))
    text = "A red box is in the bottom right. A blue star is in the bottom left. A green ball is in the top left."
    spans = highlight(text, vocab, scene.kinds, check_attributes(text, scene, world))
    assert "".join(piece for piece, _ in spans) == text
    assert [(p, label) for p, label in spans if label] == [
        ("box", PRESENT), ("star", PRESENT), ("in the bottom left", WRONG_PLACE), ("ball", PRESENT),
        ("in the top left", WRONG_PLACE)]
    assert verdict("DDPO", spans, attributes_checked=True) == (
        "**DDPO**: 0 of 3 object mention(s) hallucinated; 2 wrong places: in the bottom left, in the top left.")
    purple = "A purple tent and a blue star."
    spans = highlight(purple, vocab, scene.kinds, check_attributes(purple, scene, world))
    assert [(p, label) for p, label in spans if label] == [("tent", HALLUCINATED), ("star", PRESENT)]
    assert verdict("SFT", spans, attributes_checked=True) == (
        "**SFT**: 1 of 2 object mention(s) hallucinated: tent; colours and places right.")
    wrong = "A green box."
    spans = highlight(wrong, vocab, scene.kinds, check_attributes(wrong, scene, world))
    assert [(p, label) for p, label in spans if label] == [("green", WRONG_COLOR), ("box", PRESENT)]
    assert set(COLORS) >= {WRONG_COLOR, WRONG_PLACE}


# ---------------------------------------------------------------- models
def test_two_adapters_share_one_base(run, demo):
    sft, ddpo = demo.answerers["SFT"], demo.answerers["DDPO"]
    assert sft.model is ddpo.model and sft.lock is ddpo.lock
    assert {sft.adapter, ddpo.adapter} == set(sft.model.peft_config) and sft.adapter != ddpo.adapter
    base = load_model(run.run_path / "base", run.model)
    lora = sum(p.numel() for name, p in sft.model.named_parameters() if "lora_" in name)
    assert count_parameters(sft.model)["total"] == count_parameters(base)["total"] + lora
    assert lora == 2 * sum(p.numel() for name, p in sft.model.named_parameters() if f"lora_A.{sft.adapter}." in name
                           or f"lora_B.{sft.adapter}." in name)


def test_base_and_adapter_share_one_model_and_answer_like_separate_ones(run):
    paths = {"base": str(run.run_path / "base"), "sft": str(run.run_path / "sft" / "final")}
    shared = load_answerers(paths, run.model)
    assert shared["base"].model is shared["sft"].model and shared["base"].adapter is None
    separate = {name: load_answerers({name: path}, run.model)[name] for name, path in paths.items()}
    item = eval_items(run)[0]
    image, settings = decode_image(item["image"]), GenerationSettings(max_new_tokens=12)
    answers = {name: list(a.stream(image, item["question"], settings))[-1] for name, a in shared.items()}
    assert answers == {name: list(a.stream(image, item["question"], settings))[-1] for name, a in separate.items()}
    assert answers["base"] != answers["sft"]  # the adapter is really switched off for the base


def test_abandoned_stream_releases_the_model_and_errors_surface(demo, monkeypatch):
    sft, ddpo = demo.answerers["SFT"], demo.answerers["DDPO"]
    image, settings = decode_image(Path(demo.examples[0].image).read_bytes()), GenerationSettings(max_new_tokens=12)
    abandoned = sft.stream(image, "Describe the image.", settings)
    next(abandoned)
    with ThreadPoolExecutor(1) as pool:  # the other adapter of the same model still answers
        assert pool.submit(lambda: list(ddpo.stream(image, "Describe the image.", settings))).result(timeout=60)

    def broken(**kwargs):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(sft.model, "generate", broken)
    with pytest.raises(RuntimeError, match="simulated"):
        list(sft.stream(image, "Describe the image.", settings))


# ---------------------------------------------------------------- the app
def test_examples_are_held_out_world_images_with_their_objects(run, demo):
    describe = [i for i in eval_items(run) if i["qtype"] == "describe"]
    assert len(demo.examples) == len(describe) == 3
    for example, item in zip(demo.examples, describe):
        assert example.question == item["question"] and example.vocabulary == "synthetic-world"
        scene = Scene.from_dict(json.loads(item["scene"]))
        assert scene_from_text(example.objects, demo.world) == scene  # "red ball in the top left, ..."
        assert ground_truth(example.objects, demo.vocabularies["synthetic-world"]) == scene.kinds
    assert list(demo.vocabularies) == ["synthetic-world", "coco"]


def test_respond_streams_then_judges(demo):
    example = demo.examples[0]
    updates = list(demo.respond(example.image, example.question, example.objects, example.vocabulary))
    assert len(updates) > 2 and all(len(u) == 3 for u in updates)
    *answers, status = updates[-1]
    assert all(answers) and status.startswith("**SFT**") and "**DDPO**" in status
    assert "not judged" not in status
    # the examples carry colours and places: the verdict says how those fared too
    assert all(("wrong" in line or "colours and places right" in line or "no object mentioned" in line)
               for line in status.splitlines())


@pytest.mark.parametrize(("image", "question", "objects", "message"), [
    (None, "What is it?", "", "Upload an image"),
    ("text", "What is it?", "", "not an image"),
    ("ok", "  ", "", "Type a question"),
    ("ok", "What is it?", "ball, unicorn", "'unicorn' is not an object"),
    ("ok", "What is it?", "red ball in the center", "'center' is no place of the 2x2 grid"),
])
def test_bad_inputs_raise_user_messages(demo, tmp_path, image, question, objects, message):
    if image == "text":
        (tmp_path / "x.txt").write_text("hello")
        image = str(tmp_path / "x.txt")
    elif image == "ok":
        image = demo.examples[0].image
    with pytest.raises(gr.Error, match=message):
        next(demo.respond(image, question, objects, "synthetic-world"))


def test_served_on_localhost_without_share_link(served):
    app, _ = served
    assert app.server_name == "127.0.0.1" and app.share_url is None and not app.share
    assert app.max_file_size == int(DemoConfig().max_upload_mb * 2**20)


def test_client_gets_streamed_answers(demo, served):
    _, client = served
    example = demo.examples[1]
    job = client.submit(handle_file(example.image), example.question, example.objects, example.vocabulary,
                        api_name="/compare")
    sft, ddpo, status = job.result(timeout=60)
    assert len(job.outputs()) > 2  # intermediate updates reached the client
    assert sft and ddpo and "**SFT**" in status
    assert {e["class_or_confidence"] for e in sft + ddpo} <= {None, PRESENT, HALLUCINATED}


def test_client_concurrent_requests_are_queued(demo, served, tmp_path):
    _, client = served
    jobs = [client.submit(handle_file(_png(tmp_path / f"{i}.png", (32, 32))), "What is here?", "", "coco",
                          api_name="/compare") for i in range(3)]
    for job in jobs:
        *_, status = job.result(timeout=60)
        assert "**DDPO**" in status


def test_client_non_image_gets_message(served, tmp_path):
    _, client = served
    (tmp_path / "bad.jpg").write_bytes(b"\x00garbage")
    with pytest.raises(AppError, match="This file is not an image"):
        client.predict(handle_file(str(tmp_path / "bad.jpg")), "What?", "", "coco", api_name="/compare")


def test_upload_over_the_size_limit_is_refused(served, tmp_path):
    app, client = served
    path = _png(tmp_path / "big.png", (2000, 1000), noise=True)  # ~6 MB > 5 MB
    with pytest.raises(ValueError, match="exceeds the maximum file size"):  # the client knows the limit
        client.predict(handle_file(path), "What?", "", "coco", api_name="/compare")
    with open(path, "rb") as handle:  # and the server enforces it
        response = httpx.post(f"{app.local_url}gradio_api/upload", files={"files": handle}, timeout=30)
    assert response.status_code == 413 and "maximum allowed size" in response.text


@pytest.mark.slow
def test_notebook_previews_and_does_not_serve(run, tmp_path):
    papermill = pytest.importorskip("papermill")
    out = tmp_path / "05_demo.ipynb"
    papermill.execute_notebook(str(ROOT / "notebooks" / "05_demo.ipynb"), str(out), parameters=run.to_dict(),
                               cwd=str(ROOT), kernel_name="python3", progress_bar=False)
    done = json.loads((run.run_path / "stages" / "05_demo.json").read_text())
    assert done["launched"] is False and done["examples"] == 3 and list(done["models"]) == ["SFT", "DDPO"]
    shown = [o["data"]["text/html"] for cell in json.loads(out.read_text())["cells"]
             for o in cell.get("outputs", []) if "text/html" in o.get("data", {})]
    assert len(shown) == 1 and "".join(shown[0]).count("<tr>") == 4  # header + three examples


def test_cli_demo_arguments():
    args = build_parser().parse_args(["demo", "params/cpu-tiny.yaml", "--sft", "a", "--port", "9000", "--share"])
    assert (args.command, args.sft, args.ddpo, args.port, args.share) == ("demo", "a", None, 9000, True)


# ---------------------------------------------------------------- before training, and the CLI's words
def test_cli_demo_before_training_names_the_missing_folders_in_one_line(tmp_path, capsys):
    params = tmp_path / "tiny.yaml"
    params.write_text(f"extends: {ROOT / 'params' / 'cpu-tiny.yaml'}\nrun_dir: {tmp_path / 'run'}\n")
    assert main(["demo", str(params)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and "Repo id" not in err
    assert f"SFT model {tmp_path / 'run' / 'sft' / 'final'} (stage 02_sft makes it)" in err
    assert f"DDPO model {tmp_path / 'run' / 'ddpo' / 'gamma5' / 'final'} (stage 03_ddpo makes it)" in err
    assert f"`rlhfv-nb run {params} --only 01,02,03`" in err


def test_a_real_preset_is_checked_before_any_hub_access(tmp_path):
    """full-8xa100's SFT model is the base's hub id (not checked); its DDPO folder does not exist yet."""
    cfg = load_config(ROOT / "params" / "full-8xa100.yaml", run_dir=str(tmp_path / "run"))
    with pytest.raises(MissingModel) as missing:
        Demo.from_config(cfg, params="params/full-8xa100.yaml")
    message = str(missing.value)
    assert "DDPO model" in message and "gamma1.1/final (stage 03_ddpo makes it)" in message
    assert "SFT" not in message.split(";")[0] and "llava-hf" not in message
    assert "`rlhfv-nb run params/full-8xa100.yaml --only 01,02,03`" in message


def test_given_folders_are_checked_and_hub_ids_left_to_the_hub(tmp_path):
    check_models({"SFT": "llava-hf/llava-1.5-7b-hf", "DDPO": str(tmp_path)}, {}, "p.yaml")  # nothing missing
    with pytest.raises(MissingModel, match=r"^no such folder: DDPO model \./nowhere/final \(given with --ddpo\)$"):
        check_models({"SFT": "llava-hf/llava-1.5-7b-hf", "DDPO": "./nowhere/final"}, {"SFT": "02_sft"}, "p.yaml")


def test_launch_names_the_cli_option_for_a_share_link(demo, capsys):
    app = demo.launch(server_port=free_port(), prevent_thread_lock=True)
    try:
        out = capsys.readouterr().out
    finally:
        app.close()
    assert f"demo: {app.local_url} (this machine only" in out and "add --share to `rlhfv-nb demo`" in out
    assert "share=True" not in out and "launch()" not in out


def test_the_served_message_says_what_a_share_link_means_or_why_there_is_none():
    assert "public: anyone with the link" in served_message("http://127.0.0.1:7860/", "https://x.gradio.live", True)
    assert "could not be made" in served_message("http://127.0.0.1:7860/", None, share=True)


# ---------------------------------------------------------------- highlighted words in the browser
@pytest.fixture(scope="module")
def chromium(tmp_path_factory):
    from browser import start_chromium

    driver = start_chromium(tmp_path_factory.mktemp("chromium-profile"))
    yield driver
    driver.quit()


GAPS = """return [...document.querySelectorAll('#answer-0 .token.highlighted')].map(token => {
  const box = token.getBoundingClientRect(), container = token.closest('.token-container');
  const prev = container.previousElementSibling.getBoundingClientRect();
  const next = container.nextElementSibling.getBoundingClientRect();
  return [token.textContent.trim(), Math.round(box.left - prev.right), Math.round(next.left - box.right)];
});"""


def _gaps(driver, css: str | None) -> list[list]:
    """Pixels between each highlighted word and the text beside it, as the demo's answer box shows them."""
    from selenium.webdriver.support.ui import WebDriverWait

    spans = [("A red ", None), ("tent", HALLUCINATED), (" is near a ", None), ("ring", PRESENT), (".", None)]
    with gr.Blocks() as page:
        gr.HighlightedText(spans, color_map=COLORS, show_legend=True, elem_id="answer-0")
    page.launch(server_port=free_port(), prevent_thread_lock=True, quiet=True, css=css)
    try:
        driver.get(page.local_url)
        return WebDriverWait(driver, 30).until(lambda d: d.execute_script(GAPS))
    finally:
        page.close()


def test_highlighted_words_sit_in_the_text_without_extra_space(chromium):
    assert _gaps(chromium, CSS) == [["tent", 0, 0], ["ring", 0, 0]]  # the text's own spaces only
    assert all(left > 0 and right > 0 for _, left, right in _gaps(chromium, None))  # gradio's margins, undone
