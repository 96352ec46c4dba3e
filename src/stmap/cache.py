"""Where stmap keeps what it can recompute: one per-user cache folder, chosen once.

``$STMAP_CACHE_DIR``, else ``$XDG_CACHE_HOME/stmap``, else ``~/.cache/stmap``. Read
at the boundary (the command that needs it) and passed down as a path; entries are
keyed by content, so a stale or damaged one is rebuilt, never trusted.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "STMAP_CACHE_DIR"


def user_cache_dir(kind: str) -> Path:
    """The folder for ``kind`` (e.g. ``xbd-tiles``) in the user's stmap cache (not created)."""
    if root := os.environ.get(CACHE_ENV):
        return Path(root) / kind
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "stmap" / kind
