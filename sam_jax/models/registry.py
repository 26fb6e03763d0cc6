"""Model families by tag: what ``config.json``, :func:`sam_jax.load_sam`, the converter and the
command line read to know which model a checkpoint or a name is.

A family is a config class with ``from_dict``/``to_dict`` and a ``family`` tag, a table of named
configurations, and a builder ``(config, rngs) -> nnx.Module``. Checkpoints written before tags
existed carry none and are SAM 1 (:data:`DEFAULT_FAMILY`). This module imports no JAX: the model
code of a family is imported only when a model is built.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from typing import Any

from sam_jax.models.sam import config as sam_config
from sam_jax.models.sam2 import config as sam2_config

DEFAULT_FAMILY = "sam"


@dataclasses.dataclass(frozen=True)
class Family:
    """One model family.

    Attributes:
      tag: the family tag stored in ``config.json``.
      title: how messages name the family (``"SAM"``, ``"SAM 2"``).
      configs: named configurations (registry keys such as ``vit_b``, test configs included).
      model_types: the names users pick (released sizes; the converter detects among these).
      from_dict: ``config.to_dict()`` -> config.
      builder: ``"module:function"`` building a random-weight model of a config with ``rngs``.
    """

    tag: str
    title: str
    configs: Mapping[str, Any]
    model_types: tuple[str, ...]
    from_dict: Callable[[dict[str, Any]], Any]
    builder: str

    def build(self, config: Any, rngs: Any) -> Any:
        module, name = self.builder.split(":")
        return getattr(importlib.import_module(module), name)(config, rngs)


FAMILIES: dict[str, Family] = {
    "sam": Family(
        tag="sam",
        title="SAM",
        configs=sam_config.CONFIGS,
        model_types=sam_config.MODEL_TYPES,
        from_dict=sam_config.SamConfig.from_dict,
        builder="sam_jax.models.sam.model:build",
    ),
    "sam2": Family(
        tag="sam2",
        title="SAM 2",
        configs=sam2_config.CONFIGS,
        model_types=sam2_config.MODEL_TYPES,
        from_dict=sam2_config.Sam2Config.from_dict,
        builder="sam_jax.models.sam2.model:build",
    ),
}


def family(tag: str | None) -> Family:
    """The family of ``tag`` (None: the default, for checkpoints written before tags)."""
    tag = DEFAULT_FAMILY if tag is None else tag
    if tag not in FAMILIES:
        raise ValueError(f"unknown model family {tag!r}; this sam_jax knows {sorted(FAMILIES)}")
    return FAMILIES[tag]


def family_of(config: Any) -> Family:
    """The family a config belongs to."""
    return family(getattr(config, "family", None))


def all_configs() -> dict[str, Any]:
    """Every named configuration of every family (names are unique across families)."""
    out: dict[str, Any] = {}
    for fam in FAMILIES.values():
        out.update(fam.configs)
    return out


def model_types() -> tuple[str, ...]:
    """The released model names of every family."""
    return tuple(t for fam in FAMILIES.values() for t in fam.model_types)


def get_config(name: str) -> Any:
    """Look up a configuration by name in every family (``vit_b``, ``vit_l``, ``vit_h``, ``tiny``, ``demo``, ...)."""
    configs = all_configs()
    if name not in configs:
        raise ValueError(f"unknown model type {name!r}; expected one of {sorted(configs)}")
    return configs[name]


def config_from_dict(d: dict[str, Any], tag: str | None = None) -> Any:
    """A config from its ``to_dict()`` form and its family tag (None: the default family)."""
    return family(tag).from_dict(d)


def build_model(config: Any, rngs: Any) -> Any:
    """A random-weight model of ``config`` (its family's builder)."""
    return family_of(config).build(config, rngs)
