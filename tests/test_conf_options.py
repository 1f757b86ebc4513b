"""Every option file under conf/ composes into a valid RunConfig (lightning-hydra-template's
`experiment=glob(*)` idea): a typo or a stale key in any YAML fails here, not in a user's run."""

from __future__ import annotations

import pytest
import yaml
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from pipeline.compose import compose, register_configs, schema_groups
from pipeline.config import CONF_DIR, RunConfig

# Options that only compose with the rest of a command line they are meant for.
NEEDS = {
    "data/folder": ["data.root=some/folder"],
    "data/csv": ["data.root=some/file.csv"],
    "ablation": ["stage=ablate"],
}
# hydra/launcher options need their plugin; hparams_search its sweeper: both have own tests.
SKIP_GROUPS = {"hydra", "hparams_search"}


def _options() -> list[tuple[str, str]]:
    found = []
    for path in sorted(CONF_DIR.glob("*/*.yaml")):
        group = path.parent.name
        if group not in SKIP_GROUPS:
            found.append((group, path.stem))
    return found


def test_every_group_folder_has_options():
    groups = {group for group, _ in _options()}
    assert {"data", "augment", "backbone", "head", "finetune", "optim", "sched"} <= groups


@pytest.mark.parametrize(("group", "option"), _options(), ids=lambda v: str(v))
def test_option_composes(group: str, option: str):
    extra = NEEDS.get(f"{group}/{option}", NEEDS.get(group, []))
    cfg = compose([f"{group}={option}", *extra])
    assert isinstance(cfg, RunConfig)
    if group == "ablation":
        assert cfg.ablation.name == option
        return
    # The option file selects what its name says (backbone files may name a timm tag).
    picked = {
        "optim": cfg.optim.name,
        "sched": cfg.sched.name,
        "finetune": cfg.finetune.strategy,
        "augment": cfg.augment.preset,
        "head": cfg.head.kind,
        "data": cfg.data.name,
    }
    if group in picked:
        assert picked[group] == option
    elif group == "backbone":
        assert cfg.backbone.name.split(".")[0].endswith(option)


# --- one source of defaults: the dataclasses, registered as base_<group> -------------------

# The key that names what an option selects: kept in its file even where it equals the
# schema default (optim/adamw.yaml says `name: adamw`), so no option file is anonymous.
SELECTORS = {
    "data": "name",
    "augment": "preset",
    "backbone": "name",
    "head": "kind",
    "finetune": "strategy",
    "optim": "name",
    "sched": "name",
}


def _schema_options() -> list[tuple[str, str]]:
    return [(group, option) for group, option in _options() if group in schema_groups()]


def _read_option(group: str, option: str) -> tuple[list, dict[str, dict], bool]:
    """An option file's defaults list, its values per group, and whether it is _global_
    (data/digits.yaml also sets augment.* and backbone.*)."""
    text = (CONF_DIR / group / f"{option}.yaml").read_text()
    values = yaml.safe_load(text) or {}
    defaults = values.pop("defaults", [])
    is_global = "# @package _global_" in text
    return defaults, (values if is_global else {group: values}), is_global


def _schema(group: str) -> dict:
    register_configs()
    node = ConfigStore.instance().load(f"{group}/base_{group}.yaml").node
    return OmegaConf.to_container(node)  # a MISSING value reads as "???", as in a YAML


def _leaves(values: dict, path: str = ""):
    for key, value in values.items():
        if isinstance(value, dict) and value:
            yield from _leaves(value, f"{path}{key}.")
        else:
            yield f"{path}{key}", value


def test_every_group_with_options_has_a_schema():
    presets = {"experiment", "ablation", "hparams_search", "hydra"}  # no dataclass of their own
    folders = {path.name for path in CONF_DIR.iterdir() if path.is_dir()}
    assert folders - presets == set(schema_groups())


@pytest.mark.parametrize(("group", "option"), _schema_options(), ids=lambda v: str(v))
def test_option_file_starts_from_its_schema(group: str, option: str):
    defaults, _, is_global = _read_option(group, option)
    base = f"base_{group}@{group}" if is_global else f"base_{group}"
    assert defaults[:2] == [base, "_self_"]


@pytest.mark.parametrize(("group", "option"), _schema_options(), ids=lambda v: str(v))
def test_option_file_lists_only_what_differs_from_the_schema(group: str, option: str):
    _, values, _ = _read_option(group, option)
    repeated = []
    for values_group, group_values in values.items():
        schema = _schema(values_group)
        for key, value in _leaves(group_values):
            default = schema
            for part in key.split("."):
                default = default[part]
            selector = values_group == group and key == SELECTORS.get(group)
            if value == default and not selector:
                repeated.append(f"{values_group}.{key}: {value!r}")
    assert not repeated, f"{group}/{option}.yaml repeats schema defaults: {repeated}"


def _swept_choices() -> list[tuple[str, str, str]]:
    """(preset, key, value) for every value a shipped hparams_search preset's choice() sweeps."""
    import yaml

    found = []
    for path in sorted((CONF_DIR / "hparams_search").glob("*.yaml")):
        params = yaml.safe_load(path.read_text()).get("hydra", {}).get("sweeper", {})["params"]
        for key, spec in params.items():
            spec = str(spec)
            if spec.startswith("choice(") and spec.endswith(")"):
                found += [(path.stem, key, v.strip()) for v in spec[7:-1].split(",")]
    return found


@pytest.mark.parametrize(("preset", "key", "value"), _swept_choices(), ids=lambda v: str(v))
def test_every_value_a_shipped_search_sweeps_is_a_valid_config(preset, key, value):
    # A refused value would fail its trial, and a failed trial ends the sweep.
    assert isinstance(compose([f"hparams_search={preset}", f"{key}={value}"]), RunConfig)
