"""The SLURM launcher config composes with the submitit plugin (no cluster needed)."""

import pytest
from hydra import compose, initialize_config_dir

from pipeline.compose import register_configs
from pipeline.config import CONF_DIR


def test_slurm_launcher_composes_with_overrides():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    register_configs()  # the base_<group> schemas the conf/ options start from
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "optim.lr=3e-4"],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_ == (
        "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    )
    assert launcher.partition == "gpu"
    assert launcher.gpus_per_node == 1 and launcher.tasks_per_node == 1
    assert launcher.timeout_min == 240 and launcher.max_num_timeout == 0
    assert cfg.optim.lr == 3e-4  # the job config is untouched by the launcher choice
