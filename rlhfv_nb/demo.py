"""Gradio demo: the SFT and the DDPO model answer one image and question side by side, streamed, with the
object mentions that CHAIR judges hallucinated marked when the objects in the image are known.

Safe by default: binds `demo.host` (127.0.0.1) without a share link, caps upload size and image sides,
answers bad uploads with a message instead of a traceback, and queues requests.
"""

from __future__ import annotations

import html
import json
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image, UnidentifiedImageError

from rlhfv_nb import pipeline, world_eval
from rlhfv_nb.compare import Answerer, load_answerers
from rlhfv_nb.config import Config, DemoConfig
from rlhfv_nb.data import DataError, decode_image
from rlhfv_nb.display import answers_html
from rlhfv_nb.evaluate.chair import ChairVocabulary, extract_mentions
from rlhfv_nb.generate import GenerationSettings
from rlhfv_nb.portable import portable
from rlhfv_nb.world import Scene

HALLUCINATED, PRESENT, UNJUDGED = "hallucinated", "in the image", "object (not judged)"
COLORS = {HALLUCINATED: "#f87171", PRESENT: "#86efac", UNJUDGED: "#d1d5db"}
QUEUE_SIZE = 32  # waiting requests beyond this are refused with "queue full"
CSS = "#image img { image-rendering: pixelated; width: 100%; height: 100%; object-fit: contain; }"  # tiny images
INTRO = f"""# RLHF-V: SFT vs DDPO
Upload an image (or pick an example below), ask a question, and both models answer side by side.
Object mentions are marked: <span style="background:{COLORS[HALLUCINATED]}">{HALLUCINATED}</span> (not in the
image, as CHAIR judges it), <span style="background:{COLORS[PRESENT]}">{PRESENT}</span>. **Without ground truth**
(the objects field left empty) mentions are only found, not judged, and shown
<span style="background:{COLORS[UNJUDGED]}">grey</span>. The example images come with their true objects.
"""

Spans = list[tuple[str, str | None]]


class DemoInputError(ValueError):
    """An input the demo refuses; the message is meant for the user."""


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


def highlight(text: str, vocab: ChairVocabulary, present: set[str] | None) -> Spans:
    """`text` cut into (piece, label) spans: object mentions labelled hallucinated/present, or unjudged."""
    spans: Spans = []
    last = 0
    for mention in extract_mentions(text, vocab):
        label = UNJUDGED if present is None else PRESENT if mention.category in present else HALLUCINATED
        spans += [(text[last : mention.start], None), (text[mention.start : mention.end], label)]
        last = mention.end
    spans.append((text[last:], None))
    return [(piece, label) for piece, label in spans if piece]


def spans_html(spans: Spans) -> str:
    """Highlighted spans as inline HTML (for notebooks)."""
    return "".join(html.escape(piece) if label is None else
                   f'<span style="background:{COLORS[label]}" title="{label}">{html.escape(piece)}</span>'
                   for piece, label in spans)


def verdict(name: str, spans: Spans) -> str:
    """One line per answer: how many object mentions were hallucinated, and which."""
    labels = [label for _, label in spans if label]
    if not labels:
        return f"**{name}**: no object mentioned."
    if UNJUDGED in labels:
        return f"**{name}**: {len(labels)} object mention(s), not judged."
    wrong = sorted({piece.lower() for piece, label in spans if label == HALLUCINATED})
    listed = f": {', '.join(wrong)}" if wrong else ""
    return f"**{name}**: {labels.count(HALLUCINATED)} of {len(labels)} object mention(s) hallucinated{listed}."


def world_examples(cfg: Config, folder: Path, count: int = 4) -> list[Example]:
    """The first `count` held-out world images of a synthetic run with a description prompt and true objects."""
    if not cfg.layout.world_synonyms.exists():
        return []
    vocabulary = world_eval.world_vocabulary(cfg).name
    examples = []
    for item in world_eval.eval_items(cfg):
        if item["qtype"] != "describe" or len(examples) == count:
            continue
        path = Path(folder) / f"world-{item['image_id']}.png"
        path.write_bytes(item["image"])
        objects = ", ".join(sorted(Scene.from_dict(json.loads(item["scene"])).kinds))
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

    @classmethod
    def from_config(cls, cfg: Config, sft: str | None = None, ddpo: str | None = None) -> Demo:
        """The run's SFT and DDPO models (or the given paths/hub ids), its world vocabulary and examples, COCO's."""
        paths = {"SFT": sft or pipeline.sft_model_path(cfg),
                 "DDPO": ddpo or str(cfg.layout.ddpo(cfg.ddpo.gamma).final)}
        vocabularies = {"coco": ChairVocabulary.coco()}
        if cfg.layout.world_synonyms.exists():
            world = world_eval.world_vocabulary(cfg)
            vocabularies = {world.name: world, **vocabularies}
        settings = GenerationSettings(max_new_tokens=cfg.demo.max_new_tokens,
                                      repetition_penalty=cfg.evaluation.repetition_penalty, seed=cfg.seed)
        examples = world_examples(cfg, Path(tempfile.mkdtemp(prefix="rlhfv-demo-")))
        return cls(portable(paths, cfg.run_path), load_answerers(paths, cfg.model), vocabularies, cfg.demo, settings,
                   examples)

    def _inputs(self, image: Any, question: str, objects: str, vocabulary: str
                ) -> tuple[Image.Image, str, ChairVocabulary, set[str] | None]:
        path = image.get("path") if isinstance(image, dict) else image
        if not path:
            raise DemoInputError("Upload an image or pick an example first.")
        if not (question or "").strip():
            raise DemoInputError("Type a question about the image.")
        if vocabulary not in self.vocabularies:
            raise DemoInputError(f"Unknown vocabulary {vocabulary!r}; choose one of {', '.join(self.vocabularies)}.")
        vocab = self.vocabularies[vocabulary]
        return read_image(path, self.cfg), question.strip(), vocab, ground_truth(objects or "", vocab)

    def respond(self, image: Any, question: str, objects: str, vocabulary: str) -> Iterator[tuple[Any, ...]]:
        """Yield (spans per model..., status) as the models answer in turn; bad inputs raise `gr.Error`."""
        try:
            picture, question, vocab, present = self._inputs(image, question, objects, vocabulary)
        except DemoInputError as err:
            raise gr.Error(str(err), print_exception=False) from err
        spans: dict[str, Spans] = {name: [] for name in self.answerers}
        for name, answerer in self.answerers.items():
            for text in answerer.stream(picture, question, self.settings):
                spans[name] = highlight(text, vocab, present)
                yield *spans.values(), f"*{name} is answering...*"
        lines = [verdict(name, s) for name, s in spans.items()]
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
                    objects = gr.Textbox(label="Objects in the image (optional ground truth, comma-separated)",
                                         placeholder="e.g. dog, frisbee, person", elem_id="objects")
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
        """Serve the app on `demo.host:demo.port` with the upload limit; `kwargs` go to `Blocks.launch`."""
        app = self.blocks()
        options: Mapping[str, Any] = dict(server_name=self.cfg.host, server_port=self.cfg.port, share=self.cfg.share,
                                          max_file_size=int(self.cfg.max_upload_mb * 2**20), css=CSS)
        app.launch(**{**options, **kwargs})
        return app
