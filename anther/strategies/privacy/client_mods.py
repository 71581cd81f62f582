"""The ClientApp's privacy mod: Flower's client-side DP clipping and SecAgg+ mods, as the run asks.

One mod sits on the train handler (``@app.train(mods=[privacy_mod])``) because which of
Flower's mods applies is a property of the run, known only from the message:

- a message carrying a ``secaggplus_configs`` record is a SecAgg+ stage: it goes to Flower's
  ``secaggplus_mod``. In the collect stage that mod calls back into training; the adapter
  below strips the SecAgg+ record (so the inner message looks like an ordinary train
  message), trains (through the clipping mod when one applies), and hands the mod the
  vector of :func:`anther.strategies.privacy.secure_vector.encode` in the legacy ``FitRes`` layout
  the mod reads, with weight 1 (anther weights the vector itself). The mod masks it and
  drops every ArrayRecord, so the reply carries the masked vector and the metrics only;
- otherwise, with ``privacy.client_level.mode`` ``client_fixed`` / ``client_adaptive``,
  Flower's ``fixedclipping_mod`` / ``adaptiveclipping_mod`` clip the reply's update to the
  norm the server's DP wrapper put in the round config (adaptive also reports ``norm_bit``).
"""

from __future__ import annotations

from flwr.app import Context, Message, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common import recorddict_compat as compat
from omegaconf import OmegaConf

from anther.core import protocol
from anther.strategies.array_utils import numpy_arrays
from anther.strategies.privacy.secure_vector import VectorLayout, encode

CLIPPING_MODS: dict[str, Mod] = {"client_fixed": fixedclipping_mod, "client_adaptive": adaptiveclipping_mod}
_FITRES = "fitres."  # the legacy records secaggplus_mod reads, removed from the reply afterwards


def _privacy(msg: Message):
    return OmegaConf.create(str(msg.content[protocol.CONFIG][protocol.EXPERIMENT])).privacy


def _clipped(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Train, through Flower's clipping mod when the run uses client-side clipping."""
    mod = CLIPPING_MODS.get(str(_privacy(msg).client_level.mode))
    return call_next(msg, context) if mod is None else mod(msg, context, call_next)


def _as_fitres(vector: list, content: RecordDict) -> RecordDict:
    """The vector in the FitRes layout ``secaggplus_mod`` reads, plus the reply's metrics."""
    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(vector), num_examples=1, metrics={})
    out = compat.fitres_to_recorddict(fitres, keep_input=False)
    for name, record in content.metric_records.items():
        out[name] = record
    return out


def _train_and_encode(call_next: ClientAppCallable):
    """The ``call_next`` that ``secaggplus_mod`` calls in its collect stage."""

    def run(msg: Message, context: Context) -> Message:
        record = msg.content.config_records.pop(RECORD_KEY_CONFIGS)
        layout = VectorLayout.from_config(record)
        received = numpy_arrays(msg.content[protocol.ARRAYS])
        reply = _clipped(msg, context, call_next)
        if reply.has_error():
            raise RuntimeError(f"training failed under secure aggregation: {reply.error.reason}")
        content = reply.content
        content.config_records.pop(protocol.TIMING, None)  # only the masked vector and metrics leave
        if len(content.array_records) != 1 or len(content.metric_records) != 1 or content.config_records:
            raise ValueError(f"secure aggregation sends only the masked adapters and metrics, but this "
                             f"strategy's reply also has {sorted(content.keys())}")
        (trained,) = content.array_records.values()
        (metrics,) = content.metric_records.values()
        clip = float(_privacy(msg).secagg.clipping_range)
        vector = encode(layout, received, numpy_arrays(trained), dict(metrics), clip)
        return Message(_as_fitres(vector, content), reply_to=msg)

    return run


def _secure(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    reply = secaggplus_mod(msg, context, _train_and_encode(call_next))
    for key in [k for k in reply.content if k.startswith(_FITRES)]:
        del reply.content[key]
    return reply


def privacy_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Route a train message through the SecAgg+ and DP clipping mods the run uses."""
    if RECORD_KEY_CONFIGS in msg.content.config_records:
        return _secure(msg, context, call_next)
    return _clipped(msg, context, call_next)
