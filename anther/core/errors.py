"""Errors a command reports in one line, without a traceback (``anther`` exits 1 on them)."""

from __future__ import annotations


class RunFailed(RuntimeError):
    """A run started and stopped before it finished; the message names the cause, and the run's
    folder holds the traceback (:func:`anther.server.run_folder.record_failure`)."""
