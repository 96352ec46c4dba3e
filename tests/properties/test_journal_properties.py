"""The journal round-trips any identity and any finished blocks, and refuses every other run.

tests/runtime/test_journal.py checks one identity, one block and a truncated file;
here identities are arbitrary JSON objects and journals arbitrary JSON documents.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from stmap.errors import InputError
from stmap.runtime.journal import VERSION, Journal

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
identities = st.dictionaries(st.text(max_size=12), json_values, max_size=8)
finished = st.dictionaries(
    st.integers(0, 10**6), st.tuples(st.integers(0, 2**40), st.integers(0, 2**40)), max_size=30
)


@given(identities, st.integers(1, 1 << 16), st.lists(finished, max_size=4))
def test_a_saved_journal_loads_as_it_was_saved(identity, block_size, checkpoints):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ".city.journal.json"
        journal = Journal.create(path, identity, block_size)
        expected: dict[int, tuple[int, int]] = {}
        for blocks in checkpoints:
            journal.record(blocks)
            expected.update(blocks)
        loaded = Journal.load(path)
    assert loaded is not None
    assert (loaded.identity, loaded.block_size, loaded.blocks) == (identity, block_size, expected)
    loaded.check(identity)  # the same run resumes


@given(identities, identities)
def test_a_journal_of_another_run_is_refused_naming_what_differs(saved, current):
    with tempfile.TemporaryDirectory() as tmp:
        journal = Journal.create(Path(tmp) / "j.json", saved, 512)
        if json.dumps(saved, sort_keys=True) == json.dumps(current, sort_keys=True):
            journal.check(current)
            return
        with pytest.raises(
            InputError, match="(?s)made with another .*rerun with --restart"
        ) as caught:
            journal.check(current)
    differs = [k for k in {*saved, *current} if saved.get(k) != current.get(k)]
    assert all(key in str(caught.value) for key in differs)


documents = st.fixed_dictionaries(
    {},
    optional={
        "version": st.just(VERSION) | json_values,
        "identity": json_values,
        "block_size": json_values,
        "blocks": json_values,
    },
)


@example({"version": VERSION, "identity": {}, "block_size": 512, "blocks": []})
@given(documents | json_values)
def test_any_json_in_the_journal_file_loads_or_is_ignored(document):
    """A damaged journal must mean "start afresh" (None), never a crash of ``stmap infer``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "j.json"
        path.write_text(json.dumps(document))
        loaded = Journal.load(path)
    assert loaded is None or isinstance(loaded, Journal)
