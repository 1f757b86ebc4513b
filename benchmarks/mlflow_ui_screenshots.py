"""Look at a tracking store the way a user does: `mlflow ui` in headless Chromium, screenshots.

Starts `mlflow ui --backend-store-uri <uri> --host 127.0.0.1 --port <free>`, waits for it,
and saves PNGs of the experiment's runs table, a training run's overview, the compare view
of a sweep's children, and an ablation parent (its overview and its comparison chart). Prints
JSON: every screenshot's path and URL, the runs it shows, and which key texts the page held.

    python benchmarks/mlflow_ui_screenshots.py --backend-store-uri sqlite:///mlruns/mlflow.db \
        --experiment quickstart --out /tmp/ui_shots

Not a test (it needs Chromium and minutes); Chromium is Debian's (/usr/bin/chromium) driven by
Playwright. MLflow 3's routes are hash routes (found in its JS bundle):
`#/experiments/<id>/runs`, `#/experiments/<id>/runs/<run>[/artifacts/<path>]`,
`#/compare-runs?runs=[...]&experiments=[...]`, and `?viewStateShareKey=<key>` on an
experiment, which opens the runs table in a view saved as the experiment tag
`mlflow.sharedViewState.<key>` (what the UI's "Share" button writes): `--key-columns` writes
one that shows the test metrics as columns.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Shown as runs-table columns by the shared view --key-columns writes (MLflow's column keys).
KEY_METRICS = ("test/acc", "test/f1_macro", "test/loss", "best_epoch")
# Texts whose presence on a page says what it shows (reported, not asserted).
LOOK_FOR = ("test/acc", "test/f1_macro", "sweep/", "ablation/", "variant", "comparison")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def mlflow_ui(uri: str, port: int, timeout: float):
    """`mlflow ui` on 127.0.0.1:port until the block ends; waits until it answers."""
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read() if proc.stderr and proc.poll() is not None else ""
                raise SystemExit(f"error: mlflow ui did not start on {url}: {err[-500:]}")
            time.sleep(1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def column_key(kind: str, name: str) -> str:
    """MLflow UI's column key, e.g. metrics.`test/acc` (its makeCanonicalSortKey)."""
    return f"{kind}.`{name}`"


def share_key_metrics(client: Any, experiment_id: str) -> str:
    """The project's key-metrics view (`pipeline.tracking.runs.experiment_tags`: what every
    run sets on its experiment), set here too for a store made before it existed."""
    from pipeline.tracking.runs import KEY_METRICS_VIEW, experiment_tags

    for key, value in experiment_tags().items():
        client.set_experiment_tag(experiment_id, key, value)
    return KEY_METRICS_VIEW


def pick_runs(client: Any, experiment_id: str) -> dict[str, Any]:
    """The runs each view shows: a top-level training run, a sweep parent and its children,
    an ablation parent."""
    runs = client.search_runs([experiment_id], order_by=["attributes.start_time DESC"])
    by_stage: dict[str, list] = {}
    for run in runs:
        by_stage.setdefault(run.data.tags.get("stage", ""), []).append(run)
    plain = [r for r in by_stage.get("train", []) if "mlflow.parentRunId" not in r.data.tags]
    sweep = (by_stage.get("sweep") or [None])[0]
    children = [
        r.info.run_id
        for r in runs
        if sweep is not None and r.data.tags.get("mlflow.parentRunId") == sweep.info.run_id
    ]
    return {
        "train": plain[0] if plain else None,
        "sweep": sweep,
        "sweep_children": children,
        "ablation": (by_stage.get("ablate") or [None])[0],
        "parents": [r.info.run_id for s in ("sweep", "ablate") for r in by_stage.get(s, [])],
    }


def views(base: str, experiment_id: str, picked: dict, share_key: str | None) -> list[tuple]:
    """(name, URL) of every screenshot, in order."""
    exp = f"{base}/#/experiments/{experiment_id}"
    out = [("runs_table", f"{exp}/runs")]
    if share_key:
        # What a training run prints at its end (pipeline.tracking.runs.ui_path).
        query = f"workflowType=machine_learning&viewStateShareKey={share_key}"
        out.append(("runs_table_key_metrics", f"{exp}/runs?{query}"))
    if picked["train"] is not None:
        out.append(("run_overview", f"{exp}/runs/{picked['train'].info.run_id}"))
    if picked["sweep_children"]:
        runs = json.dumps(picked["sweep_children"], separators=(",", ":"))
        out.append(
            ("sweep_compare", f'{base}/#/compare-runs?runs={runs}&experiments=["{experiment_id}"]')
        )
    if picked["sweep"] is not None:
        sweep = picked["sweep"].info.run_id
        out.append(("sweep_parent_table", f"{exp}/runs/{sweep}/artifacts/comparison_table.json"))
    if picked["ablation"] is not None:
        ablation = picked["ablation"].info.run_id
        out.append(("ablation_parent", f"{exp}/runs/{ablation}"))
        out.append(("ablation_chart", f"{exp}/runs/{ablation}/artifacts/ablation.png"))
    return out


def shoot(url_views: list[tuple], out_dir: Path, wait_s: float) -> list[dict]:
    from playwright.sync_api import sync_playwright

    shots = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        for name, url in url_views:
            page.goto(url, wait_until="load", timeout=120_000)  # the UI polls: never network-idle
            page.wait_for_timeout(wait_s * 1000)  # the React views render after their fetches
            path = out_dir / f"{name}.png"
            page.screenshot(path=str(path))
            text = page.inner_text("body")
            shots.append(
                {
                    "view": name,
                    "url": url,
                    "path": str(path),
                    "title": page.title(),
                    "found": {t: t in text for t in LOOK_FOR},
                }
            )
        browser.close()
    return shots


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend-store-uri", default="sqlite:///mlruns/mlflow.db")
    parser.add_argument("--experiment", default="quickstart")
    parser.add_argument("--out", type=Path, default=Path("ui_screenshots"))
    parser.add_argument("--key-columns", action="store_true", help="save the key-metrics view")
    parser.add_argument("--wait", type=float, default=8.0, help="seconds after load per page")
    parser.add_argument("--start-timeout", type=float, default=180.0)
    args = parser.parse_args(argv)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(args.backend_store_uri)
    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        raise SystemExit(f"error: no experiment {args.experiment!r} in {args.backend_store_uri}")
    picked = pick_runs(client, experiment.experiment_id)
    share = share_key_metrics(client, experiment.experiment_id) if args.key_columns else None
    args.out.mkdir(parents=True, exist_ok=True)
    with mlflow_ui(args.backend_store_uri, free_port(), args.start_timeout) as base:
        shots = shoot(views(base, experiment.experiment_id, picked, share), args.out, args.wait)
    report = {
        "store": args.backend_store_uri,
        "experiment": {"name": args.experiment, "id": experiment.experiment_id},
        "runs": {
            key: (value.info.run_name if hasattr(value, "info") else value)
            for key, value in picked.items()
        },
        "screenshots": shots,
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
