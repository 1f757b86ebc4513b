"""A `-m` sweep of stage=train as one parent run with its jobs as children, compared at the
end (commands/sweep.py, __main__'s Hydra callback) and on demand (stage=compare)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from pipeline.__main__ import _swept_keys
from pipeline.commands import run_stage
from pipeline.commands.compare import run_compare
from pipeline.commands.runtime import HydraRuntime
from pipeline.commands.sweep import parent_name, summarize_sweep, variant_label
from pipeline.errors import ConfigError
from pipeline.tracking.runs import sweep_id
from tests.conftest import tiny_overrides, write_image_folder


def test_sweep_id_is_the_sweep_folders_date_and_time():
    assert sweep_id(Path("outputs/multirun/2026-11-30/07-02-33")) == "2026-11-30/07-02-33"


def test_a_child_is_labelled_by_its_swept_values_and_the_parent_by_the_keys():
    overrides = ["train.epochs=1", "optim.lr=0.01", "seed=1", "sched=step"]
    assert variant_label(overrides, {"optim.lr", "sched", "seed"}) == "optim.lr=0.01 sched=step"
    assert variant_label(overrides, {"seed"}) == "default"  # seeds repeat one variant
    assert parent_name("2026-11-30/07-02-33", {"sched", "optim.lr"}) == (
        "sweep/optim.lr,sched 07-02-33"
    )


def test_the_swept_keys_are_read_from_the_command_line():
    line = ["train.epochs=1", "optim.lr=1e-3,1e-2", "seed=range(3)", "+head.x=choice(1,2)"]
    assert _swept_keys(line) == {"optim.lr", "seed", "head.x"}


def _sweep_job(cfg_overrides, sweep_dir, num, lr):
    from pipeline.compose import compose

    overrides = (*cfg_overrides, f"optim.lr={lr}")
    runtime = HydraRuntime(
        overrides=overrides,
        job_num=num,
        swept=frozenset({"optim.lr"}),
        output_dir=sweep_dir / str(num),
        multirun=True,
        sweep_dir=sweep_dir,
    )
    cfg = compose(list(overrides))
    return cfg, run_stage(cfg, sweep_dir / str(num), runtime)


@pytest.fixture(scope="module")
def swept(mlflow_uri, tmp_path_factory):
    """Two jobs of one sweep, run as a multirun would run them, then the sweep's end."""
    tmp = tmp_path_factory.mktemp("sweep")
    overrides = [
        *tiny_overrides(mlflow_uri, tmp),
        "tracking.experiment=tests-sweep",
        "data=folder",
        f"data.root={write_image_folder(tmp / 'images')}",
        "data.batch_size=8",
    ]
    sweep_dir = tmp / "multirun" / "2026-11-30" / "07-02-33"
    jobs = [_sweep_job(overrides, sweep_dir, i, lr) for i, lr in enumerate((0.001, 0.01))]
    cfg, results = jobs[0][0], [result for _, result in jobs]
    summaries = summarize_sweep(cfg, sweep_dir)  # what the callback does in the launcher
    client = MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name("tests-sweep").experiment_id
    return cfg, sweep_dir, results, summaries, client, experiment


def _parents(client, experiment):
    return client.search_runs([experiment], filter_string="tags.stage = 'sweep'")


def test_two_jobs_of_a_sweep_are_children_of_one_parent(swept):
    _, _, results, _, client, experiment = swept
    [parent] = _parents(client, experiment)
    assert parent.info.run_name == "sweep/optim.lr 07-02-33"
    assert parent.data.tags["sweep"] == "2026-11-30/07-02-33"
    assert parent.data.params["sweep.keys"] == "optim.lr"
    children = {r.info.run_id: r for r in client.search_runs([experiment], "tags.stage='train'")}
    assert set(children) == {r.run_id for r in results}
    for child, lr in zip((children[r.run_id] for r in results), ("0.001", "0.01"), strict=True):
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.tags["sweep"] == "2026-11-30/07-02-33"
        assert child.data.tags["variant"] == f"optim.lr={lr}"
        assert child.data.tags["seed"] == "42"
        assert child.info.run_name.endswith(f"-s42/optim.lr={lr}")
        assert child.data.params["optim.lr"] == lr
        # The job's own command line (exact resume command, overrides tag), not "<same ...>".
        assert child.data.tags["overrides"].endswith(f"optim.lr={lr}")


def test_the_sweeps_end_logs_the_comparison_to_the_parent(swept, capsys):
    _, sweep_dir, results, summaries, client, experiment = swept
    [parent] = _parents(client, experiment)
    assert parent.info.status == "FINISHED"
    assert [s.variant for s in summaries] == ["optim.lr=0.001", "optim.lr=0.01"]
    accs = [r.test_metrics["test/acc"] for r in results]
    assert [s.mean["test/acc"] for s in summaries] == pytest.approx(accs)
    # The parent charts the best variant, not one key per variant.
    assert parent.data.metrics == pytest.approx({"best/test/acc": max(accs), "variants": 2.0})
    assert parent.data.tags["best_variant"] == summaries[int(np.argmax(accs))].variant
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"comparison.md", "comparison.csv", "comparison.png"} <= artifacts
    assert "| optim.lr=0.01 | 1 | " in (sweep_dir / "comparison.md").read_text()
    table = _logged_table(client, parent.info.run_id, "comparison_table.json")
    assert table["variant"] == ["optim.lr=0.001", "optim.lr=0.01"]
    assert table["test/acc mean"] == pytest.approx(accs, abs=1e-6)


