"""``python -m stmap``: the CLI where the ``stmap`` script is not on PATH (pip --target)."""

from stmap.cli import main

main()
