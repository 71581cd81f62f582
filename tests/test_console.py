"""What a user sees of a simulation: anther's lines and the warnings worth acting on, each once;
the run folder's flower.log keeps everything. The stream below is what ``flwr run --stream``
relayed of a default run (trimmed: one round, one client's lines)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from anther.server.run_folder import FAILURE_LINE
from anther.simulations.console import Console, shown

C, G, Y, R, R0 = "\x1b[36m", "\x1b[92m", "\x1b[93m", "\x1b[91m", "\x1b[0m"
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
    Console(log, out=out).relay(line + "\n" for line in STREAM)
    assert log.read_text().splitlines() == STREAM
    assert out.getvalue().splitlines() == [line for line in SHOWN if "Traceback" not in line]
    everything = io.StringIO()
    Console(tmp_path / "again.log", verbose=True, out=everything).relay(line + "\n" for line in STREAM)
    assert everything.getvalue().splitlines() == STREAM


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (every write: no space left)")
def test_a_log_on_a_full_disk_is_given_up_and_a_printed_failure_is_kept():
    """The run folder's disk is full: flower.log cannot take a line (``/dev/full`` answers every
    write with ENOSPC). The terminal says so once and still shows what it would; the cause the
    ServerApp printed, because its folder could not record it, is kept for anther's last line."""
    out = io.StringIO()
    console = Console(Path("/dev/full"), out=out)
    console.relay(line + "\n" for line in [*STREAM, f"{FAILURE_LINE}OSError: [Errno 28] No space left on device"])
    said = out.getvalue().splitlines()
    assert said[0] == ("anther: cannot write /dev/full (No space left on device); the run's output goes to the "
                       "terminal only from here")
    assert said[1:] == [line for line in SHOWN if "Traceback" not in line]
    assert console.failure == "OSError: [Errno 28] No space left on device"


def test_tracebacks_stay_off_the_terminal_and_other_processes_lines_do_not():
    """A failed run's stream: Flower's traceback and its words on the failure go to the log only;
    a round row another process prints in the middle of an actor's traceback is still shown."""
    actor = f"{C}(ClientAppActor pid=11){R0} "
    stream = [
        f"{R}ERROR {R0}:     Simulation raised an exception",
        "Traceback (most recent call last):",
        '  File "/x/run_simulation.py", line 369, in _main_loop',
        "    raise thread_ex",
        "RuntimeError: boom in round 1",
        f"{actor}Traceback (most recent call last):",
        "        2      0.500      0.700",
        f'{actor}  File "/x/client_app.py", line 9, in train',
        "",
        f"{actor}The above exception was the direct cause of the following exception:",
        f"{actor}ValueError: bad image",
        f"{R}ERROR {R0}:     Exit Code: 700",
        "An unhandled exception occurred when running the simulation.",
        "For more information, visit: <https://flower.ai/docs/framework/1.41/en/ref-exit-codes/700.html>",
        "anther: still shown",
    ]
    out = io.StringIO()
    Console(Path("/dev/null"), out=out).relay(line + "\n" for line in stream)
    assert out.getvalue().splitlines() == ["        2      0.500      0.700", "anther: still shown"]
