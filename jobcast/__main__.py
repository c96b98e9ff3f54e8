"""``python -m jobcast``: the ``jobcast`` command."""

from .cli import main

raise SystemExit(main())
