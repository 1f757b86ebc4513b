"""Stage functions: each takes a RunConfig and an output folder, and is callable from tests."""

from pipeline.stages.download import run_download
from pipeline.stages.train import TrainResult, run_train

STAGE_FUNCTIONS = {"train": run_train, "download": run_download}

__all__ = ["STAGE_FUNCTIONS", "TrainResult", "run_download", "run_train"]
