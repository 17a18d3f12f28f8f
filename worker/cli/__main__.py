"""``python -m worker.cli``: the same as the ``conveyor`` command."""

from conveyor.worker.cli import main

main()
