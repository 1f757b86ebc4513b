"""What a training run prints for the person at the terminal: at the start who the run is,
where its files go, the model it trains and the exact command that resumes it; at the end
what it scored, the diagnosis, where everything is and the commands to run next.

Each `*_lines` function is pure (tests read its lines); `print_run_*` prints them (rank 0).
"""

from __future__ import annotations

import shlex
import textwrap
from pathlib import Path

from pipeline.commands.log_format import ConsoleFormatter as ConsoleFormatter
from pipeline.commands.runtime import NO_HYDRA, HydraRuntime
from pipeline.commands.train_outputs import tested_weights
from pipeline.config import RunConfig
from pipeline.evaluation.diagnosis import diagnose
from pipeline.evaluation.metrics import classification_report, confusion_matrix
from pipeline.tracking.config import TrackingConfig
from pipeline.tracking.credentials import redact
from pipeline.tracking.runs import Run, ui_path
from pipeline.training.loop import FitResult

MAX_CLASS_ROWS = 10  # more classes: the worst ones by F1 (all of them are in the report files)
# Keys a resume command sets itself; the rest of the command line is repeated as typed.
_RESUME_KEYS = ("train.resume", "train.resume_force")
# The files of a run's output folder a person opens first (the rest: docs/training.md).
_SHOWN_FILES = ("report.md", "learning_curves.png", "confusion_matrix.png")
_WEIGHTS = {
    "file": "pretrained file",
    "package": "pretrained, packaged",
    "hf-cache": "pretrained, Hugging Face cache",
    "hub": "pretrained, downloaded",
    "scratch": "random init (backbone.pretrained=false)",
}


def shown_path(path: Path | str) -> str:
    """A path as the user can paste it: relative when under the current folder."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _count(n: int) -> str:
    """3.40M, 12.8k, 512."""
    if n >= 1_000_000:
        return f"{n / 1e6:.2f}M"
    return f"{n / 1e3:.1f}k" if n >= 1000 else str(n)


def command(*overrides: str) -> str:
    """`python -m pipeline ...`, each override quoted for the shell where it needs it."""
    return " ".join(["python -m pipeline", *(shlex.quote(redact(o)) for o in overrides)])


def resume_command(
    run: Run, checkpoint_dir: Path, fold: int | None, runtime: HydraRuntime = NO_HYDRA
) -> str:
    """The command that continues this run: the user's own overrides (from Hydra's record of
    the command line) plus train.resume. Called from Python there is no command line to
    repeat, so it says so."""
    target = run.run_id or shown_path(checkpoint_dir / "last.pt")
    if runtime.output_dir is None:  # not started by `python -m pipeline`
        same = f"<same overrides, data.fold={fold}>" if fold is not None else "<same overrides>"
        return f"python -m pipeline {same} train.resume={target}"
    overrides = [
        o for o in runtime.overrides if o.split("=", 1)[0].lstrip("+~") not in _RESUME_KEYS
    ]
    if fold is not None and not any(o.startswith("data.fold=") for o in overrides):
        overrides.append(f"data.fold={fold}")  # one fold of a k-fold run resumes alone
    return command(*overrides, f"train.resume={target}")


def model_summary(cfg: RunConfig, derived_params: dict) -> list[str]:
    """Model and weights in two lines, from the facts training logs as params."""
    total, trainable = derived_params["params.total"], derived_params["params.trainable"]
    source = derived_params["weights_source"]
    weights = _WEIGHTS.get(source, source)
    path = derived_params.get("weights_path")
    if path:  # the user's own file in full; a package's or cache's by name
        weights += f" {shown_path(path) if source == 'file' else Path(path).name}"
    return [
        f"model    {cfg.backbone.name} + {cfg.head.kind} head, {_count(total)} params, {_count(trainable)} trainable "
        f"(finetune={cfg.finetune.strategy}), input {derived_params['input.img_size']} px",
        f"weights  {weights}",
    ]


def start_lines(
    run: Run,
    cfg: RunConfig,
    out_dir: Path,
    checkpoint_dir: Path,
    derived_params: dict,
    runtime: HydraRuntime = NO_HYDRA,
) -> list[str]:
    name = f"  {run.name}" if run.name else ""
    where = f"  (experiment {cfg.tracking.experiment})" if run.run_id else ""
    return [
        f"run {run.run_id or '(tracking off)'}{name}{where}",
        f"output   {shown_path(out_dir)}",
        *model_summary(cfg, derived_params),
        f"resume   {resume_command(run, checkpoint_dir, cfg.data.fold, runtime)}",
    ]


def print_run_start(
    run: Run,
    cfg: RunConfig,
    out_dir: Path,
    checkpoint_dir: Path,
    derived_params: dict,
    runtime: HydraRuntime = NO_HYDRA,
) -> None:
    """start_lines, printed now: a SIGKILL later leaves no last words."""
    lines = start_lines(run, cfg, out_dir, checkpoint_dir, derived_params, runtime)
    print("\n".join(lines), flush=True)


def class_report(class_names: list[str], targets, probs) -> dict:
    """The per-class report of the test predictions (as classification_report.json)."""
    cm = confusion_matrix(targets, probs.argmax(1), len(class_names))
    return classification_report(cm, class_names)


def class_table(report: dict, class_names: list[str]) -> list[str]:
    """Precision/recall/F1 per class; past MAX_CLASS_ROWS classes only the worst by F1."""
    names = list(class_names)
    note = ""
    if len(names) > MAX_CLASS_ROWS:
        names = sorted(names, key=lambda n: report[n]["f1-score"])[:MAX_CLASS_ROWS]
        note = f"  ({MAX_CLASS_ROWS} lowest F1 of {len(class_names)})"
    width = max(5, *(len(n) for n in names))
    lines = [f"{'class':<{width}}  precision  recall     f1  support{note}"]
    for n in names:
        r = report[n]
        lines.append(
            f"{n:<{width}}  {r['precision']:>9.3f}  {r['recall']:>6.3f}  {r['f1-score']:>5.3f}"
            f"  {r['support']:>7}"
        )
    return lines


def _store_hint(tracking: TrackingConfig, experiment_id: str | None) -> list[str]:
    """How to see the run in MLflow's UI: the runs table with the key metrics as columns."""
    uri = redact(tracking.uri)
    path = ui_path(experiment_id) if experiment_id else ""
    if uri.startswith(("http://", "https://")):
        return [f"open {uri.rstrip('/')}{path}"]
    lines = [f"mlflow ui --backend-store-uri {shlex.quote(uri)}"]
    return lines + ([f"then open http://127.0.0.1:5000{path}"] if path else [])


