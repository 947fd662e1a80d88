"""`fte <verb>`: the command line of mqtt-fte (MFT's flag names), and `python -m cli.main`.

This module puts the app together: importing each command module registers its commands on the app
(cli/app.py), in the order `fte --help` and docs/commands.md list them. The console scripts
`fte-<verb>` (cli/scripts.py) run the same commands.
"""

from __future__ import annotations

import sys
from typing import NoReturn

# the command groups; importing one registers its commands (keys before definitions: both fill `fte key`)
from . import agents, keys, transfers, brokers, monitors, templates, definitions, schedules, observe, logger, web
from .app import app, invoke

__all__ = ["app", "main"]

GROUPS = (agents, keys, transfers, brokers, monitors, templates, definitions, schedules, observe, logger, web)


def main() -> NoReturn:
    invoke(sys.argv[1:])


if __name__ == "__main__":
    main()
