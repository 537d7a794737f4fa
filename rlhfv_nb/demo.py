"""Gradio demo: the SFT and the DDPO model answer one image and question side by side, streamed, with the
object mentions that CHAIR judges hallucinated marked when the objects in the image are known, and, on the
synthetic world when their colours and places are known too, the wrong colours and places of the objects that are
there (`world_eval.check_attributes`).

Safe by default: binds `demo.host` (127.0.0.1) without a share link, caps upload size and image sides,
answers bad uploads with a message instead of a traceback, and queues requests.
"""

from __future__ import annotations

import html
import json
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image, UnidentifiedImageError

from rlhfv_nb import pipeline, world_eval
from rlhfv_nb.compare import Answerer, load_answerers
from rlhfv_nb.config import Config, DemoConfig, looks_like_local_path, project_root
from rlhfv_nb.data import DataError, decode_image
from rlhfv_nb.display import answers_html, verdict_text
from rlhfv_nb.evaluate.chair import ChairVocabulary, extract_mentions
from rlhfv_nb.generate import GenerationSettings
from rlhfv_nb.portable import portable
from rlhfv_nb.world import Scene, WorldConfig
from rlhfv_nb.world_eval import AttributeCheck, check_attributes, scene_from_text, scene_text, wrong_spans

HALLUCINATED, PRESENT, UNJUDGED = "hallucinated", "in the image", "object (not judged)"
WRONG_COLOR, WRONG_PLACE = "wrong colour", "wrong place"
OBJECT_LABELS = (HALLUCINATED, PRESENT, UNJUDGED)
COLORS = {HALLUCINATED: "#f87171", PRESENT: "#86efac", UNJUDGED: "#d1d5db", WRONG_COLOR: "#fdba74",
          WRONG_PLACE: "#93c5fd"}
QUEUE_SIZE = 32  # waiting requests beyond this are refused with "queue full"
CSS = (
    "#image img { image-rendering: pixelated; width: 100%; height: 100%; object-fit: contain; }"  # tiny images
    # gradio spaces a highlighted token from its neighbours (margins 4 px left, 8 px right) on top of the text's own
    # spaces, which read as stray spaces ("tent  is", "ring ."): the answers keep only the text's
    " [id^='answer-'] .token.highlighted { margin: 0 !important; padding: 0 1px !important; }"
)
INTRO = f"""# RLHF-V: SFT vs DDPO
Upload an image (or pick an example below), ask a question, and both models answer side by side.
Object mentions are marked: <span style="background:{COLORS[HALLUCINATED]}">{HALLUCINATED}</span> (not in the
image, as CHAIR judges it), <span style="background:{COLORS[PRESENT]}">{PRESENT}</span>. On the synthetic world,
when every object is given with its colour and place ("red ball in the top left, blue box in the bottom right"),
colours and places stated for objects that are there are checked too:
<span style="background:{COLORS[WRONG_COLOR]}">{WRONG_COLOR}</span>,
<span style="background:{COLORS[WRONG_PLACE]}">{WRONG_PLACE}</span>. **Without ground truth**
(the objects field left empty) mentions are only found, not judged, and shown
<span style="background:{COLORS[UNJUDGED]}">grey</span>. The example images come with their true objects, colours
and places.
"""

Spans = list[tuple[str, str | None]]


class DemoInputError(ValueError):
    """An input the demo refuses; the message is meant for the user."""


class MissingModel(FileNotFoundError):
    """A model folder the demo would serve does not exist; the message names the stage or option that makes it."""


MADE_BY = {"SFT": "02_sft", "DDPO": "03_ddpo"}  # the stage whose notebook writes the run's model of that name


def check_models(paths: Mapping[str, str], made_by: Mapping[str, str], params: str) -> None:
    """`MissingModel` naming every local model folder of `paths` that does not exist, before any hub access.

    A path that can only be local (`config.looks_like_local_path`: absolute, `./x`, `a/b/c`, ...) is never
    tried as a hub id. The run's own folders (the names in `made_by`) are named with the stage that makes them
    and the command that runs it for the params file `params`; other paths with the option that gave them.
    """
    absent = [name for name, path in paths.items() if looks_like_local_path(str(path)) and not Path(path).exists()]
    if not absent:
        return
    missing = [f"{name} model {_shown(paths[name])} (stage {made_by[name]} makes it)" if name in made_by
               else f"{name} model {paths[name]} (given with --{name.lower()})" for name in absent]
    hint = (f"; run `rlhfv-nb run {params} --only 01,02,03` first (finished stages are skipped) or pass "
            "--sft/--ddpo" if set(absent) & set(made_by) else "")
    raise MissingModel(f"no such folder: {'; '.join(missing)}{hint}")