def next_commands(run: Run, cfg: RunConfig, checkpoint: Path | None) -> list[str]:
    """evaluate/predict/export on this run: by run id, or by checkpoint when not tracked."""
    if run.run_id:
        which = [f"run_id={run.run_id}"]
        default_uri = TrackingConfig().uri
        if cfg.tracking.uri != default_uri:  # the stages look the run up in the same store
            which.append(f"tracking.uri={cfg.tracking.uri}")
    elif checkpoint is not None:
        which = [f"checkpoint={shown_path(checkpoint)}"]
    else:
        return []
    return [
        command("stage=evaluate", *which),
        command("stage=predict", *which) + " input=<image or folder>",
        command("stage=export", *which, "format=onnx"),
    ]


def end_lines(
    run: Run,
    cfg: RunConfig,
    result: FitResult,
    test_metrics: dict[str, float],
    report: dict | None,
    class_names: list[str],
    out_dir: Path,
) -> list[str]:
    """What the run scored and what to do with it; the first line is the one-line summary."""
    summary = "  ".join(f"{k} {v:.4f}" for k, v in test_metrics.items())
    lines = [
        f"run {run.run_id or '(tracking off)'}: {summary}  "
        f"({tested_weights(result)}, {result.train_seconds:.0f}s)"
    ]
    if report is not None:
        lines += ["", *class_table(report, class_names)]
    diagnosis = diagnose(result.history)
    headline = f"diagnosis: {diagnosis.verdict}. {diagnosis.findings[0]}"
    lines += ["", *textwrap.wrap(headline, 99, subsequent_indent="  ")]
    checkpoint = result.checkpoint
    shown = [name for name in _SHOWN_FILES if (out_dir / name).is_file()]
    lines += ["", f"output   {shown_path(out_dir)}" + (f": {', '.join(shown)}" if shown else "")]
    if checkpoint is not None:
        lines.append(f"weights  {shown_path(checkpoint)}")
    if run.run_id:
        hint = _store_hint(cfg.tracking, run.experiment_id)
        lines += ["mlflow   " + hint[0], *(f"         {line}" for line in hint[1:])]
    follow = next_commands(run, cfg, checkpoint)
    if follow:
        lines += ["next     " + follow[0], *(f"         {c}" for c in follow[1:])]
    return lines


def print_run_end(
    run: Run,
    cfg: RunConfig,
    result: FitResult,
    test_metrics: dict[str, float],
    report: dict | None,
    class_names: list[str],
    out_dir: Path,
) -> None:
    lines = end_lines(run, cfg, result, test_metrics, report, class_names, out_dir)
    print("\n".join(lines), flush=True)
