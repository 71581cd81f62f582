"""Final accuracies of every strategy by name on one non-IID split of the built-in data.

Runs ``anther simulate`` once per strategy on the same split -- Dirichlet alpha 0.5 over the
answers, 10 clients, everything else as in the default experiment -- and writes
``strategies_table.md`` and ``.json`` to ``--out`` (see ``anther/bench/run_table.py``). With the
personalised strategy the clients' own accuracies use global + local adapters.

    python -m anther.bench.strategies_table                                   # every row below
    python -m anther.bench.strategies_table --only fedavg fisher -- federation.rounds=3 seed=1

Arguments after ``--`` are Hydra overrides added to every run.
"""

from __future__ import annotations

import sys

from anther.bench.run_table import Table, main

# row -> the overrides that select the strategy. Flower's server optimisers are given a
# server step in line with the clients' (50 AdamW steps of 3e-3), not their default 0.1.
# SCAFFOLD's and FedNova's formulas are SGD's: they and their FedAvg baseline train with plain SGD.
SGD = ["train.optimizer=sgd", "train.lr=0.1"]
TABLE = Table(
    name="strategies", doc=__doc__,
    common=["partition.scheme=dirichlet", "partition.alpha=0.5", "federation.num_clients=10"],
    rows={
        "fedavg": ["strategy.name=fedavg"],
        "fedprox": ["strategy.name=fedprox", "+strategy.proximal_mu=0.01"],
        "fedavgm": ["strategy.name=fedavgm", "+strategy.server_momentum=0.9"],
        "fedadagrad": ["strategy.name=fedadagrad", "+strategy.eta=0.01"],
        "fedadam": ["strategy.name=fedadam", "+strategy.eta=0.01"],
        "fedyogi": ["strategy.name=fedyogi", "+strategy.eta=0.01"],
        "fedmedian": ["strategy.name=fedmedian"],
        "fedtrimmedavg": ["strategy.name=fedtrimmedavg", "+strategy.beta=0.2"],
        "krum": ["strategy.name=krum"],
        "multikrum": ["strategy.name=multikrum", "+strategy.num_nodes_to_select=3"],
        "fisher": ["strategy.name=fisher"],
        "modality_aware": ["strategy.name=modality_aware"],
        "hetero_rank": ["strategy.name=hetero_rank", "+strategy.partition_ranks=[4,8,16]"],
        "personalised": ["strategy.name=personalised"],
        "adaptive_reg": ["strategy.name=adaptive_reg"],
        "adaptive_reg_prompt": ["strategy.name=adaptive_reg", "data.modality_agnostic_prompt=true"],
        "feddyn": ["strategy.name=feddyn", "+strategy.alpha=0.01"],
        "fedavg_sgd": ["strategy.name=fedavg", *SGD],
        "scaffold": ["strategy.name=scaffold", *SGD],
        "fednova": ["strategy.name=fednova", "+strategy.local_epochs=2", *SGD],
    },
)

if __name__ == "__main__":
    sys.exit(main(TABLE))
