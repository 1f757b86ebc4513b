"""Many runs answering one question: ablations, their statistics, hyper-parameter search, k-fold.

Config groups: conf/ablation and conf/hparams_search (their settings, `AblationConfig` and
`SearchConfig`, live in `pipeline.config`, which every group's settings meet). Functions that
train take the train command as an argument, so nothing here imports `commands`.
"""
