"""The CLI tests share test_cli.py's dev-server helpers (imported as `test_cli`)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
