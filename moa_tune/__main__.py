"""``python -m moa_tune``: the ``moa-tune`` command."""
from moa_tune.cli import main

main()
