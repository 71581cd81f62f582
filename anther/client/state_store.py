"""A client's Flower ``Context.state`` on its own disk, so a resumed run finds it again.

What a client keeps between rounds lives in ``Context.state``: its sample-level DP
accountant's history (``anther.client.dp``) and, with ``strategy.name=personalised``, its
local adapters. Flower keeps that state per *run*, and a resumed run is a new Flower run
(``flwr run`` again, after the ServerApp died), so every node starts it with an empty
state. The server cannot hold this state for the client: local adapters must never leave
the site, and a privacy budget the server could rewind would protect nobody. So each client
writes its state after every training round to its own disk, and a client whose state is
empty (the first message of a run) reloads the newest copy from before the round it is
asked to train, except its DP accountant, which it takes from its newest copy of all (spent
privacy is never given back).

Where: ``<state-dir>/<run-key>/partition-<id>/round-NNNN.pb``, with ``state-dir`` from the
node config (``--node-config 'state-dir="/var/lib/anther"'``) or ``$ANTHER_HOME/client-state``,
and ``run-key`` the run folder's name the server sends in every round's config (the same
before and after a resume). A state with no records is not written. The three newest copies
are kept: the server resumes from its last complete checkpoint (round k), or from round k - 1
when checkpoint k turns out damaged, and the client may already have trained round k + 1
when the server died, so the copy a resumed round needs is at most the third newest.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, RecordDict
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

from anther.client.dp import ACCOUNTANT_STATE
from anther.core import protocol
from anther.core.config import anther_home
from anther.core.files import write_atomic

MARKER = "anther-state"  # Context.state record saying which round the state is from
KEEP = 3
_FILE = re.compile(r"round-(\d{4,})\.pb")


def state_folder(node_config: Mapping[str, Any], run_key: str, partition_id: int) -> Path:
    """Where this node keeps its state for this run."""
    base = (Path(str(node_config[protocol.STATE_DIR])) if protocol.STATE_DIR in node_config
            else anther_home() / "client-state")
    if not run_key or Path(run_key).name != run_key or run_key in (".", ".."):
        raise ValueError(f"{protocol.RUN_KEY}={run_key!r} from the server is not a plain folder name")
    return base.expanduser() / run_key / f"partition-{partition_id}"


def folder_for(config: Mapping[str, Any], node_config: Mapping[str, Any], partition_id: int) -> Path | None:
    """This node's state folder for the run a round config belongs to; None when the server
    sends no run key (then nothing is persisted)."""
    key = config.get(protocol.RUN_KEY)
    return None if key is None else state_folder(node_config, str(key), partition_id)


def _saved_rounds(folder: Path) -> list[int]:
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := _FILE.fullmatch(p.name)))


def _load(folder: Path, server_round: int) -> RecordDict:
    path = folder / f"round-{server_round:04d}.pb"
    return recorddict_from_proto(ProtoRecordDict.FromString(path.read_bytes()))


def latest_saved_state(folder: Path) -> tuple[int, RecordDict] | None:
    """The newest state saved in ``folder`` and its round, or None (what a site exports from)."""
    rounds = _saved_rounds(folder)
    return (rounds[-1], _load(folder, rounds[-1])) if rounds else None


def restore_state(state: RecordDict, folder: Path, up_to_round: int) -> int | None:
    """Fill an empty ``state`` with the newest copy saved at a round <= ``up_to_round``; the
    round restored, or None (a state that is not empty is this run's own and is kept).

    The DP accountant is the exception: it comes from the newest copy of all. Rounds the
    client trained after the one the server resumes from did send updates (or could have), so
    the privacy they spent is not given back; everything else (personal adapters) goes back
    to the round the run resumes from, so the resumed rounds are the ones it would have trained."""
    if len(state) > 0:
        return None
    saved = _saved_rounds(folder)
    rounds = [r for r in saved if r <= up_to_round]
    if not rounds:
        return None
    for name, record in _load(folder, rounds[-1]).items():
        state[name] = record
    if saved[-1] > rounds[-1] and ACCOUNTANT_STATE in (newest := _load(folder, saved[-1])):
        state[ACCOUNTANT_STATE] = newest[ACCOUNTANT_STATE]
    return rounds[-1]


def save_state(state: RecordDict, folder: Path, server_round: int) -> Path | None:
    """Write ``state`` as of the end of ``server_round`` (atomically: temp file, fsync, rename)."""
    if not any(name != MARKER for name in state):
        return None
    state[MARKER] = ConfigRecord({"round": server_round})
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"round-{server_round:04d}.pb"
    write_atomic(path, recorddict_to_proto(state).SerializeToString())
    for old in _saved_rounds(folder)[:-KEEP]:
        (folder / f"round-{old:04d}.pb").unlink(missing_ok=True)
    return path
