"""What the person at the terminal sees: the start block (run, output folder, model, the exact
resume command), progress (a bar on a terminal, plain lines in a pipe), compact epoch lines,
the end summary (per-class table, diagnosis, where things are, next commands), --help, and
did-you-mean for a mistyped stage."""

import logging
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.__main__ import _help_section
from pipeline.commands.console import (
    ConsoleFormatter,
    class_report,
    end_lines,
    resume_command,
    start_lines,
)
from pipeline.commands.runtime import HydraRuntime
from pipeline.compose import compose
from pipeline.config import CONF_DIR, STAGES
from pipeline.errors import ConfigError
from pipeline.models.backbone import BackboneConfig, create_backbone
from pipeline.tracking.config import TrackingConfig
from pipeline.tracking.parents import find_or_create_parent
from pipeline.tracking.runs import Run
from pipeline.training.loop import FitResult, epoch_header, epoch_line
from pipeline.training.progress import RunProgress, duration, progress_mode
from tests.conftest import tiny_overrides

GROUPS = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name != "hydra")
RUN_ID = "0123456789abcdef0123456789abcdef"


# --- epoch lines ------------------------------------------------------------------------------


def test_epoch_line_fits_a_terminal_and_marks_the_best_epoch():
    worst = {
        "train/loss": 12.3456,
        "train/acc": 0.9999,
        "val/loss": 10.1234,
        "val/acc": 0.5,
        "lr": 1.2345e-05,
        "epoch_seconds": 12345.6,
    }
    line = epoch_line(99, 100, worst, best=True)
    assert line == (
        "epoch 100/100  train loss 12.3456 acc 0.9999  val loss 10.1234 acc 0.5000  "
        "lr 1.2e-05  12345.6s  *"
    )
    assert len(line) < 100
    assert not epoch_line(0, 8, worst, best=False).endswith("*")
    assert epoch_header("val/loss", True) == (
        "one line per epoch; * = best so far by val/loss (its weights are kept)"
    )


def test_console_formatter_shows_the_bare_message_and_names_warnings():
    fmt = ConsoleFormatter()

    def record(level):
        return logging.LogRecord("pipeline.x", level, __file__, 1, "epoch %d/%d", (1, 2), None)

    assert fmt.format(record(logging.INFO)) == "epoch 1/2"
    assert fmt.format(record(logging.WARNING)) == "warning: epoch 1/2"


# --- progress ---------------------------------------------------------------------------------


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_plain_progress_lines_with_running_loss_acc_and_run_eta(caplog):
    """Off a terminal: one line per `every_s` (0 here: every batch), with the run's ETA from
    the measured seconds per train and val batch."""
    clock = _Clock()
    progress = RunProgress(2, 3, 2, "lines", every_s=0, clock=clock)
    caplog.set_level(logging.INFO, logger="pipeline.training.progress")
    epoch = progress.train(range(3), 0)
    loss_sum, correct = torch.zeros(()), torch.zeros((), dtype=torch.long)
    for seen, _ in enumerate(epoch, start=1):
        clock.now += 1.0  # one second per training batch
        loss_sum += 0.5
        correct += 1 if seen < 3 else 0
        epoch.show(loss_sum, correct, seen)
    lines = [r.getMessage() for r in caplog.records]
    # After batch 1: 2 + 3 train batches left at 1 s, 4 val batches at a third of that.
    assert lines[0] == "epoch 1/2  batch 1/3  loss 0.500  acc 1.000  1.0 it/s  eta 6s"
    assert lines[2].startswith("epoch 1/2  batch 3/3  loss 0.500  acc 0.667  1.0 it/s")
    for _ in progress.validate(range(2), 0):
        clock.now += 0.5
    assert progress.eta(1, 0, 0) == pytest.approx(3 * 1.0 + 2 * 0.5)


