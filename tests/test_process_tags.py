"""What a test starts does not outlive it: every test runs with a tag of its own in its environment
(``process_tags.stop_what_each_test_started``, autouse in ``tests/conftest.py``), and whatever
carries the tag when the test ends is killed, a grandchild that left the test's process group
included, and also when pytest-timeout stops the test."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import psutil
import pytest
from process_tags import TAG_VARIABLE, kill_tagged, tagged

TESTS = Path(__file__).resolve().parent

# the tags are read from /proc/PID/environ; elsewhere the fixture finds nothing to stop
pytestmark = pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")

# a child in a session of its own that starts a grandchild and exits: the grandchild is re-parented
# away from the test, as Ray's processes and a benchmark's pool are
ORPHAN = ("import subprocess, sys; subprocess.Popen([sys.executable, '-c', "
          "'import time; time.sleep(120)  # {marker}'])")


def _orphan(env: dict[str, str], marker: str) -> None:
    subprocess.run([sys.executable, "-c", ORPHAN.format(marker=marker)], env=env, check=True,
                   start_new_session=True, timeout=60)


def _running(marker: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter():
        try:
            if marker in " ".join(p.cmdline()) and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except psutil.Error:
            continue
    return found


TAGS_SEEN: list[str] = []


@pytest.mark.parametrize("k", [0, 1])
def test_each_test_has_a_tag_of_its_own(k: int) -> None:
    tag = os.environ[TAG_VARIABLE]
    assert len(tag) == 32 and tag not in TAGS_SEEN
    TAGS_SEEN.append(tag)


def test_an_orphaned_grandchild_is_found_by_its_tag_and_killed() -> None:
    tag, marker = uuid.uuid4().hex, uuid.uuid4().hex
    _orphan({**os.environ, "ANTHER_TEST_PROBE": tag}, marker)
    (grandchild,) = tagged(tag, "ANTHER_TEST_PROBE")
    assert grandchild.ppid() != os.getpid()  # not ours to wait for: only the tag finds it
    killed = kill_tagged(tag, "ANTHER_TEST_PROBE")
    assert len(killed) == 1 and marker in killed[0]
    assert _running(marker) == [] and tagged(tag, "ANTHER_TEST_PROBE") == []
    assert kill_tagged(uuid.uuid4().hex) == []  # a tag that names nothing kills nothing


def test_what_a_test_leaves_running_is_killed_when_it_ends(pytester: pytest.Pytester,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """An inner pytest with the suite's fixture runs three tests that each orphan a grandchild and
    then pass, fail, or hang until pytest-timeout stops them: no grandchild is left afterwards."""
    marker = uuid.uuid4().hex
    pytester.makeconftest("from process_tags import stop_what_each_test_started  # noqa: F401\n")
    pytester.makepyfile(test_inner=(
        "import subprocess, sys, time\nimport pytest\n\n"
        "@pytest.fixture(autouse=True)\ndef orphan():\n"
        f"    subprocess.run([sys.executable, '-c', {ORPHAN.format(marker=marker)!r}], check=True,\n"
        "                   start_new_session=True)\n\n"
        "def test_passes():\n    pass\n\n"
        "def test_fails():\n    assert False\n\n"
        "@pytest.mark.timeout(2)\ndef test_times_out():\n    time.sleep(60)\n"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")  # only what the inner run needs: quick to start
    try:
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "pytest_timeout", timeout=120)
        result.assert_outcomes(passed=1, failed=2)
        result.stdout.fnmatch_lines(["*Timeout*"])
        assert _running(marker) == []
    finally:
        for p in _running(marker):
            p.kill()
