"""What the MLflow conventions add to one training run, in seconds, on the quick start's model:
`tracking.log_model` (the pyfunc model: pickle, signature, input example check, upload) and
the train/val/test dataset inputs. Prints JSON (wall and CPU seconds: the CPU figure holds on
a busy shared machine).

    python benchmarks/run_logging_cost.py --repeats 3 --out benchmarks/results/run_logging_cost.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--overrides", nargs="*", default=[], help="e.g. backbone.name=...")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    import torch

    from pipeline.commands.logged_model import log_classifier_model
    from pipeline.compose import compose
    from pipeline.data.report import log_dataset_inputs
    from pipeline.data.splits import run_splits
    from pipeline.models.classifier import build_model
    from pipeline.tracking.runs import start_run

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        cfg = compose(
            [f"tracking.uri={uri}", f"tracking.artifact_root={tmp}/artifacts", *args.overrides]
        )
        splits = run_splits(cfg.data, cfg.seed)
        model, spec, _ = build_model(cfg.backbone, cfg.head, len(splits.class_names))
        model_s, model_cpu_s, inputs_s = [], [], []
        for _ in range(args.repeats):
            with start_run(cfg.tracking, name="cost") as run:
                start = time.perf_counter()
                log_dataset_inputs(run, splits, cfg.data)
                inputs_s.append(time.perf_counter() - start)
                start, cpu = time.perf_counter(), time.process_time()
                log_classifier_model(
                    str(run.run_id), uri, model, spec, splits.class_names, cfg.seed
                )
                model_s.append(time.perf_counter() - start)
                model_cpu_s.append(time.process_time() - cpu)
    report = {
        "backbone": cfg.backbone.name,
        "img_size": spec.img_size,
        "params": sum(p.numel() for p in model.parameters()),
        "log_model_s": {"median": statistics.median(model_s), "runs": model_s},
        # CPU seconds of this process: what wall time is on an idle machine, near enough
        "log_model_cpu_s": {"median": statistics.median(model_cpu_s), "runs": model_cpu_s},
        "dataset_inputs_s": {"median": statistics.median(inputs_s), "runs": inputs_s},
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return report


if __name__ == "__main__":
    main()