def test_plain_lines_wait_for_their_interval(caplog):
    clock = _Clock()
    progress = RunProgress(1, 10, 1, "lines", every_s=30, clock=clock)
    caplog.set_level(logging.INFO, logger="pipeline.training.progress")
    epoch = progress.train(range(10), 0)
    for seen, _ in enumerate(epoch, start=1):
        clock.now += 7.0
        epoch.show(torch.tensor(1.0 * seen), torch.tensor(seen), seen)
    batches = [re.search(r"batch (\d+)/10", r.getMessage())[1] for r in caplog.records]
    assert batches == ["5", "10"]  # at 35 s and 70 s
    assert "7.0 s/it" in caplog.records[0].getMessage()  # slower than 1 it/s: as tqdm says it


def test_progress_mode(capsys):
    assert progress_mode(None, is_main=True) == "lines"  # pytest's stderr is no terminal
    assert progress_mode(True, is_main=True) == "bar"
    assert progress_mode(False, is_main=True) == "off"
    assert progress_mode(True, is_main=False) == "off"  # rank 0 reports for all
    assert [duration(s) for s in (42, 130, 3900)] == ["42s", "2m10s", "1h05m"]


# --- start and end ----------------------------------------------------------------------------


def test_resume_command_repeats_the_real_overrides():
    runtime = HydraRuntime(
        overrides=(
            "train.epochs=2",
            "data.root=my images",
            "tracking.uri=http://user:secret@host:5000",
            "train.resume=old",
        ),
        output_dir=Path("outputs/x"),
    )
    run = Run(run_id=RUN_ID)
    assert resume_command(run, Path("ck"), None, runtime) == (
        "python -m pipeline train.epochs=2 'data.root=my images' "
        f"tracking.uri=http://host:5000 train.resume={RUN_ID}"
    )
    fold = resume_command(run, Path("ck"), 1, HydraRuntime(("data.kfold=3",), output_dir=Path()))
    assert fold == f"python -m pipeline data.kfold=3 data.fold=1 train.resume={RUN_ID}"
    # Called from Python: no command line to repeat.
    assert resume_command(Run(), Path("ck"), None).endswith(
        "<same overrides> train.resume=ck/last.pt"
    )


def _derived(source="package", path="/w/lite0.pth"):
    return {
        "params.total": 3_400_000,
        "params.trainable": 12_810,
        "weights_source": source,
        "weights_path": path,
        "input.img_size": 224,
    }


def test_start_lines_say_run_output_model_weights_and_resume(tiny_cfg, tmp_path):
    cfg = tiny_cfg("finetune=frozen")
    runtime = HydraRuntime(("finetune=frozen",), output_dir=tmp_path)
    lines = start_lines(
        Run(run_id=RUN_ID, name="lite0-frozen"), cfg, tmp_path, tmp_path / "ck", _derived(), runtime
    )
    assert lines[0] == f"run {RUN_ID}  lite0-frozen  (experiment tests)"
    assert lines[1] == f"output   {tmp_path}"
    assert lines[2] == (
        "model    test_efficientnet + linear head, 3.40M params, 12.8k trainable "
        "(finetune=frozen), input 224 px"
    )
    assert lines[3] == "weights  pretrained, packaged lite0.pth"
    assert lines[4] == f"resume   python -m pipeline finetune=frozen train.resume={RUN_ID}"


def _fit_result(tmp_path):
    history = [
        {"train/loss": 1.0, "train/acc": 0.6, "val/loss": 0.9, "val/acc": 0.62},
        {"train/loss": 0.5, "train/acc": 0.9, "val/loss": 0.6, "val/acc": 0.7},
    ]
    return FitResult(history, 1, 0.6, False, tmp_path / "checkpoints" / "best.pt", 1, 12.0)


