"""The commands behind `stage=...`: each takes a RunConfig and an output folder, and is callable
from tests. `trained_run` rebuilds a trained model for the commands after training.

Top of the layering: commands may import every package; nothing in pipeline/ imports them
(except `__main__`). Stage names live in one place, `pipeline.config.STAGES` (validated there);
stage `x` runs `run_x`.
"""

from pipeline.commands.ablate import run_ablate
from pipeline.commands.download import run_download
from pipeline.commands.evaluate import run_evaluate
from pipeline.commands.export import run_export
from pipeline.commands.lr_find import run_lr_find
from pipeline.commands.predict import run_predict
from pipeline.commands.search import run_search
from pipeline.commands.train import run_train
from pipeline.commands.visualize import run_visualize
from pipeline.config import STAGES

_COMMANDS = {
    command.__name__: command
    for command in (
        run_ablate,
        run_download,
        run_evaluate,
        run_export,
        run_lr_find,
        run_predict,
        run_search,
        run_train,
        run_visualize,
    )
}
STAGE_FUNCTIONS = {stage: _COMMANDS[f"run_{stage}"] for stage in STAGES}
