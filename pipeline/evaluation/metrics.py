"""Classification metrics as pure functions of labels and predictions (numpy in, numbers out)."""

from __future__ import annotations

import numpy as np


def confusion_matrix(targets: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """counts[i, j] = images of true class i predicted as class j."""
    index = np.asarray(targets, dtype=np.int64) * num_classes + np.asarray(preds, dtype=np.int64)
    return np.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den > 0)


def per_class_scores(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support per class (0 where undefined, as scikit-learn)."""
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def accuracy(cm: np.ndarray) -> float:
    total = cm.sum()
    return float(np.trace(cm) / total) if total else 0.0


def classification_report(cm: np.ndarray, class_names: list[str]) -> dict:
    """Per-class and averaged precision/recall/F1, shaped like scikit-learn's output_dict."""
    scores = per_class_scores(cm)
    support = scores["support"]
    report: dict = {
        name: {
            "precision": float(scores["precision"][i]),
            "recall": float(scores["recall"][i]),
            "f1-score": float(scores["f1"][i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(class_names)
    }
    weights = support / support.sum() if support.sum() else support
    for label, avg in (("macro avg", np.mean), ("weighted avg", None)):
        report[label] = {
            key: float(avg(scores[src]) if avg else np.sum(scores[src] * weights))
            for key, src in (("precision", "precision"), ("recall", "recall"), ("f1-score", "f1"))
        }
        report[label]["support"] = int(support.sum())
    report["accuracy"] = accuracy(cm)
    return report


def format_report(report: dict) -> str:
    """Plain-text table, one row per class plus the averages."""
    rows = [k for k in report if k != "accuracy"]
    width = max(12, *(len(r) for r in rows))
    lines = [f"{'':>{width}} {'precision':>9} {'recall':>9} {'f1-score':>9} {'support':>9}", ""]
    for name in rows:
        r = report[name]
        if name == "macro avg":
            lines += [
                "",
                f"{'accuracy':>{width}} {'':>9} {'':>9} {report['accuracy']:>9.4f} {r['support']:>9}",
            ]
        lines.append(
            f"{name:>{width}} {r['precision']:>9.4f} {r['recall']:>9.4f} {r['f1-score']:>9.4f} {r['support']:>9}"
        )
    return "\n".join(lines) + "\n"


def summarize(targets: np.ndarray, preds: np.ndarray, num_classes: int) -> dict[str, float]:
    """The headline numbers logged for a split."""
    cm = confusion_matrix(targets, preds, num_classes)
    return {"acc": accuracy(cm), "f1_macro": float(per_class_scores(cm)["f1"].mean())}


def topk_accuracy(targets: np.ndarray, probs: np.ndarray, k: int) -> float:
    """Fraction of samples whose true class is among the k most probable (k capped at C)."""
    k = min(k, probs.shape[1])
    topk = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return float((topk == np.asarray(targets)[:, None]).any(axis=1).mean()) if len(probs) else 0.0


def calibration_bins(targets: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> dict:
    """Top-1 confidence split into equal-width bins: mean confidence, accuracy, count per bin."""
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == np.asarray(targets)).astype(np.float64)
    # Bin i holds confidences in (i/n, (i+1)/n]; a confidence of exactly 0 joins bin 0.
    index = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(index, minlength=n_bins).astype(np.float64)
    return {
        "edges": np.linspace(0.0, 1.0, n_bins + 1),
        "confidence": _safe_div(np.bincount(index, confidence, n_bins), count),
        "accuracy": _safe_div(np.bincount(index, correct, n_bins), count),
        "count": count,
    }


def expected_calibration_error(targets: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> float:
    """ECE: the count-weighted mean |accuracy - confidence| over confidence bins (0 = calibrated)."""
    bins = calibration_bins(targets, probs, n_bins)
    total = bins["count"].sum()
    if not total:
        return 0.0
    gap = np.abs(bins["accuracy"] - bins["confidence"])
    return float(np.sum(gap * bins["count"]) / total)