def _logged_table(client, run_id, name):
    path = client.download_artifacts(run_id, name)
    data = json.loads(Path(path).read_text())
    return {col: [row[i] for row in data["data"]] for i, col in enumerate(data["columns"])}


def test_stage_compare_summarises_the_sweep_again_by_parent_name(swept, tmp_path, capsys):
    import dataclasses

    cfg, _, _, summaries, client, experiment = swept
    [parent] = _parents(client, experiment)
    compare = dataclasses.replace(cfg.compare, parent="sweep/optim.lr 07-02-33")
    again = run_compare(dataclasses.replace(cfg, stage="compare", compare=compare), tmp_path)
    assert [s.mean["test/acc"] for s in again] == [s.mean["test/acc"] for s in summaries]
    out = capsys.readouterr().out
    assert f"parent run {parent.info.run_id} (sweep/optim.lr 07-02-33): 2 children" in out
    assert "| optim.lr=0.001 | 1 | " in out
    # Logged again, the table is replaced, not appended to (MLflow's log_table appends).
    assert len(_logged_table(client, parent.info.run_id, "comparison_table.json")["n"]) == 2


def _fake_child(client, experiment, parent_id, variant, seed, acc):
    run = client.create_run(
        experiment,
        tags={"mlflow.parentRunId": parent_id, "variant": variant, "seed": str(seed)},
        run_name=f"abl/{variant}/seed{seed}",
    )
    client.log_metric(run.info.run_id, "test/acc", acc)
    client.set_terminated(run.info.run_id, "FINISHED")


def test_stage_compare_on_an_ablation_parent_pairs_variants_with_its_baseline(
    tiny_cfg, tmp_path, capsys
):
    """Children as an ablation logs them (tags variant, seed; test/acc): the comparison comes
    from MLflow alone, with the ablation's baseline and paired statistics."""
    cfg = tiny_cfg("stage=compare", "tracking.experiment=tests-compare", "compare.parent=abl")
    client = MlflowClient(cfg.tracking.uri)
    experiment = client.create_experiment("tests-compare")
    parent = client.create_run(
        experiment, tags={"stage": "ablate", "ablation": "abl"}, run_name="abl"
    )
    parent_id = parent.info.run_id
    client.log_param(parent_id, "ablation.metric", "test/acc")
    client.set_terminated(parent_id, "FINISHED")
    accs = {"baseline": [0.90, 0.80, 0.85], "no_aug": [0.70, 0.65, 0.60]}
    for seed in range(3):
        for variant, values in accs.items():
            _fake_child(client, experiment, parent_id, variant, seed, values[seed])
    [baseline, no_aug] = run_compare(cfg, tmp_path)
    diffs = np.subtract(accs["no_aug"], accs["baseline"])
    assert (baseline.variant, no_aug.variant) == ("baseline", "no_aug")
    assert no_aug.mean["test/acc"] == pytest.approx(0.65)
    assert no_aug.std["test/acc"] == pytest.approx(0.05)
    assert no_aug.paired.mean_diff == pytest.approx(diffs.mean())
    assert no_aug.paired.n == 3 and not math.isnan(no_aug.paired.p_value)
    run = client.get_run(parent_id)
    assert run.info.status == "FINISHED"  # compare logs, it does not reopen a parent
    assert run.data.metrics["best/test/acc"] == pytest.approx(0.85)
    assert run.data.tags["best_variant"] == "baseline"
    assert "| no_aug | 3 | 0.6500 ± 0.0500 | -0.2000 |" in capsys.readouterr().out
    artifacts = {a.path for a in client.list_artifacts(parent_id)}
    assert {"ablation.md", "ablation.csv", "ablation.png", "ablation_table.json"} <= artifacts


def test_stage_compare_names_a_parent_it_cannot_find(tiny_cfg, tmp_path):
    cfg = tiny_cfg("stage=compare", "compare.parent=no-such-run")
    with pytest.raises(ConfigError, match=r"compare.parent=.no-such-run.: no run with that id"):
        run_compare(cfg, tmp_path)


@pytest.mark.slow  # three processes, two of them training: minutes on the loaded box
def test_a_joblib_multirun_from_the_command_line_gets_one_compared_parent(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    overrides = [
        o
        for o in tiny_overrides(uri, tmp_path)
        if not o.startswith(("tracking.uri", "tracking.experiment"))
    ]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "-m",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            f"hydra.sweep.dir={tmp_path / 'multirun' / 'day' / 'time'}",
            *overrides,
            f"tracking.uri={uri}",
            "tracking.experiment=tests-cli-sweep",
            "data=folder",
            f"data.root={write_image_folder(tmp_path / 'images')}",
            "data.batch_size=8",
            "optim.lr=0.001,0.01",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sweep day/time: parent run " in proc.stdout
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("tests-cli-sweep").experiment_id
    [parent] = client.search_runs([experiment], filter_string="tags.stage = 'sweep'")
    assert parent.info.status == "FINISHED"
    assert parent.info.run_name == "sweep/optim.lr time"
    children = client.search_runs(
        [experiment], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    assert sorted(c.data.tags["variant"] for c in children) == ["optim.lr=0.001", "optim.lr=0.01"]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"comparison.md", "comparison_table.json"} <= artifacts
