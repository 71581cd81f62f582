"""What this node is and holds: its partition, its data and the experiment it was sent. Light on
purpose: a ``query`` needs only this (see :mod:`anther.client_app`)."""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context, Message
from omegaconf import DictConfig, OmegaConf

from anther.core import protocol
from anther.core.sample import Sample
from anther.data.client_data import client_data, site_data


def experiment(msg: Message) -> DictConfig:
    """The experiment config the server sent with ``msg``."""
    return OmegaConf.create(str(msg.content[protocol.CONFIG][protocol.EXPERIMENT]))


def partition(context: Context) -> tuple[int, int]:
    """This node's (``partition-id``, ``num-partitions``) from its node config."""
    nc = context.node_config
    return int(nc.get(protocol.PARTITION_ID, 0)), int(nc.get(protocol.NUM_PARTITIONS, 1))


def local_data(cfg: DictConfig, context: Context) -> tuple[list[Sample], list[Sample]]:
    """This node's (train, test): its own ``data-path`` if set (its test split, when it has one, to
    evaluate on), else its partition of the run's data."""
    own = context.node_config.get(protocol.DATA_PATH)
    pid, n = partition(context)
    return site_data(cfg, Path(str(own))) if own else client_data(cfg, Path(cfg.data.path), pid, n)
