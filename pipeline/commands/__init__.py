"""Stage functions: each takes a RunConfig and an output folder, and is callable from tests."""

from pipeline.commands.ablate import run_ablate
from pipeline.commands.download import run_download
from pipeline.commands.evaluate import run_evaluate
from pipeline.commands.export import run_export
from pipeline.commands.lr_find import run_lr_find
from pipeline.commands.predict import run_predict
from pipeline.commands.search import run_search
from pipeline.commands.train import TrainResult, run_train
from pipeline.commands.visualize import run_visualize

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
