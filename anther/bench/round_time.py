"""How long one site's round takes, from what it moves, its link and its compute.

A round of split mode is ``K`` local steps and one exchange of adapters with the server. Each
step computes (the NanoEdge forward and backward on the site, the backbone's pass on the server),
sends the embeddings up and receives the gradient down (one TrainStep call: one round trip), so

    round = K * (compute + 8 * up_bytes / up_bps + 8 * down_bytes / down_bps + rtt)
            + 8 * adapter_bytes / down_bps + 8 * adapter_bytes / up_bps + 2 * rtt

Local mode has no per-step traffic (``up_bytes = down_bytes = 0`` and no round trip a step) and
exchanges its LoRA adapters instead. ``rtt`` is the link's round-trip time: the shaped-link
benchmark's token bucket adds none (it limits bandwidth, not delay), so it checks the rest of the
model and leaves latency to this formula, one round trip per TrainStep. (A long, fat link can
cost more than one: a TrainStep's reply of several MB needs the connection's flow-control window
to reach bandwidth x rtt, which gRPC's BDP probing grows to within the first few steps.)

:func:`check_model` fits each setting's compute at the fastest link measured and predicts the
round at the other bandwidths, against what the benchmark measured there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Round:
    """What one site's round moves and computes."""

    steps: int
    compute_s: float  # one step's computation, both sides, with no transfer time
    up_bytes: float  # per step
    down_bytes: float  # per step
    adapter_bytes: float  # each way, once a round
    round_trips_per_step: int = 1  # 0 for local mode

    def seconds(self, up_mbit: float, down_mbit: float, rtt_ms: float = 0.0) -> float:
        up_bps, down_bps, rtt = up_mbit * 1e6, down_mbit * 1e6, rtt_ms / 1000
        step = self.compute_s + 8 * self.up_bytes / up_bps + 8 * self.down_bytes / down_bps
        step += self.round_trips_per_step * rtt
        return self.steps * step + 8 * self.adapter_bytes * (1 / down_bps + 1 / up_bps) + 2 * rtt


@dataclass(frozen=True)
class LinkMeasurement:
    """One setting at one bandwidth, as the shaped-link benchmark measured it (both ways at ``mbit``)."""

    mbit: float
    setting: str
    step_s: float
    up_bytes: float
    down_bytes: float
    adapter_bytes: float
    round_s: float
    steps: int

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> LinkMeasurement:
        return cls(row["mbit"], row["setting"], row["step_s"], row["bytes_up_per_step"], row["bytes_down_per_step"],
                   row["adapter_bytes"], row["round_s"], row["local_steps"])


def fitted(m: LinkMeasurement) -> Round:
    """The round ``m`` implies: its compute is the measured step less the transfer time at ``m.mbit``."""
    bps = m.mbit * 1e6
    compute = m.step_s - 8 * (m.up_bytes + m.down_bytes) / bps
    return Round(m.steps, max(compute, 0.0), m.up_bytes, m.down_bytes, m.adapter_bytes,
                 1 if m.up_bytes or m.down_bytes else 0)


def check_model(measurements: list[LinkMeasurement]) -> dict[str, Any]:
    """Fit every setting at its fastest link; predict its round at each other bandwidth (no delay, as
    the benchmark's link has none); the predictions next to the measurements, and the largest
    relative error."""
    fastest = max(m.mbit for m in measurements)
    base = {m.setting: fitted(m) for m in measurements if m.mbit == fastest}
    rows = [{"setting": m.setting, "mbit": m.mbit, "measured_s": round(m.round_s, 3),
             "predicted_s": round(base[m.setting].seconds(m.mbit, m.mbit), 3)}
            for m in measurements if m.mbit != fastest and m.setting in base]
    errors = [abs(r["predicted_s"] - r["measured_s"]) / r["measured_s"] for r in rows]
    return {"fitted_at_mbit": fastest, "rows": rows, "max_relative_error": round(max(errors, default=0.0), 4)}
