"""stage=ablate end to end on tiny data: nested MLflow runs, summary from the children, resume."""

import dataclasses
import re

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from pipeline.commands.ablate import run_ablate
from pipeline.commands.runtime import HydraRuntime
from pipeline.compose import compose
from pipeline.config import AblationConfig
from pipeline.errors import TrainingError
from tests.conftest import tiny_overrides, write_image_folder

pytestmark = pytest.mark.slow  # five tiny trainings; ~75 s on the shared, loaded 2-core box

VARIANTS = ["baseline", "no_dropout"]


def _explode(*args, **kwargs):
    raise TrainingError("training loss is nan")


@pytest.fixture(scope="module")
def ablation_setup(mlflow_uri, tmp_path_factory):
    """A 2-variant x 2-seed ablation on 24 tiny PNGs, run twice: first with one child crashing
    mid-training, then again, which retrains only that child. Shared by the tests below."""
    import pipeline.commands.train as train_stage

    tmp = tmp_path_factory.mktemp("ablate")
    root = write_image_folder(tmp / "images")
    overrides = [
        *tiny_overrides(mlflow_uri, tmp),
        "tracking.experiment=tests-ablate",
        "data=folder",
        f"data.root={root}",
        "data.batch_size=8",
    ]
    cfg = compose(["stage=ablate", *overrides])
    runtime = HydraRuntime(overrides=tuple(overrides))  # as the command line would give them
    ablation = AblationConfig(
        name="tiny",
        baseline=["head=mlp", "head.hidden=16", "head.dropout=0.3"],
        components={"dropout": ["head.dropout=0.0"]},
        seeds=2,
        bootstrap=200,
    )
    cfg = dataclasses.replace(cfg, ablation=ablation)
    real, trained, fail = train_stage.run_train, [], {("no_dropout", 1)}

    def counting(child_cfg, out_dir, **kwargs):
        key = (child_cfg.tracking.tags["variant"], child_cfg.seed)
        trained.append(key)
        with pytest.MonkeyPatch.context() as m:
            if key in fail:  # crashes mid-training, for real: run_train marks it FAILED
                m.setattr(train_stage, "fit", _explode)
            return real(child_cfg, out_dir, **kwargs)

    client = MlflowClient(mlflow_uri)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(train_stage, "run_train", counting)
        with pytest.raises(TrainingError, match=r"1 ablation run.*no_dropout seed 1: training"):
            run_ablate(cfg, tmp / "out1", runtime)
        experiment = client.get_experiment_by_name("tests-ablate").experiment_id
        first = {
            "trained": list(trained),
            "parent": _parent(client, experiment),
            "failed": _children(
                client, experiment, _parent(client, experiment).info.run_id, "FAILED"
            ),
        }
        trained.clear()
        fail.clear()
        summaries = run_ablate(cfg, tmp / "out", runtime)
        first["retrained"] = list(trained)
    return cfg, runtime, tmp, summaries, client, experiment, first


def _children(client, experiment, parent_id, status=None):
    runs = client.search_runs(
        [experiment], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'"
    )
    return [r for r in runs if status is None or r.info.status == status]


def _parent(client, experiment):
    parents = client.search_runs([experiment], filter_string="tags.stage = 'ablate'")
    assert len(parents) == 1  # reruns reuse it
    return parents[0]


def test_parent_with_one_tagged_child_per_variant_and_seed(ablation_setup):
    *_, client, experiment, _ = ablation_setup
    parent = _parent(client, experiment)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["ablation"] == "tiny"
    assert parent.data.params["ablation.components.dropout"] == "['head.dropout=0.0']"
    children = _children(client, experiment, parent.info.run_id, "FINISHED")
    assert len(_children(client, experiment, parent.info.run_id)) == 5  # + the one that failed
    assert sorted((r.data.tags["variant"], r.data.tags["seed"]) for r in children) == [
        ("baseline", "0"),
        ("baseline", "1"),
        ("no_dropout", "0"),
        ("no_dropout", "1"),
    ]
    for run in children:
        assert run.info.status == "FINISHED"
        assert run.data.tags["ablation"] == "tiny"
        # The retried child's name is taken by the one that failed: it gets a suffix.
        name = f"tiny/{run.data.tags['variant']}/seed{run.data.tags['seed']}"
        assert re.fullmatch(rf"{name}(-[0-9a-f]{{4}})?", run.data.tags["mlflow.runName"])
        assert run.data.params["seed"] == run.data.tags["seed"]
        expected_dropout = "0.3" if run.data.tags["variant"] == "baseline" else "0.0"
        assert run.data.params["head.dropout"] == expected_dropout
        assert run.data.params["head.kind"] == "mlp"
        # Its own command line: what reproduces (and resumes) this child alone.
        overrides = run.data.tags["overrides"].split()
        assert f"seed={run.data.tags['seed']}" in overrides
        assert ("head.dropout=0.0" in overrides) == (run.data.tags["variant"] == "no_dropout")
        assert any(o.startswith("tracking.uri=sqlite:") for o in overrides)  # its store
        assert run.data.metrics["peak_memory_mb"] > 10
        assert {"test/acc", "test/f1_macro", "best_epoch", "train_seconds"} <= set(run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"ablation.md", "ablation.csv", "ablation.png", "ablation_table.json"} <= artifacts