def test_end_lines_give_metrics_classes_diagnosis_files_and_next_commands(tiny_cfg, tmp_path):
    cfg = tiny_cfg()
    names = ["ant", "bee"]
    targets = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.1, 0.9]])
    (tmp_path / "report.md").write_text("#")
    metrics = {"test/loss": 0.5, "test/acc": 0.75}
    lines = end_lines(
        Run(run_id=RUN_ID, experiment_id="1"),
        cfg,
        _fit_result(tmp_path),
        metrics,
        class_report(names, targets, probs),
        names,
        tmp_path,
    )
    text = "\n".join(lines)
    assert lines[0] == f"run {RUN_ID}: test/loss 0.5000  test/acc 0.7500  (best epoch 2, 12s)"
    assert "ant        1.000   0.500  0.667        2" in text
    assert "bee        0.667   1.000  0.800        2" in text
    assert "diagnosis: overfitting. Training accuracy 0.900 is 20.0 points above" in text
    assert f"output   {tmp_path}: report.md" in lines
    assert f"weights  {tmp_path}/checkpoints/best.pt" in lines
    assert f"mlflow   mlflow ui --backend-store-uri {cfg.tracking.uri}" in text
    # ... and the link that opens its runs table in model-training mode, key metrics shown.
    assert "then open http://127.0.0.1:5000/#/experiments/" in text
    assert "/runs?workflowType=machine_learning&viewStateShareKey=pipeline" in text
    assert (
        f"python -m pipeline stage=evaluate run_id={RUN_ID} tracking.uri={cfg.tracking.uri}" in text
    )
    assert f"python -m pipeline stage=predict run_id={RUN_ID}" in text
    assert "stage=export" in text and "format=onnx" in text
    table_and_diagnosis = lines[1 : lines.index(f"output   {tmp_path}: report.md")]
    assert table_and_diagnosis[-1] == "" and table_and_diagnosis[-2].startswith("  ")  # wrapped
    assert all(len(line) < 100 for line in table_and_diagnosis)


def test_end_lines_of_an_untracked_run_point_at_its_checkpoint(tiny_cfg, tmp_path):
    cfg = tiny_cfg("tracking.enabled=false")
    lines = end_lines(Run(), cfg, _fit_result(tmp_path), {"test/loss": 0.5}, None, [], tmp_path)
    text = "\n".join(lines)
    assert "mlflow ui" not in text
    assert f"stage=evaluate checkpoint={tmp_path}/checkpoints/best.pt" in text


def test_many_classes_show_only_the_worst_by_f1(tiny_cfg, tmp_path):
    names = [f"c{i:02d}" for i in range(30)]
    targets = np.arange(30).repeat(2)
    probs = np.eye(30)[targets]
    probs[0] = np.eye(30)[5]  # one c00 image taken for c05
    lines = end_lines(
        Run(run_id=RUN_ID),
        tiny_cfg(),
        _fit_result(tmp_path),
        {},
        class_report(names, targets, probs),
        names,
        tmp_path,
    )
    table = lines[lines.index("") + 1 : lines.index("", 2)]
    assert table[0].endswith("(10 lowest F1 of 30)")
    assert [row.split()[0] for row in table[1:3]] == ["c00", "c05"]
    assert len(table) == 11


# --- small items from a new-user trial --------------------------------------------------------


def test_help_sections_list_every_stage_and_group():
    stages = _help_section("stages")
    assert [line.split()[0] for line in stages.splitlines()] == list(STAGES)
    assert "evaluate   score a trained run again" in stages
    groups = _help_section("groups")
    assert [line.split()[0] for line in groups.splitlines()] == GROUPS
    assert "  optim           adamw*, adagrad, adam, rmsprop, sgd" in groups
    assert "base_" not in groups


@pytest.mark.parametrize(
    ("override", "hint"),
    [("stage=evalute", "did you mean evaluate?"), ("format=onnxx", "did you mean onnx?")],
)
def test_did_you_mean_for_stage_and_format(override, hint):
    with pytest.raises(ConfigError, match=re.escape(hint)):
        compose([override])


