"""pipeline: transfer-learning fine-tuning for image classification.

`python -m pipeline` composes a Hydra config into a `config.RunConfig` and runs one command
from `commands/` (stage=train, evaluate, ...). The packages mirror the conf/ groups; imports
only point down this list (tests/test_layering.py checks it):

    errors, repro, signals          shared by all
    data, models, tracking          images in; the network; MLflow
    training, evaluation            fitting; judging (evaluation may use training)
    config, compose                 RunConfig: every group's settings, validation; Hydra
    experiments                     ablations, search, k-fold: many runs
    commands, __main__              the CLI stages
"""

__version__ = "0.1.0"
