"""Hydra's side of the config: the dataclasses of `pipeline.config` registered as schemas,
composition of conf/ (for the CLI, tests and notebooks), and Hydra's errors as one line."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import typing
from typing import Any

from omegaconf import MISSING

from pipeline.config import CONF_DIR, RunConfig, run_config_from_dict
from pipeline.errors import ConfigError, first_line


def run_config_from_hydra(cfg: Any) -> RunConfig:
    """Hydra's composed DictConfig -> RunConfig. A value still MISSING (`???`, e.g. data.root
    for data=folder) arrives as None: the code that needs it says what to set."""
    from omegaconf import OmegaConf

    values = OmegaConf.to_container(cfg, resolve=True)
    if not isinstance(values, dict):  # a composed config is always a mapping
        raise ConfigError(f"the composed config is not a mapping: {values!r}")
    for key in OmegaConf.missing_keys(cfg):  # dotted dict paths: no list item is MISSING
        *parents, name = key.split(".")
        functools.reduce(dict.__getitem__, parents, values)[name] = None
    return run_config_from_dict({str(k): v for k, v in values.items()})


# Values the composed config leaves to an option or the command line (`???`): data.root
# (digits sets null, cifar* `data`); code that builds a DataConfig itself gets None.
REQUIRED = {"data": {"root": MISSING}}


def schema_groups() -> dict[str, type]:
    """conf/ group -> its dataclass: RunConfig's, less the settings of the (global) presets."""
    hints = typing.get_type_hints(RunConfig)
    presets = ("ablation", "search")  # conf/ablation, conf/hparams_search
    return {
        f.name: hints[f.name]
        for f in dataclasses.fields(RunConfig)
        if dataclasses.is_dataclass(hints[f.name]) and f.name not in presets
    }


def register_configs() -> None:
    """Store each group's dataclass in Hydra's ConfigStore as `<group>/base_<group>`, which
    every conf/<group>/*.yaml starts from (`defaults: [base_<group>, _self_]`), listing only
    what differs: one source of defaults, and types checked. Idempotent; call before composing."""
    from hydra.core.config_store import ConfigStore

    for group, schema in schema_groups().items():
        node = schema(**REQUIRED.get(group, {}))
        ConfigStore.instance().store(group=group, name=f"base_{group}", node=node)


def compose(overrides: list[str] | None = None, config_name: str = "config") -> RunConfig:
    """Compose conf/ with Hydra's API (no output dir, no logging setup): for tests and notebooks."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    register_configs()
    try:
        if GlobalHydra.instance().is_initialized():  # inside @hydra.main, e.g. stage=ablate
            cfg = hydra_compose(config_name=config_name, overrides=overrides or [])
        else:
            with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
                cfg = hydra_compose(config_name=config_name, overrides=overrides or [])
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(composition_error(exc)) from exc
    except ValueError as exc:  # Hydra's defaults list, e.g. `experiment=null` (use ~experiment)
        raise ConfigError(f"{first_line(exc)}; to drop a group's default, use ~<group>") from exc
    return run_config_from_hydra(cfg)


def composition_error(exc: Exception) -> str:
    """Hydra's error as one line. Its own text runs to a dozen lines and, for a typo'd key,
    advises `+key=value`, which adds a key the run config then rejects: say did-you-mean."""
    from hydra.errors import MissingConfigException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

    if isinstance(exc, MissingConfigException) and exc.missing_cfg_file and exc.options:
        group, _, option = exc.missing_cfg_file.rpartition("/")  # optim=adamww: optim/adamww
        options = [o for o in exc.options if not o.startswith("base_")]  # schemas, not options
        return f"unknown {group} option {option!r}" + _did_you_mean(option, options, "")
    cause = exc.__cause__
    if isinstance(cause, ValidationError) and cause.full_key:  # optim.lr=abc: the schema's type
        if cause.value is None:
            return f"{cause.full_key} must not be null"
        expected = _schema_type(cause.child_node) or _schema_type(cause.parent_node, element=True)
        return f"{cause.full_key}={cause.value!r} has the wrong type (expected {expected})"
    parent = getattr(cause, "parent_node", None)
    if isinstance(cause, ConfigAttributeError | ConfigKeyError) and parent is not None:
        path, _, key = str(cause.full_key).rpartition(".")
        known = [str(k) for k in parent if k != "hydra"]
        if not path:  # the top level: config groups with no default (experiment=...) too
            known += [d.name for d in CONF_DIR.iterdir() if d.is_dir() and d.name not in known]
        return f"unknown config key {cause.full_key}" + _did_you_mean(key, known, path)
    return first_line(exc)


def _schema_type(node: Any, element: bool = False) -> str:
    """The schema's type of a node ('int' for Optional[int]) or of a list node's items."""
    metadata = getattr(node, "_metadata", None)
    hint = getattr(metadata, "element_type" if element else "ref_type", None)
    options = typing.get_args(hint) if typing.get_origin(hint) is typing.Union else (hint,)
    known = [o for o in options if o not in (None, type(None), Any)]
    return ", ".join(getattr(typing.get_origin(o) or o, "__name__", str(o)) for o in known)


def _did_you_mean(name: str, choices: list[str], path: str) -> str:
    where = f"{path}." if path else ""
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.6)
    if close:
        return f"; did you mean {', '.join(where + c for c in close)}?"
    return f" (known: {', '.join(sorted(choices))})"
