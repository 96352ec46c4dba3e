"""``stmap train --set KEY=VALUE`` with any text: a config, or exit 2 naming the key.

tests/train/test_config.py and test_cli_train.py check chosen overrides; here keys
and values are arbitrary strings and YAML. The training itself is replaced by a stub:
what is fuzzed is the boundary that parses and validates the config.
"""

from __future__ import annotations

import tempfile

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from stmap.cli import main
from stmap.errors import InputError
from stmap.train.config import TrainConfig, build_config, known_keys, parse_overrides
from tests.fuzz.counting import fuzz_target
from tests.properties.profiles import examples

yaml_texts = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "[a, b",
            "{",
            "!!python/object:os.system ls",
            "*alias",
            "&a [*a]",
            "1e999",
            "-.inf",
            ".nan",
            "0x1F",
            "~",
            "null",
            "yes",
            "8GiB",
            "8 XB",
            "[1, -3]",
            "'",
            '"\\x"',
            "\t",
        ]
    ),
)
pairs = st.one_of(
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(known_keys()), yaml_texts),
    st.builds(lambda k, v: f"{k}={v}", st.text(max_size=15), yaml_texts),
    st.text(max_size=30),
)
BASE = {"protocol": "fullsup", "data_root": "data", "out_dir": "runs/x"}


@given(st.lists(pairs, max_size=5))
@fuzz_target
def test_any_overrides_give_a_config_or_an_input_error(overrides):
    try:
        config = build_config({**BASE, **parse_overrides(overrides)}, "--set")
    except InputError as exc:
        assert str(exc)
    else:
        assert isinstance(config, TrainConfig) and config.cache_budget >= 0


@examples(ci=25)
@given(st.lists(pairs, min_size=1, max_size=4))
@fuzz_target
def test_stmap_train_set_exits_0_or_2_without_a_traceback(overrides):
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp)  # relative paths in a config resolve here
        patch.setattr("stmap.train.run.run_training", lambda config, command: tmp)
        args = ["train", "--config", "fullsup", "--set", "data_root=data"]
        for pair in overrides:
            args += ["--set", pair]
        result = CliRunner().invoke(main, args)
    assert result.exit_code in (0, 2), result.output
    assert "Traceback" not in result.output and "internal error" not in result.output
