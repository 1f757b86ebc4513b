"""Stage functions: each takes a RunConfig and an output folder, and is callable from tests."""

from pipeline.stages.ablate import run_ablate
from pipeline.stages.download import run_download
from pipeline.stages.evaluate import run_evaluate
from pipeline.stages.export import run_export
from pipeline.stages.lr_find import run_lr_find
from pipeline.stages.predict import run_predict
from pipeline.stages.search import run_search
from pipeline.stages.train import TrainResult, run_train
from pipeline.stages.visualize import run_visualize

STAGE_FUNCTIONS = {
    "train": run_train,
    "download": run_download,
    "evaluate": run_evaluate,
    "predict": run_predict,
    "export": run_export,
    "visualize": run_visualize,
    "lr_find": run_lr_find,
    "ablate": run_ablate,
    "search": run_search,
}

__all__ = [
    "STAGE_FUNCTIONS",
    "TrainResult",
    "run_ablate",
    "run_download",
    "run_evaluate",
    "run_export",
    "run_lr_find",
    "run_predict",
    "run_search",
    "run_train",
    "run_visualize",
]