def _shown(path: str | Path) -> str:
    """`path` relative to the project when it lies in it (as the params name run folders), else as given."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(project_root())) if resolved.is_relative_to(project_root()) else str(path)


@dataclass(frozen=True)
class Example:
    """An example row of the app: image file, question, the objects in the image, their vocabulary."""

    image: str
    question: str
    objects: str
    vocabulary: str


def read_image(path: str | Path, cfg: DemoConfig) -> Image.Image:
    """The uploaded image as RGB, or `DemoInputError` for a file too big, not an image, or with too long a side."""
    size = Path(path).stat().st_size
    if size > cfg.max_upload_mb * 2**20:
        raise DemoInputError(f"The file is {size / 2**20:.1f} MB; the limit is {cfg.max_upload_mb:g} MB.")
    too_large = f"The largest image side allowed is {cfg.max_image_side} pixels: please resize the image."
    try:
        with Image.open(path) as image:
            width, height = image.size
    except Image.DecompressionBombError as err:
        raise DemoInputError(too_large) from err
    except (UnidentifiedImageError, OSError) as err:
        raise DemoInputError("This file is not an image: please upload a PNG, JPEG or WebP picture.") from err
    if max(width, height) > cfg.max_image_side:
        raise DemoInputError(f"The image is {width}x{height} pixels. {too_large}")
    try:
        return decode_image(Path(path).read_bytes())
    except DataError as err:
        raise DemoInputError(f"The image could not be decoded ({err}).") from err


def ground_truth(objects: str, vocab: ChairVocabulary) -> set[str] | None:
    """Categories named in a comma-separated list (synonyms and plurals allowed); None when the list is empty."""
    names = [name.strip() for name in objects.split(",") if name.strip()]
    if not names:
        return None
    present: set[str] = set()
    for name in names:
        found = extract_mentions(name, vocab)
        if not found:
            known = ", ".join(vocab.categories[:8])
            raise DemoInputError(f"{name!r} is not an object of the {vocab.name} vocabulary (e.g. {known}, ...).")
        present.update(m.category for m in found)
    return present


def highlight(text: str, vocab: ChairVocabulary, present: set[str] | None,
              checks: list[AttributeCheck] | None = None) -> Spans:
    """`text` cut into (piece, label) spans: object mentions labelled hallucinated/present, or unjudged, and the
    wrong colours and places of `checks` (`world_eval.check_attributes` of `text`)."""
    marks = [(m.start, m.end, UNJUDGED if present is None else PRESENT if m.category in present else HALLUCINATED)
             for m in extract_mentions(text, vocab)]
    colors, places = wrong_spans(checks or [])
    marks += [(*span, WRONG_COLOR) for span in colors] + [(*span, WRONG_PLACE) for span in places]
    spans: Spans = []
    last = 0
    for start, end, label in sorted(marks):
        if start >= last:  # a mark overlapping an earlier one is dropped
            spans += [(text[last:start], None), (text[start:end], label)]
            last = end
    spans.append((text[last:], None))
    return [(piece, label) for piece, label in spans if piece]


def spans_html(spans: Spans) -> str:
    """Highlighted spans as inline HTML (for notebooks)."""
    return "".join(html.escape(piece) if label is None else
                   f'<span style="background:{COLORS[label]}" title="{label}">{html.escape(piece)}</span>'
                   for piece, label in spans)


def verdict(name: str, spans: Spans, attributes_checked: bool = False) -> str:
    """One line per answer: how many object mentions were hallucinated, and which; with `attributes_checked`, the
    wrong colours and places too ("0 of 3 object mention(s) hallucinated; 2 wrong places: ...")."""
    labels = [label for _, label in spans if label in OBJECT_LABELS]
    if not labels:
        return f"**{name}**: no object mentioned."
    if UNJUDGED in labels:
        return f"**{name}**: {len(labels)} object mention(s), not judged."
    colors, places = ([piece for piece, label in spans if label == wanted] if attributes_checked else None
                      for wanted in (WRONG_COLOR, WRONG_PLACE))
    hallucinated = [piece for piece, label in spans if label == HALLUCINATED]
    return f"**{name}**: {verdict_text(len(labels), hallucinated, colors, places)}."


def world_examples(cfg: Config, folder: Path, count: int = 4) -> list[Example]:
    """The first `count` held-out world images of a synthetic run with a description prompt and their objects, each
    with its colour and place (`world_eval.scene_text`)."""
    if not cfg.layout.world_synonyms.exists():
        return []
    vocabulary = world_eval.world_vocabulary(cfg).name
    world = pipeline.world_config(cfg)
    examples = []
    for item in world_eval.eval_items(cfg):
        if item["qtype"] != "describe" or len(examples) == count:
            continue
        path = Path(folder) / f"world-{item['image_id']}.png"
        path.write_bytes(item["image"])
        objects = scene_text(Scene.from_dict(json.loads(item["scene"])), world)
        examples.append(Example(str(path), item["question"], objects, vocabulary))
    return examples


@dataclass
class Demo:
    """The models, vocabularies and examples behind the app; `blocks()` builds it, `launch()` serves it."""

    paths: dict[str, str]  # model name -> folder (portable: relative to the run folder or project) or hub id
    answerers: dict[str, Answerer]
    vocabularies: dict[str, ChairVocabulary]
    cfg: DemoConfig
    settings: GenerationSettings
    examples: list[Example]
    world: WorldConfig | None = None  # the synthetic world of the run, whose colours and places can be checked

    @classmethod
    def from_config(cls, cfg: Config, sft: str | None = None, ddpo: str | None = None,
                    params: str | None = None) -> Demo:
        """The run's SFT and DDPO models (or the given paths/hub ids), its world vocabulary and examples, COCO's.

        A missing model folder raises `MissingModel` before anything loads; `params` (the params file) goes into
        its hint.
        """
        paths = {"SFT": sft or pipeline.sft_model_path(cfg), "DDPO": ddpo or str(cfg.layout.ddpo(cfg.ddpo.gamma).final)}
        made_by = {name: MADE_BY[name] for name, given in (("SFT", sft), ("DDPO", ddpo)) if not given}
        check_models(paths, made_by, params or f"params/{cfg.name}.yaml")
        vocabularies = {"coco": ChairVocabulary.coco()}
        world = None
        if cfg.layout.world_synonyms.exists():
            vocab = world_eval.world_vocabulary(cfg)
            vocabularies = {vocab.name: vocab, **vocabularies}
            world = pipeline.world_config(cfg)
        settings = GenerationSettings(max_new_tokens=cfg.demo.max_new_tokens,
                                      repetition_penalty=cfg.evaluation.repetition_penalty, seed=cfg.seed)
        examples = world_examples(cfg, Path(tempfile.mkdtemp(prefix="rlhfv-demo-")))
        return cls(portable(paths, cfg.run_path), load_answerers(paths, cfg.model), vocabularies, cfg.demo, settings,
                   examples, world)

    def _scene(self, objects: str, vocab: ChairVocabulary) -> Scene | None:
        """The world scene the objects field gives (every object with colour and place), else None."""
        if self.world is None or vocab.name != world_eval.WORLD_VOCABULARY:
            return None
        try:
            return scene_from_text(objects, self.world)
        except ValueError as err:
            raise DemoInputError(str(err)) from err

    def _inputs(self, image: Any, question: str, objects: str, vocabulary: str
                ) -> tuple[Image.Image, str, ChairVocabulary, set[str] | None, Scene | None]:
        path = image.get("path") if isinstance(image, dict) else image
        if not path:
            raise DemoInputError("Upload an image or pick an example first.")
        if not (question or "").strip():
            raise DemoInputError("Type a question about the image.")
        if vocabulary not in self.vocabularies:
            raise DemoInputError(f"Unknown vocabulary {vocabulary!r}; choose one of {', '.join(self.vocabularies)}.")
        vocab = self.vocabularies[vocabulary]
        present = ground_truth(objects or "", vocab)
        return read_image(path, self.cfg), question.strip(), vocab, present, self._scene(objects or "", vocab)

    def respond(self, image: Any, question: str, objects: str, vocabulary: str) -> Iterator[tuple[Any, ...]]:
        """Yield (spans per model..., status) as the models answer in turn; bad inputs raise `gr.Error`."""
        try:
            picture, question, vocab, present, scene = self._inputs(image, question, objects, vocabulary)
        except DemoInputError as err:
            raise gr.Error(str(err), print_exception=False) from err
        spans: dict[str, Spans] = {name: [] for name in self.answerers}
        for name, answerer in self.answerers.items():
            for text in answerer.stream(picture, question, self.settings):
                checks = check_attributes(text, scene, self.world) if scene is not None else None
                spans[name] = highlight(text, vocab, present, checks)
                yield *spans.values(), f"*{name} is answering...*"
        lines = [verdict(name, s, attributes_checked=scene is not None) for name, s in spans.items()]
        if present is None:
            lines.append("No ground truth given: object mentions are marked but not judged. "
                         "Enter the objects in the image to judge them.")
        yield *spans.values(), "  \n".join(lines)

    def preview_html(self, count: int = 2) -> str:
        """Both models' answers to the first examples, highlighted, as an HTML table (a static preview)."""
        rows = []
        for example in self.examples[:count]:
            *answers, _ = list(self.respond(example.image, example.question, example.objects, example.vocabulary))[-1]
            rows.append({"image": Path(example.image).read_bytes(), "question": example.question,
                         **{name: spans_html(s) for name, s in zip(self.answerers, answers)}})
        return answers_html(rows, list(self.answerers))

    def blocks(self) -> gr.Blocks:
        """The Gradio app, queued with one request at a time (the models share weights and a lock)."""
        with gr.Blocks(title="RLHF-V demo: SFT vs DDPO") as app:
            gr.Markdown(INTRO + "\nModels: " + " · ".join(f"**{name}**: `{path}`" for name, path in self.paths.items()))
            with gr.Row():
                image = gr.Image(type="filepath", sources=["upload"], label="Image", elem_id="image", height=280)
                with gr.Column():
                    question = gr.Textbox(label="Question", value="Describe the image in detail.", elem_id="question")
                    objects = gr.Textbox(label="Objects in the image (optional ground truth, comma-separated; on the "
                                               "world with colour and place to check those too)",
                                         placeholder="e.g. dog, frisbee, person; red ball in the top left",
                                         elem_id="objects")
                    vocabulary = gr.Radio(list(self.vocabularies), value=next(iter(self.vocabularies)),
                                          label="Object vocabulary")
                    ask = gr.Button("Ask both models", variant="primary", elem_id="ask")
            with gr.Row():
                answers = [gr.HighlightedText(label=name, color_map=COLORS, show_legend=True, elem_id=f"answer-{i}")
                           for i, name in enumerate(self.answerers)]
            status = gr.Markdown(elem_id="status")
            if self.examples:
                gr.Examples([[e.image, e.question, e.objects, e.vocabulary] for e in self.examples],
                            [image, question, objects, vocabulary], label="Held-out world images (objects known)")
            # preprocess=False: `respond` reads the upload itself, so a non-image gets a message, not a traceback
            gr.on([ask.click, question.submit], self.respond, [image, question, objects, vocabulary],
                  [*answers, status], preprocess=False, api_name="compare")
        return app.queue(default_concurrency_limit=1, max_size=QUEUE_SIZE)

    def launch(self, **kwargs: Any) -> gr.Blocks:
        """Serve the app on `demo.host:demo.port` with the upload limit; `kwargs` go to `Blocks.launch`.

        Prints where it is served in our words (gradio's would tell a CLI user to edit `launch()`), then, as
        gradio does, blocks a script until interrupted unless `prevent_thread_lock`.
        """
        app = self.blocks()
        quiet = kwargs.pop("quiet", False)
        block = not kwargs.pop("prevent_thread_lock", False) and not _interactive()
        options: Mapping[str, Any] = dict(server_name=self.cfg.host, server_port=self.cfg.port, share=self.cfg.share,
                                          max_file_size=int(self.cfg.max_upload_mb * 2**20), css=CSS)
        app.launch(**{**options, **kwargs, "quiet": True, "prevent_thread_lock": True})
        if not quiet:
            print(served_message(app.local_url, app.share_url, kwargs.get("share", self.cfg.share)), flush=True)
        if block:
            app.block_thread()
        return app


def served_message(local_url: str, share_url: str | None, share: bool = False) -> str:
    """Where the demo answers, and how to get (or what it means to have) a public link."""
    if share_url:
        return (f"demo: {local_url} and {share_url} (public: anyone with the link can use the models; "
                "it lasts up to a week). Stop with Ctrl+C.")
    if share:
        return f"demo: {local_url} only: the public link could not be made (gradio's reason above). Stop with Ctrl+C."
    return (f"demo: {local_url} (this machine only; for a public gradio.live link add --share to `rlhfv-nb demo`, "
            "or set demo.share: true in the params). Stop with Ctrl+C.")


def _interactive() -> bool:
    """True in a notebook or a Python prompt, where `launch` returns at once (as gradio decides)."""
    return bool(getattr(sys, "ps1", sys.flags.interactive))
