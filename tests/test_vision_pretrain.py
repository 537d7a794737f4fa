"""Tag-pretraining of the tiny vision tower, and keeping the tower frozen in training."""

from __future__ import annotations

import pytest
import torch
from tiny_run import CPU_TINY, make_run

from rlhfv_nb import world
from rlhfv_nb.config import load_config
from rlhfv_nb.data import encode_image
from rlhfv_nb.modeling import load_model, load_processor
from rlhfv_nb.train import prepare_for_training
from rlhfv_nb.vision_pretrain import patch_labels, pretrain_vision_tower


def test_each_patch_takes_its_cells_class():
    assert patch_labels([[1, 2], [3, 4]], 2).tolist() == [1, 2, 3, 4]
    assert patch_labels([[1, 2], [3, 4]], 4).tolist() == [1, 1, 2, 2] * 2 + [3, 3, 4, 4] * 2
    assert patch_labels([[7]], 3).tolist() == [7] * 9


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    return load_config(CPU_TINY, **make_run(tmp_path_factory.mktemp("vision") / "run", pairs=2))


def test_pretraining_teaches_the_tower_to_tell_the_objects_apart(cfg):
    """On world images (rendered at the tiny model's size) the tagging loss falls from chance to near zero."""
    size = cfg.model.tiny.image_size
    wcfg = world.WorldConfig(image_size=size, kinds=(("ball", "circle"), ("tent", "triangle")), synonyms=(),
                             companions=(), colors=(("red", (210, 40, 40)),), max_objects=2)
    scenes = world.make_fresh_scenes(wcfg, 64, seed=0)
    model, processor = load_model(cfg.run_path / "base", cfg.model), load_processor(cfg.run_path / "base", cfg.model)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    losses = pretrain_vision_tower(model, processor, [encode_image(world.render(s, wcfg)) for s in scenes],
                                   [world.cell_classes(s, wcfg) for s in scenes], world.num_cell_classes(wcfg),
                                   steps=150, lr=3e-3, batch_size=16, seed=0)
    assert len(losses) == 150
    assert sum(losses[:5]) / 5 > 0.8 and sum(losses[-10:]) / 10 < 0.3 * sum(losses[:5]) / 5
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed and all("vision_tower" in name for name in changed)  # the language model is untouched


def test_frozen_vision_tower_gets_no_gradient(cfg):
    model = prepare_for_training(load_model(cfg.run_path / "base", cfg.model), cfg.model)
    assert cfg.model.freeze_vision
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {name for name, _ in model.named_parameters() if ".vision_tower." in f".{name}"}
    thawed = prepare_for_training(load_model(cfg.run_path / "base", cfg.model),
                                  load_config({**cfg.to_dict(), "model": {**cfg.to_dict()["model"],
                                                                          "freeze_vision": False}}).model)
    assert all(p.requires_grad for p in thawed.parameters())


def test_the_world_run_pretrains_and_records_it(tmp_path):
    """`build_base_model` builds the tiny model and pretrains its tower when the SFT rows carry scenes;
    `base_model_path` only finds it."""
    from rlhfv_nb import pipeline

    run = load_config(CPU_TINY, run_dir=str(tmp_path), data={"sft_images": 12, "eval_images": 2, "feedback_images": 2},
                      model={"tiny": {"vision_pretrain_steps": 3}})
    pipeline.prepare_data(run)
    (tmp_path / "base.partial").mkdir()  # what a run killed while building the base leaves behind
    (tmp_path / "base.partial" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="stage 02 builds it"):
        pipeline.base_model_path(run)  # finding a path never trains
    base = pipeline.build_base_model(run)
    record = (tmp_path / "base" / "vision_pretrain.json").read_text()
    assert base == str(tmp_path / "base") and '"steps": 3' in record
    assert not (tmp_path / "base.partial").exists()
    built = (tmp_path / "base" / "model.safetensors").stat().st_mtime_ns
    assert pipeline.build_base_model(run) == base  # unchanged recipe: reused as it is
    assert (tmp_path / "base" / "model.safetensors").stat().st_mtime_ns == built
    again = load_config(CPU_TINY, run_dir=str(tmp_path), data=run.to_dict()["data"],
                        model={"tiny": {"vision_pretrain_steps": 2}})
    assert not pipeline.base_is_current(again)  # another shape or pretraining: the old base is not used
    pipeline.build_base_model(again)
    assert '"steps": 2' in (tmp_path / "base" / "vision_pretrain.json").read_text()
    assert pipeline.base_is_current(again) and not pipeline.base_is_current(run)