def test_a_trained_models_backbone_is_built_for_its_weights_not_random_init(caplog):
    caplog.set_level(logging.DEBUG, logger="pipeline.models")
    cfg = BackboneConfig(name="test_efficientnet", pretrained=False, img_size=32)
    _, _, info = create_backbone(cfg, trained="run abc")
    assert info.source == "checkpoint"
    assert "test_efficientnet: built for the trained weights of run abc" in caplog.text
    assert "random init" not in caplog.text


def test_a_later_job_of_the_same_sweep_joins_its_parent(mlflow_uri, tmp_path, caplog):
    tracking = TrackingConfig(uri=mlflow_uri, experiment="console-joins")
    tags = {"study": "joins", "stage": "search"}
    caplog.set_level(logging.INFO, logger="pipeline.tracking")
    first = find_or_create_parent(tracking, tags, "search/joins", {}, sweep="/out/multirun/a")
    again = find_or_create_parent(tracking, tags, "search/joins", {}, sweep="/out/multirun/a")
    later = find_or_create_parent(tracking, tags, "search/joins", {}, sweep="/out/multirun/b")
    assert first.run_id == again.run_id == later.run_id
    assert f"joining search/joins: parent run {first.run_id} (this sweep's)" in caplog.text
    assert f"resuming search/joins: parent run {first.run_id}" in caplog.text


# --- the real command line --------------------------------------------------------------------


def _cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow  # a CLI subprocess
def test_help_lists_stages_groups_and_examples():
    out = _cli("--help")
    assert out.returncode == 0, out.stderr
    for stage in STAGES:
        assert re.search(rf"^  {stage} +\S", out.stdout, re.M), stage
    for group in GROUPS:
        assert re.search(rf"^  {group} +\S", out.stdout, re.M), group
    assert "base_" not in out.stdout
    assert "python -m pipeline stage=evaluate run_id=ID" in out.stdout
    assert "--hydra-help" in out.stdout


@pytest.mark.slow  # a CLI subprocess training a tiny model
def test_a_piped_training_run_prints_compact_lines_progress_and_next_steps(tmp_path, image_folder):
    mlflow_uri = f"sqlite:///{tmp_path / 'new-store' / 'mlflow.db'}"  # a first run: a new store
    overrides = [
        *tiny_overrides(mlflow_uri, tmp_path),
        "data=folder",
        f"data.root={image_folder}",
        "data.batch_size=4",
        "train.epochs=2",
        "train.progress_every=0",
        f"hydra.run.dir={tmp_path / 'out'}",
    ]
    out = _cli(*overrides)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    epochs = [line for line in lines if line.startswith("epoch ") and "batch" not in line]
    assert len(epochs) == 2 and all(len(line) < 100 for line in epochs)
    assert not any(line.startswith("[") for line in lines)  # no Hydra prefix on the console
    assert "database tables" not in out.stdout + out.stderr  # MLflow's store-creation chatter
    assert "one line per epoch; * = best so far by val/loss (its weights are kept)" in lines
    # Piped: plain progress lines, one per batch here (progress_every=0), no bar.
    assert any(
        re.fullmatch(r"epoch 2/2  batch 3/3  loss \S+  acc \S+  \S+ (it/s|s/it)  eta \S+", ln)
        for ln in lines
    )
    assert "\r" not in out.stderr
    run_id = re.search(r"^run ([0-9a-f]{32})  ", out.stdout, re.M)[1]
    resume = next(line for line in lines if line.startswith("resume   "))
    # The command line as typed (Hydra's own hydra.* overrides aside), then the resume.
    assert resume.endswith(f"train.epochs=2 train.progress_every=0 train.resume={run_id}")
    assert f"--backend-store-uri {mlflow_uri}" in out.stdout
    assert (
        f"python -m pipeline stage=evaluate run_id={run_id} tracking.uri={mlflow_uri}" in out.stdout
    )
    # The file log keeps Hydra's full format.
    log = (tmp_path / "out" / "__main__.log").read_text()
    assert re.search(
        r"^\[\S+ \S+\]\[pipeline.training.loop\]\[INFO\] - epoch 1/2  train loss", log, re.M
    )
