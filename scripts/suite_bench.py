#!/usr/bin/env python3
"""Time the README's test command and record where the time goes: a benchmark, not a test.

    python3 scripts/suite_bench.py [--fresh-clone] [--out DIR]

Runs ``python3 scripts/quickstart.py test`` exactly as CI does (the whole suite under coverage),
here or, with ``--fresh-clone``, in a new clone of this checkout's HEAD made in a temporary folder
(its ``.venv`` made from nothing, so the set-up is timed too). pytest writes a JUnit report
through ``PYTEST_ADDOPTS``; from it this prints and writes to ``--out`` (default
``docs/bench/suite``) ``suite.json`` and ``suite.md``: the machine (CPU model and the vector
extensions that decide bfloat16's speed), the wall time, pytest's summary and coverage lines,
the share of the CPUs' time that was busy (the rest is waiting: on heartbeats, polls and
timeouts), the time of each test file (the sum of its tests' durations: with two workers the
wall time is about half the sum) and the slowest tests; ``--update-durations`` also writes the per-file times
to ``tests/durations.json``, from which ``tests/conftest.py`` starts the longest files first. The
exit code is the test command's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the extensions that decide how fast a CPU runs bfloat16 and wide float32 arithmetic
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
# what holds PyTorch to narrower kernels than the CPU has (ATEN_CPU_CAPABILITY=avx2 with
# ONEDNN_MAX_CPU_ISA=AVX2 runs as on a CPU without AVX-512): recorded, since it decides bf16's speed
KERNEL_LIMITS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")


def machine() -> dict[str, object]:
    """CPU model, cores, the vector extensions of ``FLAGS`` it has, memory, Python."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"^model name\s*:\s*(.+)$", info, re.MULTILINE)
    flags = re.search(r"^flags\s*:\s*(.+)$", info, re.MULTILINE)
    have = set(flags.group(1).split()) if flags else set()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpu": model.group(1).strip() if model else platform.processor(), "cpus": os.cpu_count(),
            "extensions": [f for f in FLAGS if f in have], "memory_gb": round(memory, 1),
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M %Z"),
            "kernel_limits": {k: os.environ[k] for k in KERNEL_LIMITS if k in os.environ}}


def file_times(junit: Path) -> tuple[dict[str, float], list[tuple[str, float]], dict[str, int]]:
    """Seconds per test file, every test's seconds (slowest first), and the outcome counts."""
    per_file: dict[str, float] = defaultdict(float)
    tests: list[tuple[str, float]] = []
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for case in ET.parse(junit).getroot().iter("testcase"):
        seconds = float(case.get("time", 0))
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        module = next((p for p in case.get("classname", "").split(".") if p.startswith("test_")), "?")
        per_file[f"tests/{module}.py"] += seconds
        tests.append((name, seconds))
        counts["tests"] += 1
        for outcome, key in (("failure", "failures"), ("error", "errors"), ("skipped", "skipped")):
            counts[key] += case.find(outcome) is not None
    return dict(sorted(per_file.items(), key=lambda kv: -kv[1])), sorted(tests, key=lambda t: -t[1]), counts


def markdown(record: dict) -> str:
    m = record["machine"]
    where = "a fresh clone" if record["fresh_clone"] else "this checkout"
    limits = " ".join(f"{k}={v}" for k, v in m.get("kernel_limits", {}).items())
    lines = [f"# The test suite's time ({m['date']})", "",
             (f"{m['cpus']} x {m['cpu']} ({', '.join(m['extensions']) or 'no AVX2'}), {m['memory_gb']} GB, "
              f"Python {m['python']}; {where} at {record['commit']}"
              + (f" (PyTorch held to narrower kernels: {limits})" if limits else "")), "",
             f"- wall time: {record['wall_s'] / 60:.1f} min ({record['wall_s']:.0f} s), exit {record['exit_code']}",
             f"- CPU busy: {record['cpu_busy']:.0%} of all cores' time over the run",
             f"- pytest: {record['summary']}", f"- coverage: {record['coverage']}", "",
             "| test file | seconds (sum over its tests) |", "| --- | ---: |"]
    lines += [f"| {name} | {seconds:.1f} |" for name, seconds in record["files"].items()]
    lines += ["", "Slowest tests:", "", "| test | seconds |", "| --- | ---: |"]
    lines += [f"| {name} | {seconds:.1f} |" for name, seconds in record["slowest"]]
    return "\n".join(lines) + "\n"


