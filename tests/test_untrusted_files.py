"""Files from elsewhere (a run's config.yaml, checkpoints, weights) are read as plain data:
one that would run code when loaded is refused with one line naming what it holds."""

import argparse

import pytest
import torch

from pipeline.commands.trained_run import load_trained
from pipeline.compose import compose
from pipeline.errors import ConfigError, WeightsUnavailableError
from pipeline.models.weights import read_state_dict
from pipeline.training.checkpoint import load_checkpoint


def test_config_yaml_with_a_python_tag_is_refused_in_one_line(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "best.pt").write_bytes(b"never read")
    config = run_dir / "config.yaml"
    config.write_text("stage: train\nseed: !!python/object/apply:os.system ['echo hi']\n")
    cfg = compose(["stage=evaluate", f"checkpoint={run_dir / 'checkpoints' / 'best.pt'}"])
    with pytest.raises(ConfigError) as info:
        load_trained(cfg, tmp_path / "out")
    assert str(info.value) == (
        f"{config}: refused: line 2 holds the YAML tag !!python/object/apply:os.system, "
        "which builds Python objects (a run's config.yaml is plain data)"
    )


class _Runs:
    def __reduce__(self):
        import os

        return (os.system, ("echo hi",))


@pytest.mark.parametrize(
    ("payload", "name"),
    [(_Runs(), "posix.system"), (argparse.Namespace(lr=1), "argparse.Namespace")],
)
def test_pickled_code_in_a_checkpoint_or_weights_file_is_refused_by_name(tmp_path, payload, name):
    path = tmp_path / "evil.pt"
    torch.save({"model": payload}, path)
    expected = (
        f"{path} holds pickled code objects (global {name}) and is refused: only tensors "
        "and plain containers are loaded"
    )
    with pytest.raises(ConfigError) as info:
        load_checkpoint(path)
    assert str(info.value) == expected
    with pytest.raises(WeightsUnavailableError) as info:
        read_state_dict(path)
    assert str(info.value) == expected
    assert "\x1b" not in str(info.value)


def test_a_file_torch_cannot_read_says_why_without_torchs_advice(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("not a checkpoint")
    with pytest.raises(ConfigError) as info:
        load_checkpoint(path)
    assert str(info.value) == f"{path} is not a readable checkpoint: Unsupported operand 110"
