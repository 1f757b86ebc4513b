"""Stage functions: each takes a RunConfig and an output folder, and is callable from tests."""

from pipeline.stages.ablate import run_ablate
from pipeline.stages.download import run_download
from pipeline.stages.search import run_search
from pipeline.stages.train import TrainResult, run_train

STAGE_FUNCTIONS = {
    "train": run_train,
    "download": run_download,
    "ablate": run_ablate,
    "search": run_search,
}

__all__ = [
    "STAGE_FUNCTIONS",
    "TrainResult",
    "run_ablate",
    "run_download",
    "run_search",
    "run_train",
]
