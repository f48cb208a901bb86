"""``python -m memorylib ...``: the command line of :mod:`memorylib.cli`."""

from .cli import main

raise SystemExit(main())
