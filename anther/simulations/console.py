"""What a user sees of a running simulation, and what only the run's log keeps.

``flwr run --stream`` relays everything the run prints: anther's own lines (the partition table,
the round table, ``anther: ...``) between Flower's and Ray's logs, each Flower line twice (once
coloured, once with a timestamp), DEBUG lines of the simulation runtime, progress bars and empty
lines of the client actors. :class:`Console` writes every line to the run folder's log and shows
on the terminal anther's lines plus the warnings and errors a user can act on, each once.
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

from anther.server.run_folder import FAILURE_LINE

FLOWER_LOG = "flower.log"  # in the run folder: everything the run's stream printed

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_TIMESTAMPED = re.compile(r"^\d{2}/\d{2}/\d{4} \d{2}:\d{2}:\d{2}:[A-Z]+:")  # Flower's second handler
_LEVEL = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL)\s*:")  # Flower's console handler, colours removed
_ACTOR = re.compile(r"^\((?:ClientAppActor|raylet|[\w:]+) pid=\d+(?:, ip=[\d.]+)?\)\s?")  # a Ray worker's line
# the flwr command's own chatter about configuration, the SuperLink and the app it installed
_FLWR_CLI = ("Flower configuration not found", "Using SuperLink:", "Successfully installed ",
             "Successfully started run", "Successfully built", "Loading project configuration")
_TRACEBACK = re.compile(r"^\s*Traceback \(most recent call last\):")
_CHAINED = ("During handling of the above exception", "The above exception was the direct cause")
# Flower's own words on a failed run: anther's last line names the cause instead
_FAILED_RUN = ("Simulation raised an exception", "Exit Code: ", "An unhandled exception occurred when running",
               "For more information, visit: <https://flower.ai/docs/framework")
# warnings anther's settings already answer or that say nothing a user can do
_BENIGN = ("default simulated SuperNodes changed", "Manually terminating ClientAppActor",
           "In future versions of Ray, Ray will no longer override accelerator", "warnings.warn(")


class Console:
    """Shows a run's stream: every line goes to ``log`` (the run folder's ``flower.log``), the
    terminal (``out``) gets what :func:`shown` keeps, or everything with ``verbose``. It also
    keeps ``failure``: the cause a run printed because its folder could not record it (a full
    disk), the only place that cause is then found."""

    def __init__(self, log: Path, verbose: bool = False, out: TextIO | None = None) -> None:
        self.log, self.verbose, self.out = log, verbose, out
        self.failure: str | None = None
        self._tracebacks: set[str] = set()  # the processes (actor prefix, "" for the rest) inside one

    def relay(self, lines: Iterable[str]) -> None:
        """Copy every line of ``lines`` to the log and the terminal, as the class says. A log that
        cannot be written (a full disk) is given up with one line on the terminal; the terminal
        still gets the rest."""
        out = sys.stdout if self.out is None else self.out
        kept = self._open_log(out)
        try:
            for line in lines:
                kept = self._keep(kept, line, out)
                at = line.find(FAILURE_LINE)
                if at >= 0:  # anther simulate says it in its own last line
                    self.failure = _ANSI.sub("", line[at + len(FAILURE_LINE):]).strip()
                in_traceback = self._in_traceback(line)
                if self.verbose or (at < 0 and not in_traceback and shown(line.rstrip("\n"))):
                    out.write(line)
                    out.flush()
        finally:
            if kept is not None:
                with contextlib.suppress(OSError):
                    kept.close()

    def _in_traceback(self, line: str) -> bool:
        """Whether ``line`` belongs to a Python traceback: from ``Traceback (most recent call
        last):`` through the exception's own line, among the lines of the same process (a Ray
        actor's carry its prefix). The terminal leaves tracebacks out; the cause is in anther's
        lines, the traceback in the run folder's logs."""
        text = _ANSI.sub("", line).rstrip("\n")
        from_actor = _ACTOR.match(text)
        source = from_actor.group(0).strip() if from_actor else ""
        if from_actor:
            text = text[from_actor.end():]
        if _TRACEBACK.match(text):
            self._tracebacks.add(source)
            return True
        if source not in self._tracebacks:
            return False
        if not text or text[:1].isspace() or text.startswith(_CHAINED):
            return True
        self._tracebacks.discard(source)  # the exception's own line ends it
        return True

    def _open_log(self, out: TextIO) -> TextIO | None:
        try:
            self.log.parent.mkdir(parents=True, exist_ok=True)
            return self.log.open("a")
        except OSError as e:
            return self._give_up(None, e, out)

    def _keep(self, kept: TextIO | None, line: str, out: TextIO) -> TextIO | None:
        if kept is None:
            return None
        try:
            kept.write(line)
            kept.flush()
            return kept
        except OSError as e:
            return self._give_up(kept, e, out)

    def _give_up(self, kept: TextIO | None, error: OSError, out: TextIO) -> None:
        out.write(f"anther: cannot write {self.log} ({error.strerror or error}); the run's output goes to the "
                  "terminal only from here\n")
        if kept is not None:
            with contextlib.suppress(OSError):
                kept.close()


def shown(line: str) -> bool:
    """Whether the terminal shows ``line`` (without its newline) of the run's stream."""
    text = _ANSI.sub("", line).rstrip()
    from_actor = _ACTOR.match(text)
    if from_actor:
        text = text[from_actor.end():]
    if not text.strip() or _TIMESTAMPED.match(text) or any(b in text for b in (*_BENIGN, *_FAILED_RUN)):
        return False
    level = _LEVEL.match(text)
    if level:
        return level.group(1) in ("WARNING", "ERROR", "CRITICAL")
    if from_actor:  # a client's own output: only what reports a problem
        return any(word in text for word in ("Error", "Exception", "Traceback"))
    return not any(phrase in text for phrase in _FLWR_CLI) and "Loading weights" not in text
