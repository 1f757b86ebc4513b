"""pipeline: transfer-learning fine-tuning for image classification.

Stages (train, download, ...) are plain functions in `pipeline.stages`; `python -m pipeline`
composes a Hydra config and calls one of them.
"""

__version__ = "0.1.0"
