"""portierctl entry point."""

from __future__ import annotations

import sys


def main() -> int:
    print("portierctl: the control client is not built yet", file=sys.stderr)
    return 2
