"""portierd entry point."""

from __future__ import annotations

import sys


def main() -> int:
    print("portierd: the supervisor is not built yet; `make demo` shows the core", file=sys.stderr)
    return 2
