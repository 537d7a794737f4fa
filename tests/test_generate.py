"""Answer generation: batched (left-padded) equals one by one, resumable, and one settings per answer file;
the in-process backend behind `open_backend`."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from tiny_run import CPU_TINY, SHAPE, make_run

from rlhfv_nb.config import load_config
from rlhfv_nb.data import encode_image
from rlhfv_nb.generate import (
    GenerationSettings,
    HFBackend,
    answers_header,
    generate_answers,
    header_key,
    open_backend,
    read_answers,
)
from rlhfv_nb.logps import model_fingerprint
from rlhfv_nb.modeling import load_model, load_processor

QUESTIONS = ["Describe the image.", "What colour is the ball in the middle of the picture?", "Tent?",
             "Is there a small dog in the picture, and where is it?", "Describe."]
GREEDY = GenerationSettings(max_new_tokens=8)


@pytest.fixture(scope="module")
def tiny_cfg(tmp_path_factory):
    return load_config(CPU_TINY, **make_run(tmp_path_factory.mktemp("gen") / "run", pairs=4, seed=1))


@pytest.fixture(scope="module")
def tiny(tiny_cfg):
    cfg = tiny_cfg
    processor = load_processor(cfg.run_path / "base", cfg.model)
    model = load_model(cfg.run_path / "base", cfg.model)
    side = SHAPE.image_size
    items = [{"id": f"q{i}", "question": q,
              "image": encode_image(Image.new("RGB", (side, side), (50 * i, 200 - 40 * i, 90)))}
             for i, q in enumerate(QUESTIONS)]
    return model, processor, items


class Generations:
    """Counts `model.generate` calls and the sequences they produce."""

    def __init__(self, model):
        self.model, self.original, self.rows = model, model.generate, 0

    def __enter__(self):
        def counted(*args, **kwargs):
            self.rows += kwargs["input_ids"].shape[0]
            return self.original(*args, **kwargs)

        self.model.generate = counted
        return self

    def __exit__(self, *exc):
        del self.model.generate


def test_batched_greedy_equals_one_by_one(tiny):
    model, processor, items = tiny
    lengths = {len(processor.tokenizer(q)["input_ids"]) for q in QUESTIONS}
    assert len(lengths) > 2  # prompts of different lengths: the batch is left-padded
    batched = generate_answers(model, processor, items, GREEDY, batch_size=len(items), progress=False)
    single = generate_answers(model, processor, items, GREEDY, batch_size=1, progress=False)
    assert batched == single
    assert len({a["answer"] for a in single}) > 1  # the tiny model's answers depend on the input
    assert all(0 < a["new_tokens"] <= GREEDY.max_new_tokens for a in single)
    assert [a["id"] for a in batched] == [i["id"] for i in items]


def test_generation_resumes_and_skips_finished_items(tiny, tmp_path):
    model, processor, items = tiny
    path = tmp_path / "answers.jsonl"
    with Generations(model) as first:
        generate_answers(model, processor, items[:2], GREEDY, path, batch_size=2, progress=False)
    assert first.rows == 2 and len(path.read_text().splitlines()) == 2
    with Generations(model) as second:
        answers = generate_answers(model, processor, items, GREEDY, path, batch_size=2, progress=False)
    assert second.rows == 3 and len(path.read_text().splitlines()) == 5
    with Generations(model) as third:
        again = generate_answers(model, processor, items, GREEDY, path, batch_size=2, progress=False)
    assert third.rows == 0 and len(path.read_text().splitlines()) == 5
    assert again == answers and list(read_answers(path)) == [i["id"] for i in items]
    assert (tmp_path / "answers.jsonl.settings.json").exists()


def test_an_id_answered_for_another_question_is_answered_again(tiny, tmp_path):
    """Ids name positions (feedback's "<image>-q0"), so a changed question mix reuses them: the old answer is not
    taken for the new question."""
    model, processor, items = tiny
    path = tmp_path / "answers.jsonl"
    first = generate_answers(model, processor, items, GREEDY, path, batch_size=5, progress=False)
    asked_otherwise = [dict(items[1], id=items[0]["id"]), *items[1:]]  # item 1's question and image under id 0
    with Generations(model) as again:
        answers = generate_answers(model, processor, asked_otherwise, GREEDY, path, batch_size=5, progress=False)
    assert again.rows == 1 and answers[1:] == first[1:]
    assert answers[0]["question"] == items[1]["question"] and answers[0]["answer"] == first[1]["answer"]
    assert read_answers(path)[items[0]["id"]] == answers[0]  # the newer answer wins on the next read
    with Generations(model) as after:
        generate_answers(model, processor, asked_otherwise, GREEDY, path, batch_size=5, progress=False)
    assert after.rows == 0


def test_truncated_answer_line_is_regenerated_once(tiny, tmp_path):
    model, processor, items = tiny
    path = tmp_path / "answers.jsonl"
    full = generate_answers(model, processor, items, GREEDY, path, batch_size=5, progress=False)
    text = path.read_text()
    path.write_text(text[: len(text) - 10])  # killed while writing the last answer
    with Generations(model) as resumed:
        assert generate_answers(model, processor, items, GREEDY, path, batch_size=5, progress=False) == full
    assert resumed.rows == 1
    with Generations(model) as after:
        generate_answers(model, processor, items, GREEDY, path, batch_size=5, progress=False)
    assert after.rows == 0


def test_other_settings_on_the_same_file_are_refused(tiny, tmp_path):
    model, processor, items = tiny
    path = tmp_path / "answers.jsonl"
    generate_answers(model, processor, items[:1], GREEDY, path, progress=False)
    other = GenerationSettings(max_new_tokens=8, num_beams=3)
    with pytest.raises(ValueError, match=r"answers\.jsonl: holds answers generated with .*'num_beams': 1.*use another"):
        generate_answers(model, processor, items, other, path, progress=False)
    assert len(path.read_text().splitlines()) == 1  # nothing mixed in
    # the same settings (an equal, separately built object) are accepted
    generate_answers(model, processor, items, GenerationSettings(max_new_tokens=8), path, progress=False)


def test_resumed_sampling_draws_what_an_uninterrupted_run_draws(tiny, tmp_path):
    model, processor, items = tiny
    sampling = GenerationSettings(max_new_tokens=6, do_sample=True, temperature=1.5, seed=3)
    whole = generate_answers(model, processor, items, sampling, tmp_path / "a.jsonl", batch_size=2, progress=False)
    generate_answers(model, processor, items[:2], sampling, tmp_path / "b.jsonl", batch_size=2, progress=False)
    resumed = generate_answers(model, processor, items, sampling, tmp_path / "b.jsonl", batch_size=2, progress=False)
    assert resumed == whole
    torch.manual_seed(0)  # leave global RNG state predictable for later tests


def test_open_backend_generates_in_process_into_the_same_answers_file(tiny, tiny_cfg, tmp_path):
    model, processor, items = tiny
    folder = tiny_cfg.run_path / "base"
    key = header_key(answers_header(GREEDY, model=model_fingerprint(folder)))
    path = tmp_path / f"answers-{key}.jsonl"
    expected = generate_answers(model, processor, items, GREEDY, batch_size=5, progress=False)
    assert tiny_cfg.evaluation.backend == "hf"
    with open_backend(tiny_cfg, folder) as backend:
        assert isinstance(backend, HFBackend) and backend.key(GREEDY) == key != header_key(answers_header(GREEDY))
        assert backend.answer(items[:2], GREEDY, path, progress=False) == expected[:2]
        assert backend.answer(items, GREEDY, path, progress=False) == expected  # resumed
    assert backend.model is None  # freed on close
    with pytest.raises(RuntimeError, match="closed"):
        backend.answer(items, GREEDY, path, progress=False)
    assert list(read_answers(path)) == [i["id"] for i in items]


def test_a_model_trained_again_into_its_folder_gets_other_answer_files(tiny, tiny_cfg, tmp_path):
    """Re-running a training with other settings writes new weights into the same folder: its answers (evaluation,
    feedback) must not be read from the old model's file, which once gave the old model's metrics silently."""
    model, processor, items = tiny
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    with HFBackend.load(tiny_cfg, folder) as backend:
        before = backend.key(GREEDY)
        backend.answer(items[:2], GREEDY, tmp_path / f"answers-{before}.jsonl", progress=False)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    model.save_pretrained(folder)
    with HFBackend.load(tiny_cfg, folder) as backend:
        assert backend.key(GREEDY) != before
    with pytest.raises(ValueError, match="holds answers generated with"):  # a file named by hand is refused
        generate_answers(model, processor, items[:2], GREEDY, tmp_path / f"answers-{before}.jsonl", progress=False,
                         model_id=backend.model_id)
