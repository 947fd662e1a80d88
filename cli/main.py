"""`fte <verb>`: the command line of mqtt-fte (MFT's flag names), and `python -m cli.main`.

This module puts the whole app together: it imports every command module, which registers its commands on
the app (cli/app.py), in the order of cli/commands.py, the order `fte --help` and docs/commands.md list
them. The console scripts `fte-<verb>` (cli/scripts.py) run the same commands but import only their own.
"""

from __future__ import annotations

import sys
from typing import NoReturn

from .app import app, invoke
from .commands import load_all

__all__ = ["app", "main"]

# every command module (agents, keys, transfers, ...): the registry complete, in its one order, whichever
# module was imported first
GROUPS = load_all()


def main() -> NoReturn:
    invoke(sys.argv[1:])


if __name__ == "__main__":
    main()
