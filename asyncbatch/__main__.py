"""``python -m asyncbatch``: the same as the ``asyncbatch`` console script."""

from .cli import main

raise SystemExit(main())
