"""What an unknown flag is called in an error: the whole flag as it was typed, a suggestion when one is close,
and for the reference's flags that mqtt-fte does not have, that they are not supported and where it says
what to do instead (docs/migrating-from-mft.md). Used by the frame (cli/app.py `invoke`) for every command.

click reads `-pr` as the short option `-p` followed by `r`, and reports "No such option: -p": the name a
user never typed. `typed_flag` finds what was typed.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence

MIGRATING = "docs/migrating-from-mft.md"
_QUEUES = "no queues: files only"
_QMGR = "no queue managers: agents meet on the broker (--broker, FTE_BROKER_URL)"
# fteCreateTransfer's flags (mft-facts.md's table) that no fte command has, and in a few words why. All MFT
# commands share -p and -mquserid/-mqpassword.
MFT_UNSUPPORTED: dict[str, str] = {
    "-sm": _QMGR, "-dm": _QMGR,
    "-dp": "no z/OS partitioned data sets", "-ds": "no z/OS data sets", "-du": "no file spaces",
    "-dq": _QUEUES, "-sq": _QUEUES, "-sqgi": _QUEUES, "-sqdt": _QUEUES, "-sqwt": _QUEUES,
    "-tl": "a trigger that is not met is always logged (the trigger_not_met event)",
    "-p": "no configuration options sets: use --broker or FTE_BROKER_URL, and FTE_TOPIC_PREFIX",
    "-mquserid": "use FTE_BROKER_USERNAME", "-mqpassword": "use FTE_BROKER_PASSWORD",
}


def typed_flag(reported: str, args: Sequence[str], known: Iterable[str]) -> str:
    """The argument in `args` that click reported as the unknown option `reported` (`-p` for `-pr`,
    `--bandwidth` for `--bandwidth=5`): the first flag-like argument that starts with it and is no known
    option. `reported` itself if none is found."""
    known = set(known)
    for a in args:
        if a == "--":
            break
        name = a.split("=", 1)[0]
        if a.startswith("-") and name not in known and name.startswith(reported):
            return name
    return reported


def _key(flag: str) -> str:
    return flag.lstrip("-").lower()


def suggestion(flag: str, known: Iterable[str]) -> str | None:
    """A known option the user probably meant: the same letters with other dashes or case (`-SA`,
    `-source-agent`), or, for a name of four letters or more, a close spelling (`--destinaton-file`)."""
    options = sorted(set(known))
    same = [o for o in options if _key(o) == _key(flag)]
    if same:
        return same[0]
    if len(_key(flag)) < 4:
        return None  # `-pr` is as close to `-r` as to `-rt`: no guess is better than a wrong one
    by_key = {_key(o): o for o in options if len(_key(o)) >= 4}
    close = difflib.get_close_matches(_key(flag), list(by_key), n=1, cutoff=0.7)
    return by_key[close[0]] if close else None


def unknown_option_text(flag: str, known: Iterable[str]) -> str:
    """The error for an unknown option (without the "error: " and the help pointer the frame adds)."""
    reason = MFT_UNSUPPORTED.get(flag.lower())
    if reason is not None:
        return f"{flag} is an IBM MQ MFT flag that mqtt-fte does not support ({reason}); {MIGRATING} says more"
    hint = suggestion(flag, known)
    return f"no such option {flag}" + (f"; did you mean {hint}?" if hint else "")
