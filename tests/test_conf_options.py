"""Every option file under conf/ composes into a valid RunConfig (lightning-hydra-template's
`experiment=glob(*)` idea): a typo or a stale key in any YAML fails here, not in a user's run."""

from __future__ import annotations

import pytest

from pipeline.config import CONF_DIR, RunConfig, compose

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