def cpu_ticks() -> tuple[int, int]:
    """The machine's busy and idle clock ticks since boot (Linux's /proc/stat; zeros elsewhere)."""
    stat = Path("/proc/stat")
    if not stat.exists():
        return 0, 0
    user, nice, system, idle, iowait, *rest = (int(v) for v in stat.read_text().split()[1:9])
    return user + nice + system + sum(rest), idle + iowait


def run(where: Path, junit: Path) -> tuple[int, float, str]:
    """The README's test command in ``where``; its exit code, wall seconds and output."""
    env = {**os.environ, "PYTEST_ADDOPTS": f"{os.environ.get('PYTEST_ADDOPTS', '')} --junitxml={junit}".strip()}
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "scripts/quickstart.py", "test"], cwd=where, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    output = []
    for line in proc.stdout:
        sys.stdout.write(line)
        output.append(line)
    return proc.wait(), time.monotonic() - started, "".join(output)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fresh-clone", action="store_true", help="run in a new clone of HEAD, set-up included")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bench" / "suite")
    parser.add_argument("--slowest", type=int, default=20, help="how many of the slowest tests to list")
    parser.add_argument("--update-durations", action="store_true",
                        help="write each file's seconds to tests/durations.json (the order tests/conftest.py "
                             "runs the files in: longest first)")
    args = parser.parse_args(argv)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                            check=False).stdout.strip() or "unknown"
    with tempfile.TemporaryDirectory(prefix="anther-suite-") as tmp:
        where = ROOT
        if args.fresh_clone:
            where = Path(tmp) / "anther"
            subprocess.run(["git", "clone", "-q", str(ROOT), str(where)], check=True)
        junit = Path(tmp) / "junit.xml"
        busy_before, idle_before = cpu_ticks()
        code, wall, output = run(where, junit)
        busy, idle = (a - b for a, b in zip(cpu_ticks(), (busy_before, idle_before), strict=True))
        if not junit.exists():
            print(f"suite_bench: pytest wrote no report (exit code {code})", file=sys.stderr)
            return code or 1
        files, tests, counts = file_times(junit)
    summary = [line.strip("= \n") for line in output.splitlines() if re.search(r"\d+ (passed|failed)", line)]
    cover = [line.split()[-1] for line in output.splitlines() if line.startswith("TOTAL")]
    record = {"machine": machine(), "commit": commit, "fresh_clone": args.fresh_clone, "exit_code": code,
              "wall_s": round(wall, 1), "cpu_busy": round(busy / max(busy + idle, 1), 3),
              "summary": summary[-1] if summary else "none", "counts": counts,
              "coverage": cover[-1] if cover else "not measured", "files": {k: round(v, 1) for k, v in files.items()},
              "slowest": [(name, round(s, 1)) for name, s in tests[:args.slowest]]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "suite.json").write_text(json.dumps(record, indent=2) + "\n")
    (args.out / "suite.md").write_text(markdown(record))
    if args.update_durations:
        (ROOT / "tests" / "durations.json").write_text(json.dumps(record["files"], indent=1) + "\n")
    print(f"suite_bench: {wall / 60:.1f} min, {record['summary']}, coverage {record['coverage']}; "
          f"wrote {args.out / 'suite.json'} and suite.md")
    return code


if __name__ == "__main__":
    sys.exit(main())
