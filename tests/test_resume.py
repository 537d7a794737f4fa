"""A killed and resumed training run ends with exactly the weights, the log and the per-epoch models of an
uninterrupted one."""

from __future__ import annotations

import shutil

import pytest
from safetensors.torch import load_file
from transformers import TrainerCallback

from rlhfv_nb.config import load_config
from rlhfv_nb.modeling import load_processor
from rlhfv_nb.pipeline import compute_reference, prepared_pairs, run_ddpo
from rlhfv_nb.train import read_log
from tests.tiny_run import CPU_TINY, make_run

KILL_AT = 5


class Killed(Exception):
    pass


class KillAt(TrainerCallback):
    """Stops the process's training abruptly after a step, as a kill would (nothing saved beyond the checkpoints)."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == KILL_AT:
            raise Killed


def _weights(folder):
    name = "model.safetensors" if (folder / "model.safetensors").exists() else "adapter_model.safetensors"
    return load_file(str(folder / name))


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_killed_ddpo_resumes_to_the_uninterrupted_weights_and_log(tmp_path, lora, monkeypatch):
    params = make_run(tmp_path / "run", pairs=16)
    # 2 epochs of 4 steps: the resume crosses an epoch boundary; checkpoints every 3 steps, killed at step 5
    # the model after epoch 1 is kept too (`save_epochs`, for the RLAIF-V loop's checkpoint selection)
    params["ddpo"].update(max_steps=-1, epochs=2.0, batch_size=4, save_steps=3, ablation_gammas=[], save_epochs=True)
    params["model"]["lora"] = {"enabled": lora, "dropout": 0.1}  # dropout: the RNG state must be restored too
    cfg = load_config(CPU_TINY, **params)
    rows, _, cache = prepared_pairs(cfg, load_processor(cfg.run_path / "base", cfg.model))
    compute_reference(cfg, rows, cache=cache)
    folder = cfg.layout.ddpo(cfg.ddpo.gamma).root

    training = cfg.layout.ddpo(cfg.ddpo.gamma)
    uninterrupted = _weights(run_ddpo(cfg, rows, cache, cfg.ddpo.gamma))
    expected_log = read_log(folder / "log.jsonl")
    assert training.saved_epochs() == [1] and not list(folder.rglob("*.partial"))
    after_epoch1 = _weights(training.epoch(1))
    assert sorted(p.name for p in training.epoch(1).iterdir()) == sorted(p.name for p in training.final.iterdir())
    assert max((uninterrupted[k] - after_epoch1[k]).abs().max().item() for k in after_epoch1) > 0
    shutil.rmtree(folder)

    import rlhfv_nb.train as train

    ddpo_trainer = train.ddpo_trainer
    monkeypatch.setattr(train, "ddpo_trainer",  # the run is cut short from outside; our code runs unchanged
                        lambda *args: ddpo_trainer(*args, callbacks=[KillAt()]))
    with pytest.raises(Killed):
        run_ddpo(cfg, rows, cache, cfg.ddpo.gamma)
    monkeypatch.undo()
    assert [p.name for p in sorted((folder / "checkpoints").iterdir())] == ["checkpoint-3"]
    # the killed attempt logged step 4 (after checkpoint-3; killed before step 5's record): logged twice unless...
    assert max(r["step"] for r in read_log(folder / "log.jsonl")) == KILL_AT - 1

    resumed = _weights(run_ddpo(cfg, rows, cache, cfg.ddpo.gamma))
    assert uninterrupted.keys() == resumed.keys()
    assert max((uninterrupted[k] - resumed[k]).abs().max().item() for k in resumed) == 0.0
    log = read_log(folder / "log.jsonl")
    steps = [r["step"] for r in log if "loss" in r]
    assert steps == sorted(set(steps)) == list(range(1, 9))  # ...the resumed run drops the killed attempt's step 4
    strip = lambda records: [{k: v for k, v in r.items() if "runtime" not in k and "per_second" not in k}  # noqa: E731
                             for r in records if "loss" in r]
    assert strip(log) == strip(expected_log)
    assert training.saved_epochs() == [1]
    resumed_epoch1 = _weights(training.epoch(1))
    assert max((after_epoch1[k] - resumed_epoch1[k]).abs().max().item() for k in after_epoch1) == 0.0
