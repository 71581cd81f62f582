"""Admission: what one caller may hold of the service at once, so no client can starve the others.

Three bounds, all reported by Info:

- **calls per client** (``max_calls_per_client``): a caller (its bearer token's client name, or
  its host when the service runs without tokens) with that many calls in flight has the next one
  refused at once with UNAVAILABLE, before any of it is read; clients back off and retry.
- **upload bytes in flight** (``max_inflight_bytes``, all calls together): a chunk that would take
  the total over waits for room up to the read timeout, then its call is refused with UNAVAILABLE.
  A call's bytes are held until its reply is sent (its decoded tensors live that long).
- **read timeout** (``read_timeout_s``): a call that sends nothing for that long, before its first
  chunk or between two, is ended with DEADLINE_EXCEEDED, which frees its worker thread.

Each gRPC worker thread serves one call; without these bounds a single client could take them all
(idle streams) or fill memory with uploads (many large requests at once).
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from anther.backbone.wire import Undecodable

T = TypeVar("T")

_END = object()  # the stream ended


class Busy(Exception):
    """The service is at a bound for this caller right now; retrying later can succeed (UNAVAILABLE)."""


class Stalled(Exception):
    """A call sent nothing for the read timeout (DEADLINE_EXCEEDED)."""


@dataclass
class Ticket:
    """One admitted call: the caller it counts against and the upload bytes it holds."""

    caller: str
    admission: Admission
    held_bytes: int = 0
    _done: threading.Event = field(default_factory=threading.Event)

    def read(self, stream: Iterator[T]) -> Iterator[T]:
        """``stream``'s messages, each waited for at most the read timeout and counted against the
        bytes in flight. gRPC's request iterator cannot time out, so a helper thread reads it; once
        the call ends, gRPC ends that iterator and the helper with it."""
        inbox: queue.Queue = queue.Queue(maxsize=1)
        threading.Thread(target=self._pump, args=(stream, inbox), name="backbone-read", daemon=True).start()
        timeout = self.admission.read_timeout_s
        while True:
            try:
                item = inbox.get(timeout=timeout)
            except queue.Empty:
                raise Stalled(f"no request data for {timeout:g} s (Info.read_timeout_s); call ended") from None
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            if not isinstance(item, Undecodable):  # bytes that are no message hold nothing; the reader refuses them
                self.admission.reserve(self, item.ByteSize())
            yield item

    def _pump(self, stream: Iterator, inbox: queue.Queue) -> None:
        try:
            for item in stream:
                if not self._put(inbox, item):
                    return
            self._put(inbox, _END)
        except Exception as e:  # noqa: BLE001 - the call was cancelled or ended; hand it to the reader
            self._put(inbox, e)

    def _put(self, inbox: queue.Queue, item: object) -> bool:
        """Hand ``item`` to the reader; False once the call is over and nobody will read it."""
        while not self._done.is_set():
            try:
                inbox.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False


class Admission:
    """The service's bounds on calls per client and upload bytes in flight (see the module's text)."""

    def __init__(self, max_calls_per_client: int, max_inflight_bytes: int, read_timeout_s: float) -> None:
        self.max_calls_per_client = max_calls_per_client
        self.max_inflight_bytes = max_inflight_bytes
        self.read_timeout_s = read_timeout_s
        self.calls: Counter[str] = Counter()  # calls in flight per caller
        self.inflight_bytes = 0
        self.refused: Counter[str] = Counter()  # why calls were turned away: "calls", "bytes", "stalled"
        self._room = threading.Condition()

    @contextlib.contextmanager
    def call(self, caller: str) -> Iterator[Ticket]:
        """Admit one call of ``caller`` (:class:`Busy` if it has the most calls allowed in flight);
        its bytes and its place are given back when the call ends, however it ends."""
        with self._room:
            if self.calls[caller] >= self.max_calls_per_client:
                self.refused["calls"] += 1
                raise Busy(f"client {caller} already has {self.calls[caller]} calls in flight, the most "
                           "allowed (Info.max_calls_per_client); retry when one has finished")
            self.calls[caller] += 1
        ticket = Ticket(caller, self)
        try:
            yield ticket
        except Stalled:
            self.refused["stalled"] += 1
            raise
        finally:
            ticket._done.set()
            with self._room:
                self.calls[caller] -= 1
                if not self.calls[caller]:
                    del self.calls[caller]
                self.inflight_bytes -= ticket.held_bytes
                self._room.notify_all()

    def reserve(self, ticket: Ticket, nbytes: int) -> None:
        """Count ``nbytes`` more against the bytes in flight, waiting up to the read timeout for room."""
        with self._room:
            if not self._room.wait_for(lambda: self.inflight_bytes + nbytes <= self.max_inflight_bytes,
                                       timeout=self.read_timeout_s):
                self.refused["bytes"] += 1
                raise Busy(f"the service holds {self.inflight_bytes} bytes of uploads in flight and this chunk "
                           f"would take it over {self.max_inflight_bytes} (Info.max_inflight_bytes); retry later")
            self.inflight_bytes += nbytes
            ticket.held_bytes += nbytes
