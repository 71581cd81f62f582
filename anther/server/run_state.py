"""The mutable state of a run's server side, as JSON plus named tensors, and back.

A resumed run must continue exactly where the killed one stopped, so everything that
changes from round to round is saved with each checkpoint:

- the strategy's state. Flower's strategies keep it in plain attributes (FedAdam,
  FedYogi and FedAdagrad: ``current_arrays``, ``m_t``, ``v_t``; FedAvgM: ``current_arrays``
  and ``momentum_vector``; the DP wrappers: ``clipping_norm`` and an accountant with a
  ``state_dict``), and so do anther's (``current_arrays``, ``node_ranks``...). Rather than a
  list per class that would miss the next strategy, :func:`strategy_state` saves *every*
  attribute whose value it can represent: numbers, strings, NumPy arrays, tensors, Flower
  ``ArrayRecord``\\s, lists, tuples and dicts of those, RNGs, objects with
  ``state_dict()``/``load_state_dict()``, and wrapped strategies, recursively. A strategy
  that prefers to say what its state is implements ``state_dict``/``load_state_dict`` itself.
  Attributes it cannot represent (callables, loggers...) are configuration rebuilt from the
  experiment config; their names are listed in the checkpoint (``skipped``) so nothing is
  dropped silently.
- the RNGs: the round loop's client sampler, and Python's, NumPy's and torch's global ones.

Tensors go to the checkpoint's ``state.safetensors`` under a path-like name; the JSON
refers to them as ``{"__tensor__": name}`` so the tree stays readable.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from flwr.serverapp.strategy import Strategy

Tensors = dict[str, torch.Tensor]


class Unrepresentable(TypeError):
    """A value :func:`encode` cannot save."""


def _has_state_dict(value: Any) -> bool:
    return callable(getattr(value, "state_dict", None)) and callable(getattr(value, "load_state_dict", None))


def _tensor_ref(array: np.ndarray | torch.Tensor, path: str, tensors: Tensors, kind: str) -> dict[str, Any]:
    if isinstance(array, np.ndarray):
        if array.dtype == object:
            raise Unrepresentable(f"{path}: object array")
        array = torch.from_numpy(np.ascontiguousarray(array).copy())
    tensors[path] = array.detach().cpu()
    return {kind: path}


def encode(value: Any, path: str, tensors: Tensors) -> Any:
    """``value`` as JSON, its tensors added to ``tensors`` under names starting with ``path``."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, np.ndarray):
        return _tensor_ref(value, path, tensors, "__ndarray__")
    if isinstance(value, torch.Tensor):
        return _tensor_ref(value, path, tensors, "__tensor__")
    if isinstance(value, np.generic):
        return {"__npscalar__": value.dtype.str, "value": value.item()}
    if isinstance(value, ArrayRecord):
        return {"__arrayrecord__": [[k, encode(a.numpy(), f"{path}.{k}", tensors)] for k, a in value.items()]}
    if isinstance(value, Array):
        return {"__array__": encode(value.numpy(), path, tensors)}
    if isinstance(value, list | tuple):
        kind = "__list__" if isinstance(value, list) else "__tuple__"
        return {kind: [encode(v, f"{path}.{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, dict):
        return {"__dict__": [[encode(k, f"{path}.key{i}", tensors), encode(v, f"{path}.{i}", tensors)]
                             for i, (k, v) in enumerate(value.items())]}
    if isinstance(value, random.Random):
        return {"__random__": encode(value.getstate(), path, tensors)}
    if isinstance(value, np.random.Generator):
        return {"__npgenerator__": encode(value.bit_generator.state, path, tensors)}
    if isinstance(value, Strategy):
        return {"__strategy__": strategy_state(value, path, tensors)}
    if _has_state_dict(value) and not callable(value):
        return {"__state__": encode(value.state_dict(), path, tensors)}
    raise Unrepresentable(f"{path}: {type(value).__name__}")


_DECODERS: dict[str, Callable[[Any, Tensors], Any]] = {
    "__ndarray__": lambda v, t: t[v].numpy(),
    "__tensor__": lambda v, t: t[v].clone(),
    "__arrayrecord__": lambda v, t: ArrayRecord({k: Array(decode(a, t)) for k, a in v}),
    "__array__": lambda v, t: Array(decode(v, t)),
    "__list__": lambda v, t: [decode(x, t) for x in v],
    "__tuple__": lambda v, t: tuple(decode(x, t) for x in v),
    "__dict__": lambda v, t: {decode(k, t): decode(x, t) for k, x in v},
}


def decode(value: Any, tensors: Tensors) -> Any:
    """The value :func:`encode` saved (in-place kinds -- strategies, RNGs, objects with a
    state_dict -- are restored by :func:`restore_into`, not rebuilt here)."""
    if not isinstance(value, dict):
        return value
    if "__npscalar__" in value:
        return np.dtype(value["__npscalar__"]).type(value["value"])
    (kind, inner), = value.items()
    if kind not in _DECODERS:
        raise ValueError(f"{kind} is restored in place, not decoded")
    return _DECODERS[kind](inner, tensors)


def restore_into(current: Any, saved: Any, tensors: Tensors) -> Any:
    """The value to hold after restoring ``saved`` over ``current``: in-place kinds update
    ``current`` and return it, everything else is decoded."""
    if isinstance(saved, dict) and len(saved) == 1:
        (kind, inner), = saved.items()
        if kind == "__strategy__":
            load_strategy_state(current, inner, tensors)
            return current
        if kind == "__random__":
            current.setstate(_tuples(decode(inner, tensors)))
            return current
        if kind == "__npgenerator__":
            current.bit_generator.state = decode(inner, tensors)
            return current
        if kind == "__state__":
            current.load_state_dict(decode(inner, tensors))
            return current
    return decode(saved, tensors)


def _tuples(value: Any) -> Any:
    """``random.Random.setstate`` wants tuples all the way down."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list | tuple) else value


def strategy_state(strategy: Strategy, path: str, tensors: Tensors) -> dict[str, Any]:
    """Everything of ``strategy`` that can be saved: its own ``state_dict()`` if it has one,
    else every representable attribute; ``skipped`` names the attributes left out."""
    if _has_state_dict(strategy):
        return {"state_dict": encode(strategy.state_dict(), f"{path}.state_dict", tensors), "skipped": []}
    attributes, skipped = {}, []
    for name, value in vars(strategy).items():
        if callable(value):
            skipped.append(name)
            continue
        trial: Tensors = {}
        try:
            attributes[name] = encode(value, f"{path}.{name}", trial)
        except Unrepresentable:
            skipped.append(name)
            continue
        tensors.update(trial)
    return {"type": f"{type(strategy).__module__}.{type(strategy).__qualname__}",
            "attributes": attributes, "skipped": skipped}


def load_strategy_state(strategy: Strategy, saved: dict[str, Any], tensors: Tensors) -> None:
    """Put the state :func:`strategy_state` saved back into a freshly built ``strategy``."""
    if "state_dict" in saved:
        strategy.load_state_dict(decode(saved["state_dict"], tensors))
        return
    kind = f"{type(strategy).__module__}.{type(strategy).__qualname__}"
    if saved.get("type") != kind:
        raise ValueError(f"the checkpoint holds the state of a {saved.get('type')} strategy, "
                         f"but this run built a {kind}")
    for name, value in saved["attributes"].items():
        setattr(strategy, name, restore_into(getattr(strategy, name, None), value, tensors))


def rng_state(sampler: random.Random, tensors: Tensors) -> dict[str, Any]:
    """The client sampler's and the global Python, NumPy and torch RNG states."""
    return {"sampler": encode(sampler.getstate(), "rng.sampler", tensors),
            "python": encode(random.getstate(), "rng.python", tensors),
            "numpy": encode(np.random.get_state(), "rng.numpy", tensors),
            "torch": encode(torch.get_rng_state(), "rng.torch", tensors)}


def restore_rng(saved: dict[str, Any], sampler: random.Random, tensors: Tensors) -> None:
    sampler.setstate(_tuples(decode(saved["sampler"], tensors)))
    random.setstate(_tuples(decode(saved["python"], tensors)))
    np.random.set_state(decode(saved["numpy"], tensors))
    torch.set_rng_state(decode(saved["torch"], tensors))
