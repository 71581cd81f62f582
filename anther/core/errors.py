"""Errors and stops a command reports in one line, without a traceback."""

from __future__ import annotations


class RunFailed(RuntimeError):
    """A run started and stopped before it finished; the message names the cause, and the run's
    folder holds the traceback (:func:`anther.server.run_folder.record_failure`)."""


class Stopped(SystemExit):
    """The command was asked to stop by a signal (SIGTERM from ``kill``, ``timeout`` or a job
    scheduler); raised by the handler so that every ``finally`` stops what the command started.
    A SystemExit with code 128 + the signal's number: ``except Exception`` does not swallow it,
    and uncaught it ends the process with the exit status a shell gives a killed command."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum


class DataFormatError(ValueError):
    """A record on disk is malformed; the message names the file and the record. ``reason`` is
    the short kind of fault (``missing image``, ``answer not an option``...) that
    ``data.skip_bad`` counts the skipped records by."""

    def __init__(self, message: str, reason: str = "malformed record") -> None:
        super().__init__(message)
        self.reason = reason


class LeftOut(DataFormatError):
    """A record that is not wrong but that anther cannot use from this copy (IconQA's image-choice
    questions whose choice pictures a Hugging Face copy lacks, VQA-RAD's records of no split): it
    is left out and counted by ``reason`` whatever ``data.skip_bad`` says."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message, reason)
