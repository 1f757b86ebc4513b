"""A run logged to an MLflow tracking server (HTTP), as a team would share one.

The server is a real `mlflow server` on 127.0.0.1 with a SQLite backend and proxied
artifacts in a temp folder, shared by the module's tests; it is always stopped, even when a
test fails.
"""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from mlflow.tracking import MlflowClient

from pipeline.commands.train import run_train


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory):
    """One server for the module (starting one takes ~10 s): its tests log to experiments of
    their own, and what they check holds for a store that also has the others' runs."""
    tmp_path = tmp_path_factory.mktemp("tracking_server")
    port = _free_port()
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 (closed in teardown)
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--workers", "1"]
    command += ["--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}"]
    command += ["--artifacts-destination", str(tmp_path / "server-artifacts")]
    proc = subprocess.Popen(
        command,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: teardown stops its workers too
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start: {(tmp_path / 'server.log').read_text()}")
            time.sleep(0.5)
        yield url, tmp_path / "server-artifacts"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:  # it may wait out open keep-alive connections; its store is thrown away anyway
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.mark.slow  # starting a tracking server takes ~10 s
def test_run_metrics_and_artifacts_arrive_at_a_tracking_server(
    tracking_server, image_folder, tiny_cfg, tmp_path
):
    url, artifact_store = tracking_server
    cfg = tiny_cfg(
        "data=folder",
        f"data.root={image_folder}",
        "data.batch_size=4",
        f"tracking.uri={url}",
        "tracking.experiment=team",
    )
    result = run_train(cfg, tmp_path / "out")
    client = MlflowClient(url)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["test/acc"] == pytest.approx(result.test_metrics["test/acc"])
    assert [m.step for m in client.get_metric_history(result.run_id, "val/loss")] == [0]
    assert run.data.params["backbone.name"] == "test_efficientnet"
    # Artifacts went through the server into its artifact store, not to a local folder.
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    names = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"config.yaml", "confusion_matrix.png", "checkpoints"} <= names
    stored = {p.name for p in artifact_store.rglob("*") if p.is_file()}
    assert {"config.yaml", "best.pt", "splits.csv"} <= stored
    # The reachability probe goes without the credentials a URI may carry (MLflow uses them).
    from pipeline.tracking.store import _check_server

    _check_server(url.replace("http://", "http://user:secret@"))


@pytest.mark.timeout(60)  # four stores, each refused in seconds (MLflow alone retries minutes)
def test_unreachable_or_unusable_tracking_store_fails_in_seconds_with_one_line(tmp_path):
    from pipeline.errors import ConfigError
    from pipeline.tracking.config import TrackingConfig
    from pipeline.tracking.runs import start_run

    with socket.socket() as s:  # a port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    blocker = tmp_path / "file"
    blocker.write_text("")
    cases = {
        f"http://127.0.0.1:{port}": "no MLflow server answers",  # MLflow alone retries minutes
        f"http://user:secret@127.0.0.1:{port}": "no MLflow server answers",
        "foo://bar": "cannot open the MLflow store: ",
        f"sqlite:///{blocker}/sub/mlflow.db": "cannot open the MLflow store: ",
    }
    for uri, message in cases.items():
        with pytest.raises(ConfigError) as info, start_run(TrackingConfig(uri=uri)):
            pass
        shown = uri.replace("user:secret@", "")  # credentials never reach the message
        assert str(info.value).startswith(f"tracking.uri={shown}: {message}"), info.value
        assert "\n" not in str(info.value)


@pytest.mark.slow  # a tracking server and a CLI run
def test_a_password_in_the_tracking_uri_is_written_and_printed_nowhere(
    tracking_server, image_folder, tmp_path
):
    import torch

    url, artifact_store = tracking_server
    out = tmp_path / "out"
    command = [sys.executable, "-m", "pipeline", "data=folder", f"data.root={image_folder}"]
    command += ["data.batch_size=4", "data.num_workers=0", "backbone.name=test_efficientnet"]
    command += ["backbone.pretrained=false", "backbone.img_size=32", "train.epochs=1"]
    command += ["train.device=cpu", "train.threads=2", "tracking.experiment=secrets"]
    command += [f"tracking.uri={url.replace('http://', 'http://alice:s3cret@')}"]
    command += [f"hydra.run.dir={out}"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    printed = proc.stdout + proc.stderr
    assert "s3cret" not in printed
    assert f"View run test_efficientnet-full-folder-s42 at: {url}/" in printed  # MLflow's line
    # Nothing written holds it: config.yaml, Hydra's .hydra/*.yaml, checkpoints, reports ...
    written = [p for p in [*out.rglob("*"), *artifact_store.rglob("*")] if p.is_file()]
    assert {"config.yaml", "overrides.yaml", "hydra.yaml", "last.pt"} <= {p.name for p in written}
    assert [p for p in written if b"s3cret" in p.read_bytes()] == []
    last = torch.load(out / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    assert last["config"]["tracking"]["uri"] == url
    # ... nor any param or tag of the run.
    client = MlflowClient(url)
    experiment = client.get_experiment_by_name("secrets").experiment_id
    (run,) = client.search_runs([experiment])
    assert run.data.params["tracking.uri"] == url
    assert not [v for v in {**run.data.params, **run.data.tags}.values() if "s3cret" in v]
