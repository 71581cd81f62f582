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
           for eps in (64, 16, 8, 4, 1)},
        # DP-SGD's clipping without its noise (no privacy: epsilon is infinite), to tell what the
        # clipping costs from what the noise does
        "clip_only": ["privacy.dp=true", "privacy.noise_multiplier=0.0"],
        # DP-SGD's usual trade: four times the batch for a quarter of the steps, the same samples a
        # round; a sample is drawn more often per step but in fewer steps, and the noise on a
        # step's mean gradient shrinks with the batch
        "eps_8_batch_64": ["privacy.dp=true", "privacy.target_epsilon=8", "privacy.delta=1e-5",
                           "train.batch_size=64", "train.local_steps=12"],
    },
)

if __name__ == "__main__":
    sys.exit(main(TABLE))
