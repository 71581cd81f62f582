"""The documentation's tables of promises name tests that exist.

docs/claims.md maps what the README and the topic pages promise to the tests that prove it;
docs/reliability.md's "At a glance" table does the same for faults and bad input. A row names
tests as `` `tests/test_x.py::test_name` ``, or `` `::test_name` `` for another test of the file
named before it in the same cell. Every row must name at least one test, and every test named
must be defined in its file.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_NAMED = re.compile(r"`(tests/test_\w+\.py)?(?:::(\w+))?`")


def table(markdown: str) -> list[list[str]]:
    """The cells of each row of the first markdown table in ``markdown``, header and rule left out."""
    rows = [line for line in markdown.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[2:]]


def named_tests(cell: str) -> list[tuple[str, str | None]]:
    """(file, test or None) for each test a cell names, ``::name`` taking the file named before it."""
    named, current = [], None
    for path, test in _NAMED.findall(cell):
        if path:
            current = path
        if current is None:
            raise ValueError(f"{cell!r} names ::{test} before any file")
        if path or test:
            named.append((current, test or None))
    return named


def missing(rows: list[list[str]]) -> list[str]:
    """What the rows name that does not exist, and the rows that name nothing."""
    problems = []
    for row in rows:
        tests = named_tests(row[-1])
        if not tests:
            problems.append(f"a row names no test: {row[0]}")
        for path, test in tests:
            source = REPO / path
            if not source.is_file():
                problems.append(f"{path} does not exist")
            elif test and not re.search(rf"^def {test}\(", source.read_text(), re.MULTILINE):
                problems.append(f"{path}::{test} does not exist")
    return problems


CLAIMS = (REPO / "docs" / "claims.md").read_text()
RELIABILITY = (REPO / "docs" / "reliability.md").read_text().split("## At a glance", 1)[1].split("\n## ", 1)[0]


@pytest.mark.parametrize("doc", [CLAIMS, RELIABILITY], ids=["claims", "reliability"])
def test_every_test_a_table_names_exists(doc: str) -> None:
    rows = table(doc)
    assert len(rows) >= 12
    assert not missing(rows), "\n".join(missing(rows))


def test_a_made_up_test_or_a_row_without_one_is_caught() -> None:
    rows = table("| promise | test |\n| --- | --- |\n"
                 "| real | `tests/test_claims.py::test_every_test_a_table_names_exists`, `::tabel` |\n"
                 "| made up | `tests/test_claims.py::test_that_does_not_exist` |\n"
                 "| no file | `tests/test_nothing_here.py` |\n"
                 "| nothing named | a sentence |\n")
    assert missing(rows) == ["tests/test_claims.py::tabel does not exist",
                             "tests/test_claims.py::test_that_does_not_exist does not exist",
                             "tests/test_nothing_here.py does not exist", "a row names no test: nothing named"]


def test_the_readme_and_every_topic_page_link_the_claims_they_make() -> None:
    """Each page the claims table cites exists."""
    pages = {page.strip() for row in table(CLAIMS) for page in row[1].split(",")}
    for page in pages:
        assert page == "README" or (REPO / "docs" / page).is_file(), page
