"""Params as the MLflow runs table shows them: flat keys, one short line per value.

A list becomes `a,b,c` and a dict `k=v,k=v` (class counts: `ants=124,bees=121`), never a
multi-line JSON cell; each stage logs the config groups it uses, not the whole config.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def param_text(value: Any) -> str:
    """One line: lists joined with commas, mappings as `key=value` pairs."""
    if isinstance(value, Mapping):
        return ",".join(f"{k}={param_text(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ",".join(param_text(v) for v in value)
    return " ".join(str(value).splitlines())


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists and scalars are leaves."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def config_params(config: Mapping[str, Any], groups: Iterable[str]) -> dict[str, str]:
    """`config` (RunConfig.to_dict()) cut to `groups` (top-level keys), flattened to
    `group.key.sub` names with single-line values."""
    wanted = {group: config[group] for group in groups if group in config}
    return {name: param_text(value) for name, value in flatten(wanted).items()}
