"""Fitting a model: precision, the epoch loop, early stopping, checkpoints and resume, transfer
strategies, optimizers, schedules, EMA, distributed helpers, the non-finite guard, the feature
cache and the LR range test.

Config groups: conf/train (`training.config.TrainConfig`), conf/finetune (`training.finetune`),
conf/optim (`training.optim`), conf/sched (`training.sched`), conf/lr_find (`training.lr_find`).
Imports `data`, `models`, `tracking` and below; never `evaluation`.
"""
