"""Run parameters: clear errors for bad values, partial overrides, and the shipped params files."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from rlhfv_nb.config import Config, ConfigError, load_config, notebook_config

ROOT = Path(__file__).resolve().parents[1]
PARAMS = sorted((ROOT / "params").glob("*.yaml"))


@pytest.fixture(autouse=True)
def _at_project_root(monkeypatch):
    # relative local paths in params (e.g. launch.accelerate_config) resolve from the project root
    monkeypatch.chdir(ROOT)


def _diff(a: dict, b: dict, prefix: str = "") -> set[str]:
    """Dotted keys whose values differ between two nested dicts."""
    keys = set()
    for key in a.keys() | b.keys():
        dotted = f"{prefix}{key}"
        if isinstance(a.get(key), dict) and isinstance(b.get(key), dict):
            keys |= _diff(a[key], b[key], dotted + ".")
        elif a.get(key) != b.get(key):
            keys.add(dotted)
    return keys


def test_unknown_key_suggests_the_close_one():
    with pytest.raises(ConfigError, match=r"ddpo\.betta: unknown key \(did you mean 'beta'\?\)"):
        load_config({"ddpo": {"betta": 0.1}})
    with pytest.raises(ConfigError, match=r"model\.lora\.rank: unknown key"):
        load_config({"model": {"lora": {"rank": 4}}})
    with pytest.raises(ConfigError, match=r"dpo: unknown key \(did you mean 'ddpo'\?\)"):
        load_config({"dpo": {}})


def test_unknown_key_without_a_close_match_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"data\.zzz: unknown key \(known: .*max_length"):
        load_config({"data": {"zzz": 1}})


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"ddpo": {"batch_size": "8"}}, r"ddpo\.batch_size: expected int, got str '8'"),
        ({"ddpo": {"batch_size": 8.0}}, r"ddpo\.batch_size: expected int, got float"),
        ({"ddpo": {"beta": True}}, r"ddpo\.beta: expected float, got bool"),
        ({"ddpo": {"ablation_gammas": 1.0}}, r"ddpo\.ablation_gammas: expected a list"),
        ({"ddpo": {"ablation_gammas": [1.0, "x"]}}, r"ddpo\.ablation_gammas\[1\]: expected float"),
        ({"ddpo": 0.1}, r"ddpo: expected a mapping, got float"),
        ({"data": {"max_pairs": "10"}}, r"data\.max_pairs: expected int, got str"),
        ({"seed": "0"}, r"seed: expected int"),
    ],
)
def test_wrong_type_names_the_dotted_key(values, message):
    with pytest.raises(ConfigError, match=message):
        load_config(values)


def test_lossless_conversions_are_accepted():
    cfg = load_config({"ddpo": {"beta": 1, "ablation_gammas": (1, 2.5)}, "data": {"max_pairs": None}})
    assert cfg.ddpo.beta == 1.0 and isinstance(cfg.ddpo.beta, float)
    assert cfg.ddpo.ablation_gammas == [1.0, 2.5]


def test_missing_local_file_is_reported(tmp_path):
    missing = tmp_path / "nope.parquet"
    expected = rf"data\.preferences: file or folder '{re.escape(str(missing))}' does not exist"
    with pytest.raises(ConfigError, match=expected):
        load_config({"data": {"preferences": str(missing)}})
    with pytest.raises(ConfigError, match=r"launch\.accelerate_config: .*does not exist"):
        load_config({"launch": {"accelerate_config": "configs/accelerate/missing.yaml"}})
    with pytest.raises(ConfigError, match=r"params file .*missing\.yaml' does not exist"):
        load_config(tmp_path / "missing.yaml")
    # an existing local file and a hub id both pass
    missing.write_bytes(b"")
    assert load_config({"data": {"preferences": str(missing), "sft_source": "openbmb/RLHF-V-Dataset"}})


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"data": {"on_bad_row": "ignore"}}, r"data\.on_bad_row: 'ignore' is not one of \['error', 'skip'\]"),
        ({"model": {"dtype": "float64"}}, r"model\.dtype: 'float64' is not one of"),
        ({"model": {"attn_implementation": "flash"}}, r"model\.attn_implementation: 'flash' is not one of"),
        ({"ddpo": {"beta": 0.0}}, r"ddpo\.beta: must be > 0"),
        ({"data": {"max_length": -1}}, r"data\.max_length: must be > 0"),
        ({"model": {"load_in_4bit": True}}, r"model\.load_in_4bit: .*set model\.lora\.enabled"),
        ({"data": {"world": {"no_such_field": 1}}}, r"data\.world: "),
        ({"feedback": {"exists_questions": 3}}, r"feedback\.exists_questions: 3 is not one of \[0, 1, 2\]"),
        ({"feedback": {"right_answer_pairs": ["exists", "colour"]}},
         r"feedback\.right_answer_pairs\[1\]: 'colour' is not one of"),
    ],
)
def test_invalid_choice_or_value(values, message):
    with pytest.raises(ConfigError, match=message):
        load_config(values)


def test_error_from_a_file_names_the_file(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("ddpo:\n  gama: 2\n")
    expected = rf"{re.escape(str(path))}: ddpo\.gama: unknown key \(did you mean 'gamma'\?\)"
    with pytest.raises(ConfigError, match=expected):
        load_config(path)
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping of sections"):
        load_config(path)


def test_partial_override_changes_only_its_keys():
    defaults = Config().to_dict()
    cfg = load_config({"ddpo": {"beta": 0.5}, "model": {"tiny": {"layers": 3}}})
    assert _diff(defaults, cfg.to_dict()) == {"ddpo.beta", "model.tiny.layers"}
    assert cfg.ddpo.beta == 0.5 and cfg.model.tiny.layers == 3


def test_keyword_override_merges_over_a_params_file():
    base = load_config(ROOT / "params" / "full-8xa100.yaml")
    cfg = load_config(ROOT / "params" / "full-8xa100.yaml", ddpo={"gamma": 5.0}, model={"lora": {"r": 8}})
    assert _diff(base.to_dict(), cfg.to_dict()) == {"ddpo.gamma", "model.lora.r"}


def test_defaults_are_the_released_upstream_recipe_not_the_miniature():
    cfg = Config()
    assert cfg.model.base == "llava-hf/llava-1.5-7b-hf" and not cfg.model.freeze_vision and not cfg.model.lora.enabled
    assert (cfg.ddpo.gamma, cfg.ddpo.beta, cfg.ddpo.use_average, cfg.ddpo.sft_weight, cfg.ddpo.lr) == \
        (1.1, 0.1, False, 0.0, 5e-7)
    assert not cfg.sft.enabled and cfg.data.max_length == 2048 and cfg.data.preferences == "openbmb/RLHF-V-Dataset"


def test_a_notebook_without_params_runs_the_preset_its_name_names():
    cpu_tiny = load_config(ROOT / "params" / "cpu-tiny.yaml")
    assert notebook_config({"name": "cpu-tiny", "model": {}, "ddpo": {}}).to_dict() == cpu_tiny.to_dict()
    # papermill -f params/X.yaml injects X's sections and name: X's values, not cpu-tiny's, fill the gaps
    full = notebook_config({"name": "full-8xa100", "ddpo": {"gamma": 5.0}})
    assert _diff(load_config(ROOT / "params" / "full-8xa100.yaml").to_dict(), full.to_dict()) == {"ddpo.gamma"}
    assert notebook_config({"name": "my-own-run"}).ddpo.sft_weight == 0.0  # no preset file: the defaults


def test_defaults_are_independent_instances():
    # mutable defaults (lists, nested sections) must not be shared between configs
    a, b = load_config({}), load_config({})
    a.ddpo.ablation_gammas.append(9.0)
    a.model.tiny.layers = 7
    assert b.ddpo.ablation_gammas == [] and b.model.tiny.layers == Config().model.tiny.layers


@pytest.mark.parametrize("path", PARAMS, ids=[p.name for p in PARAMS])
def test_every_params_file_validates(path):
    cfg = load_config(path)
    assert cfg.name == path.stem
    assert dataclasses.is_dataclass(cfg.ddpo) and cfg.ddpo.gamma > 0


def test_notebook_config_reads_section_variables_only():
    namespace = {"ddpo": {"gamma": 5.0}, "seed": 3, "unrelated": object(), "In": []}
    cfg = notebook_config(namespace)
    assert cfg.ddpo.gamma == 5.0 and cfg.seed == 3
    assert _diff(Config().to_dict(), cfg.to_dict()) == {"ddpo.gamma", "seed"}


def test_a_preset_extends_another_and_overrides_only_what_it_names(tmp_path):
    (tmp_path / "base.yaml").write_text("name: base\nmodel: {base: org/base, lora: {enabled: true, r: 8}}\n"
                                        "ddpo: {beta: 0.1}\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\nname: child\nmodel: {base: org/child, lora: {r: 4}}\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert (cfg.name, cfg.model.base, cfg.model.lora.enabled, cfg.model.lora.r, cfg.ddpo.beta) == \
        ("child", "org/child", True, 4, 0.1)
    (tmp_path / "base.yaml").write_text("extends: child.yaml\n")
    with pytest.raises(ConfigError, match="a cycle"):
        load_config(tmp_path / "child.yaml")
    (tmp_path / "child.yaml").write_text("extends: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="nowhere.yaml.*does not exist"):
        load_config(tmp_path / "child.yaml")


def test_family_overrides_are_typed_and_checked():
    cfg = load_config({"model": {"family": {"name": "llava", "vision": ["model.vision_tower"]}}})
    assert cfg.model.family.vision == ["model.vision_tower"] and cfg.model.family.decoder is None
    with pytest.raises(ConfigError, match=r"model.family.visoin: unknown key \(did you mean 'vision'\?\)"):
        load_config({"model": {"family": {"visoin": ["x"]}}})