def test_summary_equals_mean_and_std_recomputed_from_the_children(ablation_setup):
    _, _, tmp, summaries, client, experiment, _ = ablation_setup
    parent = _parent(client, experiment)
    children = _children(client, experiment, parent.info.run_id, "FINISHED")
    assert [s.variant for s in summaries] == VARIANTS
    for summary in summaries:
        runs = [r for r in children if r.data.tags["variant"] == summary.variant]
        for key in ("test/acc", "test/f1_macro", "best_epoch", "train_seconds", "peak_memory_mb"):
            values = [r.data.metrics[key] for r in runs]
            assert summary.mean[key] == pytest.approx(np.mean(values)), key
            assert summary.std[key] == pytest.approx(np.std(values, ddof=1)), key
    by = {
        (r.data.tags["variant"], r.data.tags["seed"]): r.data.metrics["test/acc"] for r in children
    }
    # The parent charts the best variant only; per-variant numbers are the children's.
    best = max(summaries, key=lambda s: s.mean["test/acc"])
    assert parent.data.metrics["best/test/acc"] == pytest.approx(best.mean["test/acc"])
    assert parent.data.tags["best_variant"] == best.variant
    assert not [key for key in parent.data.metrics if key.startswith(tuple(VARIANTS))]
    diffs = [by[("no_dropout", s)] - by[("baseline", s)] for s in ("0", "1")]
    assert summaries[1].paired.mean_diff == pytest.approx(np.mean(diffs))
    table = (tmp / "out" / "ablation.md").read_text()
    assert f"| no_dropout | 2 | {summaries[1].mean['test/acc']:.4f} ± " in table
    assert "**Warning**: as few as 2 seed(s) pair up with `baseline`" in table


def test_a_failed_child_is_recorded_and_only_it_reruns(ablation_setup):
    *_, client, experiment, first = ablation_setup
    # First pass: all four children ran; one crashed; the parent ended FAILED with the table.
    assert first["trained"] == [
        ("baseline", 0),
        ("no_dropout", 0),
        ("baseline", 1),
        ("no_dropout", 1),
    ]
    assert first["parent"].info.status == "FAILED"
    assert first["parent"].data.tags["failed_children"] == "1"
    assert "retry only those" in first["parent"].data.tags["error"]
    [failed] = first["failed"]
    assert (failed.data.tags["variant"], failed.data.tags["seed"]) == ("no_dropout", "1")
    assert "training loss is nan" in failed.data.tags["error"]
    # Second pass: only the failed child trained, under the same parent, which now FINISHED.
    assert first["retrained"] == [("no_dropout", 1)]
    parent = _parent(client, experiment)
    assert parent.info.run_id == first["parent"].info.run_id
    assert parent.info.status == "FINISHED" and parent.data.tags["failed_children"] == "0"


