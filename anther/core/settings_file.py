"""A command's settings: a YAML file over the command's dataclass schema, then ``key=value``
overrides, as ``anther bench perf`` and ``anther model pretrain`` read them. The file is a name in
one of the package's config groups (``anther/configs/<group>/<name>.yaml``) or a path."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from anther.core.config import ConfigError
from anther.core.experiment_source import PACKAGE_CONFIGS


def load_settings(schema: type, group: str, name_or_file: str, overrides: list[str] | None,
                  what: str) -> DictConfig:
    """``schema``'s defaults, the file's values, the overrides; a missing file, a misspelt key or a
    value of the wrong type is a one-line ConfigError starting with ``what``."""
    path = (Path(name_or_file) if name_or_file.endswith((".yaml", ".yml"))
            else PACKAGE_CONFIGS / group / f"{name_or_file}.yaml")
    if not path.is_file():
        raise ConfigError(f"{what} config {path} does not exist")
    try:
        return OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.load(path),
                               OmegaConf.from_dotlist(list(overrides or [])))
    except Exception as e:  # omegaconf's errors name the key; keep the message, drop the class zoo
        raise ConfigError(f"{what} config: {' '.join(str(e).split())}") from e
