"""Transfer strategies: which backbone parameters train, and when.

`frozen` is feature extraction (a linear probe with a linear head); `full` fine-tunes
everything. Stage-wise strategies resolve "stages" with timm's own parameter grouping, so
the same setting works for ResNet, VGG, Inception and EfficientNet alike.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import ConfigError
from pipeline.model import Classifier

STRATEGIES = ("frozen", "full")


@dataclass
class FinetuneConfig:
    strategy: str = "full"  # frozen | full

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(
                f"finetune.strategy={self.strategy!r} is not one of: {', '.join(STRATEGIES)}"
            )


def apply_finetune(model: Classifier, cfg: FinetuneConfig, epoch: int = 0) -> bool:
    """Set `requires_grad` for this epoch. Returns True when the trainable set changed
    (the optimizer then needs rebuilding)."""
    before = [p.requires_grad for p in model.backbone.parameters()]
    trainable = cfg.strategy == "full"
    for p in model.backbone.parameters():
        p.requires_grad_(trainable)
    for p in model.head.parameters():
        p.requires_grad_(True)
    model.refresh_frozen()
    return before != [p.requires_grad for p in model.backbone.parameters()]
