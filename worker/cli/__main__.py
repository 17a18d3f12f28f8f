"""``python -m worker.cli``: the same as the ``conveyor`` command."""

from worker.cli import main

main()
