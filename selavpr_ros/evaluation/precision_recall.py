"""Precision-recall of loop-closure decisions: the metric of VPR-Bench and SeqSLAM-style evaluations.

Each query makes at most one claim: its best candidate and a confidence (a
cosine, a local-match count, an inlier count). Accepting claims whose
confidence reaches a threshold gives one (precision, recall) point:
precision over the accepted claims, recall over the queries that *have* a
true match in the map. A query without a true match can only add a false
positive, which is exactly what a loop-closure detector must avoid.
**Recall at 100 % precision** is the largest recall with no false claim.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class PRCurve:
    """Operating points, one per distinct threshold, from the strictest to the most lenient."""

    thresholds: np.ndarray  # accept claims with confidence >= threshold
    precision: np.ndarray
    recall: np.ndarray
    positives: int  # queries with a true match in the map (the recall denominator)

    @property
    def auc(self) -> float:
        """Area under the curve: average precision, precision as a step function of recall."""
        if not len(self.recall):
            return 0.0
        recall = np.concatenate([[0.0], self.recall])
        return float(np.sum(np.diff(recall) * self.precision))

    def recall_at_precision(self, target: float = 1.0) -> float:
        ok = self.precision >= target - 1e-12
        return float(self.recall[ok].max()) if ok.any() else 0.0

    def threshold_for_precision(self, target: float = 1.0) -> tuple[float, float, float] | None:
        """The most lenient threshold with precision >= ``target``: (threshold, precision, recall); None if none."""
        ok = np.flatnonzero(self.precision >= target - 1e-12)
        if not len(ok):
            return None
        i = int(ok[np.argmax(self.recall[ok])])
        return float(self.thresholds[i]), float(self.precision[i]), float(self.recall[i])

    def to_dict(self, points: int = 2000) -> dict:
        """Summary and the curve, subsampled to at most ``points`` points (for JSON reports)."""
        keep = np.unique(np.linspace(0, len(self.recall) - 1, min(points, len(self.recall))).round().astype(int)) \
            if len(self.recall) else np.zeros(0, int)
        best = self.threshold_for_precision(1.0)
        return {"auc_pr": self.auc, "recall_at_100_precision": self.recall_at_precision(1.0),
                "threshold_at_100_precision": None if best is None else best[0], "positives": self.positives,
                "thresholds": self.thresholds[keep].tolist(), "precision": self.precision[keep].tolist(),
                "recall": self.recall[keep].tolist()}


def pr_curve(confidence: np.ndarray, correct: np.ndarray, has_match: np.ndarray) -> PRCurve:
    """PR curve of per-query claims.

    ``confidence`` (Q,): of each query's claim, NaN or -inf for no claim;
    ``correct`` (Q,): whether the claim is a true match; ``has_match`` (Q,):
    whether the query has any true match in the map.
    """
    confidence = np.asarray(confidence, np.float64)
    correct = np.asarray(correct, bool)
    positives = int(np.asarray(has_match, bool).sum())
    claimed = np.isfinite(confidence)
    conf, ok = confidence[claimed], correct[claimed]
    order = np.argsort(-conf, kind="stable")
    conf, ok = conf[order], ok[order]
    tp, fp = np.cumsum(ok), np.cumsum(~ok)
    last = np.flatnonzero(np.r_[conf[1:] != conf[:-1], True]) if len(conf) else np.zeros(0, int)  # ties: one point
    tp, fp = tp[last], fp[last]
    precision = tp / np.maximum(tp + fp, 1)
    recall = tp / max(positives, 1)
    return PRCurve(conf[last], precision.astype(np.float64), recall.astype(np.float64), positives)
