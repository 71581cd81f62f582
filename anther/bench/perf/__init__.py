"""``anther bench perf``: speed and memory of federated training with one shared backbone
(:mod:`.bench` runs it, :mod:`.cells` measures, :mod:`.workload` is what is trained,
:mod:`.report` writes the summary). docs/performance.md shows the numbers."""
