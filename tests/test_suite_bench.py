"""scripts/suite_bench.py reads pytest's JUnit report into per-file times and the slowest tests."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "suite_bench.py"
JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" tests="4">
<testcase classname="tests.test_a" name="test_one" time="10.5"/>
<testcase classname="tests.test_a" name="test_two" time="1.5"><failure message="x"/></testcase>
<testcase classname="tests.test_b.TestGroup" name="test_three" time="30.0"/>
<testcase classname="tests.test_b.TestGroup" name="test_four" time="0.1"><skipped message="y"/></testcase>
</testsuite></testsuites>"""


def _bench():
    spec = importlib.util.spec_from_file_location("suite_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_report_gives_seconds_per_file_and_the_slowest_tests(tmp_path):
    bench = _bench()
    (tmp_path / "junit.xml").write_text(JUNIT)
    files, tests, counts = bench.file_times(tmp_path / "junit.xml")
    assert files == {"tests/test_b.py": 30.1, "tests/test_a.py": 12.0}
    assert list(files) == ["tests/test_b.py", "tests/test_a.py"]  # slowest first
    assert tests[0] == ("tests.test_b.TestGroup::test_three", 30.0) and len(tests) == 4
    assert counts == {"tests": 4, "failures": 1, "errors": 0, "skipped": 1}
    record = {"machine": bench.machine(), "commit": "abc1234", "fresh_clone": True, "exit_code": 0, "wall_s": 612.0,
              "cpu_busy": 0.8, "summary": "3 passed, 1 failed", "coverage": "96%", "files": files, "slowest": tests[:2]}
    md = bench.markdown(record)
    assert "10.2 min (612 s)" in md and "| tests/test_b.py | 30.1 |" in md and "a fresh clone at abc1234" in md
    assert "CPU busy: 80%" in md
    busy, idle = bench.cpu_ticks()  # since boot: some of each on any running machine
    assert busy > 0 and idle > 0
    assert record["machine"]["cpus"] >= 1 and isinstance(record["machine"]["extensions"], list)


def test_kernels_held_narrower_than_the_cpu_are_recorded(monkeypatch):
    bench = _bench()
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    m = bench.machine()
    assert m["kernel_limits"] == {"ATEN_CPU_CAPABILITY": "avx2"}
    record = {"machine": m, "commit": "abc1234", "fresh_clone": True, "exit_code": 0, "wall_s": 60.0, "cpu_busy": 0.5,
              "summary": "1 passed", "coverage": "96%", "files": {}, "slowest": []}
    assert "(PyTorch held to narrower kernels: ATEN_CPU_CAPABILITY=avx2)" in bench.markdown(record)
