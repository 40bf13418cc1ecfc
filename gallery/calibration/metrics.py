"""Pure metrics for the benchmark and calibration: numpy arrays in, numbers out (no gallery, no models).

Conventions: a score is a cosine similarity (or a head probability); a comparison is accepted when
``score >= threshold``. FAR / FPIR = fraction of impostor scores accepted; TAR / TPIR = fraction of genuine ones
accepted (for identification, accepted *and* named correctly).

Scores are computed in float32 (the embedders' outputs, FAISS and the numpy products over them), so a threshold
chosen from scores is a float32 value (:func:`above`): compared with a float32 score in float32, or as the Python
floats identify and verify compare, it gives the same answer, and it survives the settings table's ``repr``
round trip unchanged. A threshold one float64 step above a float32 score would be rounded back onto that score
by any float32 comparison and accept it.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# scikit-learn is imported where it is used: the curve module (read by the web app) needs only the threshold grid.


SCORE_DTYPE = np.float32  # the dtype every similarity is computed in; thresholds are values of it


def above(score: float) -> float:
    """The smallest float32 value strictly above ``score`` (a float32 score, or any float): as a threshold it
    rejects ``score`` whether the comparison is made in float32 or in float64."""
    t = SCORE_DTYPE(score)
    if not t > score:  # float32 scores land on themselves; other floats may round down
        t = np.nextafter(t, SCORE_DTYPE(np.inf))
    return float(t)


def at_or_below(score: float) -> float:
    """The largest float32 value not above ``score``: as a threshold it accepts ``score`` in either dtype."""
    t = SCORE_DTYPE(score)
    if t > score:
        t = np.nextafter(t, SCORE_DTYPE(-np.inf))
    return float(t)


def threshold_at_far(impostor: np.ndarray, far: float) -> float:
    """The lowest float32 threshold that accepts at most ``floor(far * n)`` impostor scores.

    That is :func:`above` the (k+1)-th highest impostor score, so that impostor and every lower one are rejected
    in float32 and in float64 alike, on any CPU. With n impostors and ``far * n < 1`` it is just above the
    highest impostor score: the FAR asked for cannot be measured on so few impostors (see
    :func:`far_is_measurable`). Ties are never split: a tie group that does not fit is rejected as a whole.
    """
    imp = np.sort(np.asarray(impostor, np.float64))[::-1]
    if len(imp) == 0:
        raise ValueError("no impostor scores")
    k = int(np.floor(far * len(imp) + 1e-9))
    if k >= len(imp):
        return at_or_below(imp[-1])
    return above(imp[k])


def far_is_measurable(n_impostor: int, far: float) -> bool:
    return n_impostor * far >= 1.0


def acceptance(scores: np.ndarray, threshold: float) -> float:
    scores = np.asarray(scores, np.float64)
    return float(np.mean(scores >= threshold)) if len(scores) else float("nan")


def tar_at_far(genuine: np.ndarray, impostor: np.ndarray, far: float) -> tuple[float, float]:
    """(TAR, threshold) at the threshold chosen by :func:`threshold_at_far`."""
    t = threshold_at_far(impostor, far)
    return acceptance(genuine, t), t


def roc(genuine: np.ndarray, impostor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FAR, TAR) points of the ROC curve."""
    y, s = _stack(genuine, impostor)
    from sklearn.metrics import roc_curve

    far, tar, _ = roc_curve(y, s)
    return far, tar


def auc(genuine: np.ndarray, impostor: np.ndarray) -> float:
    y, s = _stack(genuine, impostor)
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s))


def _stack(genuine, impostor) -> tuple[np.ndarray, np.ndarray]:
    g, i = np.asarray(genuine, np.float64), np.asarray(impostor, np.float64)
    return np.r_[np.ones(len(g)), np.zeros(len(i))], np.r_[g, i]


def best_threshold(scores: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """(threshold, accuracy) maximising accuracy of ``score >= threshold`` == ``same``; thresholds are midpoints
    between consecutive distinct scores (the first maximum wins, so the result is deterministic).

    A midpoint of two neighbouring float32 scores is a float64 value between them: compare it in float64 (as
    :func:`kfold_accuracy` does). It is a reported statistic, never a stored decision threshold."""
    scores = np.asarray(scores, np.float64)
    same = np.asarray(same, bool)
    u = np.unique(scores)
    cands = np.r_[u[0] - 1e-6, (u[:-1] + u[1:]) / 2, u[-1] + 1e-6]
    pos, neg = np.sort(scores[same]), np.sort(scores[~same])
    correct = (len(pos) - np.searchsorted(pos, cands, "left")) + np.searchsorted(neg, cands, "left")
    best = int(np.argmax(correct))
    return float(cands[best]), float(correct[best] / len(scores))


@dataclass(frozen=True)
class FoldResult:
    accuracies: tuple[float, ...]
    thresholds: tuple[float, ...]

    @property
    def mean(self) -> float:
        return float(np.mean(self.accuracies))

    @property
    def std(self) -> float:
        return float(np.std(self.accuracies, ddof=1)) if len(self.accuracies) > 1 else 0.0

    @property
    def stderr(self) -> float:
        return self.std / float(np.sqrt(len(self.accuracies)))


def kfold_accuracy(scores: np.ndarray, same: np.ndarray, folds: np.ndarray) -> FoldResult:
    """LFW protocol: for each fold, the accuracy-maximising threshold on the other folds, applied to this one."""
    scores, same, folds = np.asarray(scores, np.float64), np.asarray(same, bool), np.asarray(folds)
    accs, thrs = [], []
    for f in np.unique(folds):
        test = folds == f
        t, _ = best_threshold(scores[~test], same[~test])
        accs.append(float(np.mean((scores[test] >= t) == same[test])))
        thrs.append(t)
    return FoldResult(tuple(accs), tuple(thrs))


def top1_and_macro_f1(truth: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> tuple[float, float]:
    """Closed-set top-1 accuracy and macro-F1 over the enrolled ``labels`` that have queries."""
    from sklearn.metrics import f1_score

    truth, predicted = list(truth), list(predicted)
    if not truth:
        return float("nan"), float("nan")
    top1 = float(np.mean([t == p for t, p in zip(truth, predicted)]))
    present = [lab for lab in labels if lab in set(truth)]
    f1 = float(f1_score(truth, predicted, labels=present, average="macro", zero_division=0))
    return top1, f1


def tpir_at_fpir(genuine_scores: np.ndarray, genuine_correct: np.ndarray, impostor_scores: np.ndarray,
                 fpir: float) -> tuple[float, float]:
    """Open-set (TPIR, threshold): the threshold lets through ``fpir`` of impostor probes; a genuine probe counts
    when its top-1 identity is right and its score reaches the threshold."""
    t = threshold_at_far(impostor_scores, fpir)
    ok = np.asarray(genuine_correct, bool) & (np.asarray(genuine_scores, np.float64) >= t)
    return (float(np.mean(ok)) if len(ok) else float("nan")), t


def confusion(truth: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(list(truth), list(predicted), labels=list(labels))
