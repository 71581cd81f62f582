"""What a user sees of a running simulation, and what only the run's log keeps.

``flwr run --stream`` relays everything the run prints: anther's own lines (the partition table,
the round table, ``anther: ...``) between Flower's and Ray's logs, each Flower line twice (once
coloured, once with a timestamp), DEBUG lines of the simulation runtime, progress bars and empty
lines of the client actors. :func:`relay` writes every line to the run folder's log and shows
on the terminal anther's lines plus the warnings and errors a user can act on, each once.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

FLOWER_LOG = "flower.log"  # in the run folder: everything the run's stream printed

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_TIMESTAMPED = re.compile(r"^\d{2}/\d{2}/\d{4} \d{2}:\d{2}:\d{2}:[A-Z]+:")  # Flower's second handler
_LEVEL = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL)\s*:")  # Flower's console handler, colours removed
_ACTOR = re.compile(r"^\((?:ClientAppActor|raylet|[\w:]+) pid=\d+(?:, ip=[\d.]+)?\)\s?")  # a Ray worker's line
# the flwr command's own chatter about configuration, the SuperLink and the app it installed
_FLWR_CLI = ("Flower configuration not found", "Using SuperLink:", "Successfully installed ",
             "Successfully started run", "Successfully built", "Loading project configuration")
# warnings anther's settings already answer or that say nothing a user can do
_BENIGN = ("default simulated SuperNodes changed", "Manually terminating ClientAppActor",
           "In future versions of Ray, Ray will no longer override accelerator", "warnings.warn(")


@dataclass(frozen=True)
class Console:
    """Where a run's whole stream is kept (``log``), and whether the terminal shows all of it."""

    log: Path
    verbose: bool = False


def shown(line: str) -> bool:
    """Whether the terminal shows ``line`` (without its newline) of the run's stream."""
    text = _ANSI.sub("", line).rstrip()
    from_actor = _ACTOR.match(text)
    if from_actor:
        text = text[from_actor.end():]
    if not text.strip() or _TIMESTAMPED.match(text) or any(b in text for b in _BENIGN):
        return False
    level = _LEVEL.match(text)
    if level:
        return level.group(1) in ("WARNING", "ERROR", "CRITICAL")
    if from_actor:  # a client's own output: only what reports a problem
        return any(word in text for word in ("Error", "Exception", "Traceback"))
    return not any(phrase in text for phrase in _FLWR_CLI) and "Loading weights" not in text


def relay(lines: Iterable[str], log: Path, verbose: bool = False, out: TextIO | None = None) -> None:
    """Copy every line to ``log``; show on ``out`` (the terminal) what :func:`shown` keeps, or
    everything with ``verbose``."""
    out = sys.stdout if out is None else out
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as kept:
        for line in lines:
            kept.write(line)
            kept.flush()
            if verbose or shown(line.rstrip("\n")):
                out.write(line)
                out.flush()