def test_rerun_after_success_trains_nothing(ablation_setup, monkeypatch, capsys):
    import pipeline.commands.train as train_stage

    cfg, runtime, tmp, summaries, *_ = ablation_setup
    monkeypatch.setattr(train_stage, "run_train", _explode)
    again = run_ablate(cfg, tmp / "again", runtime)
    out = capsys.readouterr().out
    assert "4 of 4 runs already finished, 0 to run" in out
    assert "warning: ablation.seeds=2: with fewer than 3 seeds per variant" in out
    assert [s.mean["test/acc"] for s in again] == [s.mean["test/acc"] for s in summaries]
    # A dry run lists what would run and prints the table so far; it trains nothing.
    dry = dataclasses.replace(cfg.ablation, seeds=3, dry_run=True)
    assert run_ablate(dataclasses.replace(cfg, ablation=dry), tmp / "dry", runtime) is None
    out = capsys.readouterr().out
    assert "4 of 6 runs already finished, 2 to run" in out
    assert "would run no_dropout seed 2: head=mlp head.hidden=16 head.dropout=0.3" in out
    assert f"| baseline | 2 | {summaries[0].mean['test/acc']:.4f} ± " in out
    # A changed component is a different child: it does not count as done.
    changed = dataclasses.replace(
        cfg.ablation, components={"dropout": ["head.dropout=0.1"]}, only_variant="no_dropout"
    )
    with pytest.raises(TrainingError, match="2 ablation run"):
        run_ablate(dataclasses.replace(cfg, ablation=changed), tmp / "changed", runtime)


def test_command_line_overrides_reach_every_child_through_the_hydra_runtime(tmp_path):
    """`__main__` reads Hydra's overrides once and hands them to the stage (HydraRuntime)."""
    import subprocess
    import sys

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "stage=ablate",
            "ablation=quickstart_components",
            "ablation.dry_run=true",
            "ablation.seeds=1",
            "tracking.enabled=false",
            "train.threads=1",
            f"hydra.run.dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    would_run = [line for line in proc.stdout.splitlines() if "would run" in line]
    assert len(would_run) == 6
    assert all(" train.threads=1 " in line for line in would_run)


def test_depth_ablation_composes_every_depth(tmp_path, capsys):
    """ablation=depth: frozen, every partial depth of Lite0's 8 stages and full, per seed."""
    cfg = compose(["stage=ablate", "ablation=depth", "ablation.dry_run=true", "ablation.seeds=1"])
    cfg = dataclasses.replace(cfg, tracking=dataclasses.replace(cfg.tracking, enabled=False))
    assert run_ablate(cfg, tmp_path) is None
    would_run = [line for line in capsys.readouterr().out.splitlines() if "would run" in line]
    assert [line.split()[2] for line in would_run] == [
        "baseline",
        *(f"with_last{k}" for k in range(1, 8)),
        "with_full",
    ]
    assert would_run[3].endswith("finetune=frozen finetune=partial finetune.train_last_n=3 seed=0")
    assert would_run[-1].endswith("finetune=frozen finetune=full seed=0")


def test_depth_study_reports_accuracy_by_depth_on_a_tiny_run(mlflow_uri, tmp_path, capsys):
    root = write_image_folder(tmp_path / "images")
    overrides = [
        *tiny_overrides(mlflow_uri, tmp_path),
        "tracking.experiment=tests-depth",
        "data=folder",
        f"data.root={root}",
        "data.batch_size=8",
    ]
    cfg = compose(["stage=ablate", "ablation=depth", *overrides])
    ablation = dataclasses.replace(
        cfg.ablation,
        name="tiny_depth",
        baseline=["finetune=frozen"],
        components={
            "last1": ["finetune=partial", "finetune.train_last_n=1"],
            "full": ["finetune=full"],
        },
        seeds=2,
        bootstrap=100,
    )
    cfg = dataclasses.replace(cfg, ablation=ablation)
    run_ablate(cfg, tmp_path / "out", HydraRuntime(overrides=tuple(overrides)))
    out = capsys.readouterr().out

    report = (tmp_path / "out" / "depth.md").read_text()
    assert report in out
    lines = {line.split(" | ")[0]: line for line in report.splitlines() if line.startswith("| ")}
    assert set(lines) >= {"| frozen", "| last 1", "| full"}
    frozen, last1, full = (
        int(lines[k].split(" | ")[1].replace(",", "")) for k in ("| frozen", "| last 1", "| full")
    )
    assert frozen < last1 < full  # trainable parameters, read back from the child runs
    assert "**Best depth: " in report and "- vs frozen: " in report and "- vs full: " in report
    assert "training images per class (small: under 1000 per class), the rule of thumb" in report
    assert (tmp_path / "out" / "depth.png").stat().st_size > 10_000
    client = MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name("tests-depth").experiment_id
    (parent,) = client.search_runs(
        [experiment], "tags.ablation = 'tiny_depth' and tags.stage = 'ablate'"
    )
    assert parent.data.tags["depth.best"] in ("frozen", "last 1", "full")
    assert {"depth.md", "depth.png"} <= {f.path for f in client.list_artifacts(parent.info.run_id)}
