"""Find and stop the processes a test started, by a tag in their environment.

A process started with ``TAG_VARIABLE=value`` in its environment passes it to everything it starts
(Flower's SuperLink and simulation, Ray's services and actors, the backbone service, a benchmark's
pool), whichever parent those end up with: Ray's processes outlive theirs and some start sessions
of their own, so a process group alone does not reach them. ``tests/conftest.py`` tags every test
this way and stops what is left when the test ends, a test that timed out included.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import psutil
import pytest

TAG_VARIABLE = "ANTHER_TEST_TAG"


def tagged(tag: str, variable: str = TAG_VARIABLE) -> list[psutil.Process]:
    """Every live process but this one whose environment has ``variable=tag`` (read from Linux's
    ``/proc/PID/environ``, the environment each process started with)."""
    wanted = f"{variable}={tag}".encode()
    found = []
    for pid in psutil.pids():
        if pid == os.getpid():
            continue
        with contextlib.suppress(OSError, psutil.Error), open(f"/proc/{pid}/environ", "rb") as f:
            if wanted in f.read().split(b"\0"):
                found.append(psutil.Process(pid))
    return found


def kill_tagged(tag: str, variable: str = TAG_VARIABLE, timeout_s: float = 20.0) -> list[str]:
    """SIGKILL every process tagged ``tag`` and wait for them; what was killed, one line each."""
    victims = tagged(tag, variable)
    killed = []
    for p in victims:
        with contextlib.suppress(psutil.Error):
            killed.append(f"{p.pid} {' '.join(p.cmdline())[:160]}")
            p.kill()
    psutil.wait_procs(victims, timeout=timeout_s)
    return killed


@pytest.fixture(autouse=True)
def stop_what_each_test_started(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every process a test starts inherits a tag of that test; whatever still runs when the test
    ends (it failed, or pytest-timeout stopped it while a child's children ran on) is killed, so
    that nothing a test started outlives it and burns a core under the rest of the suite.
    Fixtures of a wider scope start before this one, untagged, and live on."""
    tag = uuid.uuid4().hex
    monkeypatch.setenv(TAG_VARIABLE, tag)
    yield
    kill_tagged(tag)
