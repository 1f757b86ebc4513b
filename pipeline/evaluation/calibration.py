"""Temperature scaling (Guo et al., 2017, "On Calibration of Modern Neural Networks").

One scalar T divides every logit: softmax(z / T). Fitted on the validation split by
minimising its negative log-likelihood with LBFGS, it makes the probabilities honest (a
network that says 0.99 is then right about 99% of the time) without moving any argmax, so
accuracy is unchanged. The temperature is saved with the run (`calibration.json`) and
applied wherever the run's probabilities are used: evaluate, predict, the exported model.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from pipeline.errors import ConfigError
from pipeline.evaluation.evaluate import nll, probs_from_logits
from pipeline.evaluation.metrics import expected_calibration_error

log = logging.getLogger(__name__)

CALIBRATION_FILE = "calibration.json"


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor, max_iter: int = 100) -> float:
    """The T > 0 that minimises the NLL of softmax(logits / T) (averaged over the views of
    (V, N, C) TTA logits, so T fits the probabilities that will be served)."""
    logits, targets = logits.detach().float(), targets.detach().long()
    if logits.ndim == 2:
        logits = logits[None]
    if bool((probs_from_logits(logits).argmax(-1) == targets).all()):
        # Every image right: the NLL keeps falling as T -> 0, so the "best" T is whatever the
        # optimiser stops at (0.014 on one 49-image ants/bees val split, which then served
        # test probabilities of 0 and 1 and raised the test NLL from 0.19 to 1.13).
        log.warning(
            "eval.calibrate=temperature: the model gets every one of the %d val images right, "
            "so they cannot tell how confident it should be; temperature left at 1",
            len(targets),
        )
        return 1.0
    log_t = torch.zeros((), requires_grad=True)  # T = exp(log_t) stays positive, starts at 1
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        probs = (logits / log_t.exp()).softmax(-1).mean(0)
        loss = F.nll_loss(probs.clamp_min(1e-12).log(), targets)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp())


def calibration_metrics(
    split: str, logits: torch.Tensor, targets: torch.Tensor, temperature: float
) -> dict[str, float]:
    """NLL and ECE of a split's (V, N, C) logits before and after dividing by `temperature`."""
    before, after = probs_from_logits(logits), probs_from_logits(logits, temperature)
    y = targets.numpy()
    return {
        f"{split}/nll": nll(before, targets),
        f"{split}/nll_calibrated": nll(after, targets),
        f"{split}/ece": expected_calibration_error(y, before.numpy()),
        f"{split}/ece_calibrated": expected_calibration_error(y, after.numpy()),
    }


def save_temperature(path: Path, temperature: float, metrics: dict[str, float]) -> Path:
    path.write_text(
        json.dumps(
            {"method": "temperature", "temperature": temperature, "fitted_on": "val", **metrics},
            indent=2,
        )
    )
    return path


def read_temperature(path: Path | None) -> float | None:
    """The temperature a run saved, or None when it was not calibrated."""
    if path is None:
        return None
    try:
        temperature = float(json.loads(Path(path).read_text())["temperature"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path} holds no readable temperature: {exc}") from exc
    if not temperature > 0:
        raise ConfigError(f"{path}: temperature must be > 0, got {temperature}")
    return temperature
