"""The server's side of one SecAgg+ round, driven through any Grid with Flower's primitives.

Flower 1.41's ``SecAggPlusWorkflow`` (``flwr.server.workflow``) runs the server side only
inside the legacy ``Driver``/``LegacyContext`` loop with a legacy ``Strategy`` (it calls
``configure_fit``/``aggregate_fit`` and ``ClientProxy``); the new ``flwr.serverapp.strategy``
strategies and a custom round loop cannot use it. Its client side, ``secaggplus_mod``, is
a plain Message-API mod and is used unchanged. This class speaks the same four stages to
that mod (same record names, keys and checks), using Flower's own Shamir, key-agreement,
PRG and quantisation primitives:

1. ``setup``: protocol sizes to every sampled node; each answers with two public keys.
2. ``share_keys``: each node gets its neighbours' public keys and answers with its secrets
   (mask seed and first private key) Shamir-shared and encrypted per neighbour.
3. ``collect_masked_vectors``: the training message itself, plus the ciphertexts meant for
   the node; the node trains, quantises its vector, adds its private mask and the pairwise
   masks, and answers with the masked vector only (this stage's messages are the round's
   train messages, sent by the round loop).
4. ``unmask``: each surviving node returns shares of its neighbours' mask seeds (survivors)
   or first private keys (nodes that dropped after sharing keys); the server rebuilds the
   masks, removes them from the sum and dequantises it.

Differences from Flower's workflow: nodes that drop before sharing their keys are left out
of the unmask request (Flower would ask for shares nobody holds); the neighbour graph is
shuffled with a private RNG (not the global ``random``); and the result is the plain sum
of the clients' float vectors, which the caller turns into a mean (``secure_vector``).
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import cast

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.common import bytes_to_ndarray
from flwr.common.secure_aggregation.crypto.shamir import combine_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
from flwr.common.secure_aggregation.ndarrays_arithmetic import (
    factor_extract,
    get_parameters_shape,
    parameters_addition,
    parameters_mod,
    parameters_subtraction,
)
from flwr.common.secure_aggregation.quantization import dequantize
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
from flwr.serverapp import Grid
from flwr.supercore import log
from flwr.supercore.primitives.asymmetric import bytes_to_private_key, bytes_to_public_key

from anther.core.exchange import send_and_receive

NDArray = np.ndarray


@dataclass(frozen=True)
class SecAggParams:
    """``privacy.secagg``: values in (0, 1] for shares/threshold are fractions (Flower's floats)."""

    num_shares: float = 1.0  # > 1: a count; (0, 1]: a fraction of the sampled nodes
    reconstruction_threshold: float = 0.5  # > 1: a count; (0, 1]: a fraction of num_shares
    clipping_range: float = 8.0
    quantization_range: int = 1 << 22
    modulus_range: int = 1 << 32
    timeout: float | None = None
    # With two clients each learns the other's update from the sum, and the server, holding a
    # survivor's shares, can rebuild its private mask: no protection. privacy.secagg.unsafe_allow_two_clients
    min_clients: int = 3


_TWO_CLIENTS = (" (a sum of two updates gives each client the other's, and lets the server rebuild a "
                "survivor's mask; privacy.secagg.unsafe_allow_two_clients=true allows it anyway)")


def protocol_sizes(params: SecAggParams, num_nodes: int) -> tuple[int, int]:
    """(shares per secret, shares needed to rebuild it) for ``num_nodes`` sampled nodes, as
    Flower's workflow computes them: an odd share count, all nodes when it would be <= 2."""
    if params.num_shares <= 1:
        shares = round(params.num_shares * num_nodes)
        shares += shares < num_nodes and shares % 2 == 0
        shares = num_nodes if shares <= 2 else shares
    else:
        shares = int(params.num_shares)
    shares = min(shares, num_nodes)
    t = params.reconstruction_threshold
    threshold = max(round(t * shares), 2) if t <= 1 else int(t)
    return shares, threshold


def config_bytes(messages: Iterable[Message]) -> int:
    """Bytes of the SecAgg+ records the messages carry, serialised (``count_bytes`` fails on an
    empty list, which the unmask stage sends when no neighbour dropped)."""
    return sum(len(m.content.config_records[RECORD_KEY_CONFIGS].deflate()) for m in messages
               if m.has_content() and RECORD_KEY_CONFIGS in m.content.config_records)


class SecAggError(RuntimeError):
    """Too few nodes survived a stage to go on; the round aggregates nothing."""


@dataclass
class SecAggPlusRound:
    """One round of the protocol over ``node_ids``. Raises :class:`SecAggError` when too few
    nodes are left to rebuild the masks (no node's update is then revealed)."""

    grid: Grid
    params: SecAggParams
    server_round: int
    node_ids: list[int]
    rng: random.Random = field(default_factory=random.SystemRandom)
    bytes_down: int = 0
    bytes_up: int = 0

    def __post_init__(self) -> None:
        n = len(self.node_ids)
        if n < self.params.min_clients:
            raise SecAggError(f"{n} sampled clients; secure aggregation needs at least {self.params.min_clients}"
                              f"{_TWO_CLIENTS}")
        self.num_shares, self.threshold = protocol_sizes(self.params, n)
        order = list(self.node_ids)
        self.rng.shuffle(order)
        half = self.num_shares // 2
        self.neighbours = {nid: {order[(i + d) % n] for d in range(-half, half + 1)} for i, nid in enumerate(order)}
        self.active: set[int] = set(self.node_ids)
        self.keyed: set[int] = set()
        self.public_keys: dict[int, tuple[bytes, bytes]] = {}
        self.forward: dict[int, tuple[list[int], list[bytes]]] = {}

    # -- transport ---------------------------------------------------------------------
    def _message(self, node: int, record: ConfigRecord, content: RecordDict | None = None) -> Message:
        content = RecordDict(dict(content or {}))
        content[RECORD_KEY_CONFIGS] = record
        return Message(content, dst_node_id=node, message_type=MessageType.TRAIN, group_id=str(self.server_round))

    def _exchange(self, stage: str, messages: list[Message]) -> list[Message]:
        replies = send_and_receive(self.grid, messages, timeout=self.params.timeout)
        self.bytes_down += config_bytes(messages)
        self.bytes_up += config_bytes(replies)
        ok = [r for r in replies if not r.has_error()]
        for r in replies:
            if r.has_error():
                log(WARNING, "secagg %s: node %s failed: %s", stage, r.metadata.src_node_id, r.error.reason)
        self.active = {r.metadata.src_node_id for r in ok}
        self._check_threshold(stage)
        return ok

    def _check_threshold(self, stage: str) -> None:
        for nid in self.active:
            alive = self.neighbours[nid] & self.active
            if len(alive) < self.threshold:
                raise SecAggError(f"secagg {stage}: node {nid} has {len(alive)} live neighbours, "
                                  f"fewer than the reconstruction threshold {self.threshold}")
        if len(self.active) < self.params.min_clients:
            raise SecAggError(f"secagg {stage}: only {len(self.active)} client(s) left, fewer than "
                              f"{self.params.min_clients}{_TWO_CLIENTS}")

    # -- stages 0-1: run before the training messages go out --------------------------------
    def setup(self) -> None:
        p = self.params
        record = {Key.STAGE: Stage.SETUP, Key.SAMPLE_NUMBER: len(self.node_ids), Key.SHARE_NUMBER: self.num_shares,
                  Key.THRESHOLD: self.threshold, Key.CLIPPING_RANGE: float(p.clipping_range),
                  Key.TARGET_RANGE: int(p.quantization_range), Key.MOD_RANGE: int(p.modulus_range),
                  Key.MAX_WEIGHT: 1.0}  # anther scales by its weights itself (secure_vector)
        replies = self._exchange(Stage.SETUP, [self._message(n, ConfigRecord(record)) for n in self.node_ids])
        for r in replies:
            keys = r.content.config_records[RECORD_KEY_CONFIGS]
            self.public_keys[r.metadata.src_node_id] = (cast(bytes, keys[Key.PUBLIC_KEY_1]),
                                                         cast(bytes, keys[Key.PUBLIC_KEY_2]))

    def share_keys(self) -> None:
        def record(nid: int) -> ConfigRecord:
            keys = {str(n): list(self.public_keys[n]) for n in self.neighbours[nid] & self.active}
            return ConfigRecord({**keys, Key.STAGE: Stage.SHARE_KEYS})

        replies = self._exchange(Stage.SHARE_KEYS, [self._message(n, record(n)) for n in sorted(self.active)])
        self.keyed = set(self.active)
        self.forward = {n: ([], []) for n in self.keyed}
        for r in replies:
            res = r.content.config_records[RECORD_KEY_CONFIGS]
            for dst, ciphertext in zip(res[Key.DESTINATION_LIST], res[Key.CIPHERTEXT_LIST], strict=True):
                if dst in self.forward:
                    self.forward[dst][0].append(r.metadata.src_node_id)
                    self.forward[dst][1].append(cast(bytes, ciphertext))

    # -- stage 2: the round loop sends these and collects the replies ------------------------
    def collect_messages(self, train_messages: Iterable[Message], extra: dict) -> list[Message]:
        """The strategy's training messages for the keyed nodes, each with its ciphertexts."""
        out = []
        for m in train_messages:
            nid = m.metadata.dst_node_id
            if nid in self.keyed:
                srcs, ciphertexts = self.forward[nid]
                record = ConfigRecord({Key.STAGE: Stage.COLLECT_MASKED_VECTORS, Key.CIPHERTEXT_LIST: ciphertexts,
                                       Key.SOURCE_LIST: srcs, **extra})
                out.append(self._message(nid, record, m.content))
        self.bytes_down += config_bytes(out)
        return out

    # -- stage 3 -------------------------------------------------------------------------
    def unmask(self, replies: list[Message]) -> list[NDArray]:
        """The sum of the surviving nodes' float vectors, from their masked replies."""
        self.bytes_up += config_bytes(replies)
        collected = {r.metadata.src_node_id: r for r in replies if r.metadata.src_node_id in self.keyed}
        self.active = set(collected)
        self._check_threshold(Stage.COLLECT_MASKED_VECTORS)
        dead = self.keyed - self.active
        masked = None
        for r in collected.values():
            vec = [bytes_to_ndarray(b) for b in r.content.config_records[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS]]
            masked = vec if masked is None else parameters_addition(masked, vec)
        masked = parameters_mod(masked, self.params.modulus_range)

        def record(nid: int) -> ConfigRecord:
            return ConfigRecord({Key.STAGE: Stage.UNMASK,
                                 Key.ACTIVE_NODE_ID_LIST: sorted(self.neighbours[nid] & self.active),
                                 Key.DEAD_NODE_ID_LIST: sorted(self.neighbours[nid] & dead)})

        survivors = set(self.active)
        answers = self._exchange(Stage.UNMASK, [self._message(n, record(n)) for n in sorted(survivors)])
        shares: dict[int, list[bytes]] = {n: [] for n in self.keyed}
        for a in answers:
            res = a.content.config_records[RECORD_KEY_CONFIGS]
            for owner, share in zip(res[Key.NODE_ID_LIST], res[Key.SHARE_LIST], strict=True):
                shares[owner].append(cast(bytes, share))
        return self._unmasked_sum(masked, shares, survivors, dead)

    def _unmasked_sum(self, masked: list[NDArray], shares: dict[int, list[bytes]], survivors: set[int],
                      dead: set[int]) -> list[NDArray]:
        mod, shape = self.params.modulus_range, get_parameters_shape(masked)
        for nid in sorted(survivors | dead):
            if len(shares[nid]) < self.threshold:
                raise SecAggError(f"secagg unmask: {len(shares[nid])} shares of node {nid}'s secret, "
                                  f"need {self.threshold}")
            secret = combine_shares(shares[nid])
            if nid in survivors:  # its private mask, seeded by the rebuilt seed
                masked = parameters_subtraction(masked, pseudo_rand_gen(secret, mod, shape))
                continue
            for other in self.neighbours[nid] & survivors:  # a dropped node's pairwise masks
                key = generate_shared_key(bytes_to_private_key(secret), bytes_to_public_key(self.public_keys[other][0]))
                mask = pseudo_rand_gen(key, mod, shape)
                masked = parameters_addition(masked, mask) if nid > other else parameters_subtraction(masked, mask)
        total = parameters_mod(masked, mod)
        q_total, total = factor_extract(total)
        n = len(survivors)
        if q_total != n * self.params.quantization_range:
            raise SecAggError(f"secagg unmask: the weight factor sums to {q_total}, expected "
                              f"{n} x {self.params.quantization_range}: masks did not cancel")
        floats = dequantize(total, self.params.clipping_range, self.params.quantization_range)
        log(INFO, "secagg: summed %d masked vectors (%d dropped after sharing keys)", n, len(dead))
        return [f - (n - 1) * self.params.clipping_range for f in floats]
