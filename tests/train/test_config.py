"""The training config: shipped configs, --set overrides as YAML, refusals by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from stmap.errors import InputError
from stmap.train.config import (
    DEFAULT_CACHE_BYTES,
    SHIPPED,
    build_config,
    known_keys,
    load_config,
    parse_overrides,
)

CLI_KEYS = [
    "protocol",
    "data_root",
    "footprint_dir",
    "tiles_meta_dir",
    "source_regions",
    "target_regions",
    "backbone",
    "weights",
    "img_size",
    "batch_size",
    "epochs",
    "lr",
    "weight_decay",
    "grad_clip",
    "lambda_pc",
    "lambda_dpt",
    "k_folds",
    "train_ratio",
    "fewshot_n",
    "seed",
    "device",
    "out_dir",
]


def test_every_key_of_cli_md_is_a_config_key():
    assert set(CLI_KEYS) <= set(known_keys())


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_carry_the_published_defaults(name: str):
    config = load_config(name)
    assert config.protocol == name
    assert (config.lr, config.weight_decay, config.grad_clip) == (3e-4, 1e-4, 1.0)
    assert (config.batch_size, config.epochs, config.k_folds, config.seed) == (32, 10, 5, 42)
    assert config.img_size == 128 and config.backbone == "vit_large_patch16_dinov3.sat493m"
    assert config.backbone_rope_jitter is False
    if name == "fullsup":  # the reference's shipped config runs the baselines' setting
        assert (config.lambda_pc, config.lambda_dpt) == (0.0, 0.0)
    else:
        assert (config.lambda_pc, config.lambda_dpt) == (0.01, 0.001)


def test_fewshot_config_has_the_lora_settings():
    config = load_config("fewshot")
    assert config.fewshot_n == [1, 3, 5, 10]
    assert (config.lora_rank, config.lora_alpha) == (8, 16)
    assert (config.fewshot_lr, config.fewshot_weight_decay, config.fewshot_epochs) == (
        3e-5,
        0.01,
        3,
    )


def test_overrides_are_yaml_values():
    config = load_config(
        "lodo",
        [
            "source_regions=[hatay, nurdagi]",
            "epochs=3",
            "lr=1e-3",
            "backbone_rope_jitter=true",
            "target_regions=null",
            "data_root=/data/st",
        ],
    )
    assert config.source_regions == ["hatay", "nurdagi"]
    assert config.epochs == 3 and config.lr == 1e-3
    assert config.backbone_rope_jitter is True and config.target_regions is None
    assert config.data_root == Path("/data/st")


def test_unknown_key_is_refused_by_name_with_the_known_keys():
    with pytest.raises(InputError, match=r"unknown key 'lambda_pcc'; known keys: protocol, "):
        load_config("lodo", ["lambda_pcc=0.1"])


def test_unknown_key_in_a_file_names_the_file(tmp_path: Path):
    path = tmp_path / "mine.yaml"
    path.write_text("protocol: lodo\ndata_root: d\nout_dir: o\nlearning_rate: 0.1\n")
    with pytest.raises(InputError, match=r"mine\.yaml: unknown key 'learning_rate'"):
        load_config(str(path))


def test_bad_values_name_the_key():
    with pytest.raises(InputError, match=r"epochs: .*greater than 0"):
        load_config("fullsup", ["epochs=0"])
    with pytest.raises(InputError, match=r"protocol: "):
        load_config("fullsup", ["protocol=transfer"])
    with pytest.raises(InputError, match=r"fewshot_n: .*at least 1"):
        load_config("fewshot", ["fewshot_n=[0, 3]"])


def test_malformed_override_and_missing_config_are_errors():
    with pytest.raises(InputError, match=r"--set 'epochs': expected key=value"):
        parse_overrides(["epochs"])
    with pytest.raises(InputError, match=r"--config nowhere\.yaml: no such file"):
        load_config("nowhere.yaml")


def test_feature_cache_accepts_booleans_and_sizes():
    base = {"protocol": "fullsup", "data_root": "d", "out_dir": "o"}
    assert build_config(base).cache_budget == DEFAULT_CACHE_BYTES
    assert build_config({**base, "feature_cache": False}).cache_budget == 0
    assert build_config({**base, "feature_cache": "512MiB"}).cache_budget == 512 << 20
    assert build_config({**base, "feature_cache": 1000}).cache_budget == 1000
    with pytest.raises(InputError, match="feature_cache"):
        build_config({**base, "feature_cache": "lots"})
