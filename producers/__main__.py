"""``python -m producers``: the same as ``itep-events``."""

from __future__ import annotations

from producers.cli import main

raise SystemExit(main())
