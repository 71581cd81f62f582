"""What a user sees of a simulation: anther's lines and the warnings worth acting on, each once;
the run folder's flower.log keeps everything. The stream below is what ``flwr run --stream``
relayed of a default run (trimmed: one round, one client's lines)."""

from __future__ import annotations

import io

from anther.simulations.console import relay, shown

C, G, Y, R0 = "\x1b[36m", "\x1b[92m", "\x1b[93m", "\x1b[0m"
STREAM = [
    "Flower configuration not found. Created default configuration at /tmp/anther-flwr-x/config.toml",
    "Using SuperLink: local (127.0.0.1:58163)",
    "Successfully started run 17088564376211953026",
    f"{G}INFO {R0}:      Starting logstream for run_id `17088564376211953026`",
    f"{G}INFO {R0}:      Starting Flower Simulation",
    f"{Y}WARNING {R0}:   Since flwr 1.32, default simulated SuperNodes changed from 10 to 2.",
    f"{G}INFO {R0}:      \tflwr federation simulation-config @none/default <superlink> --num-supernodes <N>",
    "Successfully installed anther to /tmp/anther-flwr-x/apps/anther.anther.0.1.0.44323f29.",
    "12/02/2026 04:52:44:DEBUG:Initialising: RayBackend",
    "┃ client ┃ train ┃ test ┃",
    "│      0 │   320 │   80 │",
    "anther: run folder /tmp/runs/default-20261202-045245",
    ("/x/ray/_private/worker.py:2051: FutureWarning: Tip: In future versions of Ray, Ray will no longer override "
     "accelerator visible devices env var if num_gpus=0"),
    "  warnings.warn(",
    "12/02/2026 04:52:49:DEBUG:Constructed ActorPool with: 2 actors",
    "    round       loss   acc (mc)",
    "        0          -      0.552",
    f"{G}INFO {R0}:      configure_train: Sampled 5 nodes (out of 5)",
    "12/02/2026 04:53:05:INFO:configure_train: Sampled 5 nodes (out of 5)",
    f"{C}(ClientAppActor pid=7972){R0} ",
    f"{C}(ClientAppActor pid=7972){R0} Loading weights: 100%|██████████| 82/82 [00:00<00:00, 26655.27it/s]",
    f"{Y}WARNING {R0}:   round 1: client 3 failed: timed out",
    "12/02/2026 04:53:10:WARNING:round 1: client 3 failed: timed out",
    f"{C}(ClientAppActor pid=7972){R0} Traceback (most recent call last):",
    f"{C}(ClientAppActor pid=7972){R0} {Y}WARNING {R0}:   Manually terminating ClientAppActor",
    "        1      1.653      0.593",
    "anther: finished; result.json and plots in /tmp/runs/default-20261202-045245",
    f"{G}INFO {R0}:      ",
    "12/02/2026 04:55:22:DEBUG:[flwr-simulation] Will push Simulation task output",
]
SHOWN = [
    "┃ client ┃ train ┃ test ┃",
    "│      0 │   320 │   80 │",
    "anther: run folder /tmp/runs/default-20261202-045245",
    "    round       loss   acc (mc)",
    "        0          -      0.552",
    f"{Y}WARNING {R0}:   round 1: client 3 failed: timed out",
    f"{C}(ClientAppActor pid=7972){R0} Traceback (most recent call last):",
    "        1      1.653      0.593",
    "anther: finished; result.json and plots in /tmp/runs/default-20261202-045245",
]


def test_the_terminal_shows_anthers_lines_and_actionable_warnings_once():
    assert [line for line in STREAM if shown(line)] == SHOWN


def test_everything_goes_to_the_log_and_verbose_shows_it_all(tmp_path):
    log, out = tmp_path / "run" / "flower.log", io.StringIO()
    relay((line + "\n" for line in STREAM), log, out=out)
    assert log.read_text().splitlines() == STREAM
    assert out.getvalue().splitlines() == SHOWN
    everything = io.StringIO()
    relay((line + "\n" for line in STREAM), tmp_path / "again.log", verbose=True, out=everything)
    assert everything.getvalue().splitlines() == STREAM
