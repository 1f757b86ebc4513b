"""This project's Hydra sweeper for Optuna >= 4 (hparams_search=<name>); see optuna_sweeper.py.

Hydra only instantiates plugins that live under the `hydra_plugins` namespace package.
"""
