"""The journal of a run: which blocks are finished, and what they were computed from.

One JSON file per input in OUTDIR (``.S.journal.json``), replaced atomically after
each checkpoint of the partial rasters, so it never names a block that the partial
files do not hold. ``identity`` is everything the outputs depend on: the input
file (path, size, modification time), the model's hash, the bands, tile grid,
threshold, precision and resampling, and the stmap version. A run resumes only
from a journal with the same identity; any other journal is refused, naming what
differs, unless the user restarts. Block size is not part of the identity (results
do not depend on it): a resumed run keeps the journal's.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stmap.errors import InputError
from stmap.io.writers import read_json, write_json

VERSION = 1


def identity_key(identity: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class Journal:
    """Finished blocks of one input: index → (valid pixels, damaged pixels)."""

    path: Path
    identity: dict[str, Any]
    block_size: int
    blocks: dict[int, tuple[int, int]] = field(default_factory=dict)

    @classmethod
    def create(cls, path: Path, identity: dict[str, Any], block_size: int) -> Journal:
        journal = cls(path, identity, block_size)
        journal.save()
        return journal

    @classmethod
    def load(cls, path: Path) -> Journal | None:
        """The journal at ``path``; None when there is none or it cannot be parsed."""
        raw = read_json(path)
        if not isinstance(raw, dict) or raw.get("version") != VERSION:
            return None
        try:
            blocks = {int(k): (int(v[0]), int(v[1])) for k, v in raw["blocks"].items()}
            return cls(path, dict(raw["identity"]), int(raw["block_size"]), blocks)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError):
            return None

    def check(self, identity: Mapping[str, Any]) -> None:
        """Refuse to resume from a journal written for another input, model or options."""
        if identity_key(identity) == identity_key(self.identity):
            return
        differs = sorted(
            k for k in {*identity, *self.identity} if identity.get(k) != self.identity.get(k)
        )
        details = "; ".join(_difference(k, self.identity.get(k), identity.get(k)) for k in differs)
        raise InputError(
            f"{self.path}: an unfinished run in this output directory was made with another "
            f"{', '.join(differs)} ({details}); rerun with --restart to discard it, "
            "or choose another -o"
        )

    def record(self, blocks: Mapping[int, tuple[int, int]]) -> None:
        self.blocks.update(blocks)
        self.save()

    def save(self) -> None:
        write_json(
            self.path,
            {
                "version": VERSION,
                "key": identity_key(self.identity),
                "identity": self.identity,
                "block_size": self.block_size,
                "blocks": {str(k): list(v) for k, v in sorted(self.blocks.items())},
            },
        )


def _difference(key: str, then: Any, now: Any) -> str:
    """One difference in a few words: "threshold 0.5 → 0.3", "input mtime_ns, size changed"."""
    if isinstance(then, dict) and isinstance(now, dict):
        changed = sorted(k for k in {*then, *now} if then.get(k) != now.get(k))
        return f"{key} {', '.join(changed)} changed"
    return f"{key} {_short(then)} → {_short(now)}"


def _short(value: Any) -> str:
    """A value as the user knows it; hashes cut to their first 12 digits."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= 24 else text[:12] + "…"
