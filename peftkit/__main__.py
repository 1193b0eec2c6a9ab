"""``python -m peftkit ...``: the CLI, for launchers that take a module (``torchrun -m peftkit train ...``)."""

from peftkit.cli import main

main()
