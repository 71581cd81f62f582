"""Simulated clients' processes: a dead one is replaced and its message run again.

Flower's simulation runtime (1.41) runs every ClientApp call in one of a fixed pool of Ray
actors, each its own process. When an actor's process dies (killed, out of memory) while it
runs a client, ``ray.get`` raises ``RayActorError``, the runtime answers that message with an
error and puts the *dead* actor back into the pool, so every later message that lands on it
fails too: its clients are lost for the rest of the run and the pool is one short for good.

:func:`replace_dead_client_processes` changes two things in this process's runtime: the actor a
dead job ran on is replaced by a new one before it goes back into the pool, and the message is
run again, on a live actor, up to ``RERUNS`` times, so the round still gets that client's reply.
Running a message again is safe: what a ClientApp computes is a function of its message and
its context (its seeds come from the experiment's seed, the round and the partition id), and
the dead attempt sent nothing. The ServerApp calls it when it runs in a simulation (it shares
the runtime's process); a deployment's SuperNodes have no such pool.
"""

from __future__ import annotations

import functools
from logging import WARNING
from typing import Any

from flwr.common.logger import log

from anther.core import protocol

RERUNS = 2


def replace_dead_client_processes() -> None:
    """Install the replacement into Flower's Ray backend (once; later calls change nothing)."""
    import ray
    from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend
    from flwr.simulation.ray_transport.ray_actor import BasicActorPool

    if getattr(RayBackend.process_message, "_anther_reruns", False):
        return
    fetch, process = BasicActorPool.fetch_result_and_return_actor_to_pool, RayBackend.process_message

    @functools.wraps(fetch)
    def fetch_replacing_the_dead(pool: BasicActorPool, future: Any) -> Any:
        try:
            return fetch(pool, future)
        except ray.exceptions.RayActorError:
            pool._future_to_actor[future] = pool.create_actor_fn()  # what goes back into the pool
            raise

    @functools.wraps(process)
    def process_rerunning(backend: RayBackend, message: Any, context: Any) -> Any:
        for attempt in range(RERUNS + 1):
            try:
                return process(backend, message, context)
            except ray.exceptions.RayActorError as e:
                if attempt == RERUNS:
                    raise
                log(WARNING, "anther: the process running partition %s died (%s); it is replaced and the "
                    "message runs again (%d of at most %d)", context.node_config.get(protocol.PARTITION_ID),
                    type(e).__name__, attempt + 1, RERUNS)
        raise AssertionError("unreachable: the last attempt returns or raises")

    process_rerunning._anther_reruns = True  # type: ignore[attr-defined]
    BasicActorPool.fetch_result_and_return_actor_to_pool = fetch_replacing_the_dead
    RayBackend.process_message = process_rerunning
