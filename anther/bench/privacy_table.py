"""Accuracy against epsilon: the default experiment without DP and with sample-level DP-SGD
at several privacy budgets.

Each private row gives every client a target epsilon (at delta 1e-5) for all its local steps
over all rounds; the client picks the smallest noise multiplier that stays within it
(``anther/client/dp.py``) and reports what its opacus accountant says it spent. Writes
``privacy_table.md`` and ``.json`` to ``--out`` (see ``anther/bench/run_table.py``).

    python -m anther.bench.privacy_table                       # every row below
    python -m anther.bench.privacy_table --only none eps_4 -- federation.rounds=3

Arguments after ``--`` are Hydra overrides added to every run.
"""

from __future__ import annotations

import sys

from anther.bench.run_table import Table, main

TABLE = Table(
    name="privacy", doc=__doc__, common=[],
    rows={
        "none": [],
        **{f"eps_{eps}": ["privacy.dp=true", f"privacy.target_epsilon={eps}", "privacy.delta=1e-5"]
           for eps in (64, 16, 4, 1)},
    },
)

if __name__ == "__main__":
    sys.exit(main(TABLE))
