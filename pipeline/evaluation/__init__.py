"""Judging a trained model: scoring with TTA, metrics, the diagnosis report, Grad-CAM, plots,
figures and export.

Config groups: conf/eval (`evaluation.evaluate.EvalConfig`), conf/visualize
(`evaluation.visualize.VisualizeConfig`). Imports `training` and below.
"""
