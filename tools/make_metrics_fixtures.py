#!/usr/bin/env python3
"""Writes tests/golden/metrics_cases.json: scikit-learn's answers for models/metrics.h.

Run with any Python that has scikit-learn and numpy (CI does not need them; it reads the JSON):
    python3 tools/make_metrics_fixtures.py [--out tests/golden/metrics_cases.json]

Each case is a small binary problem (5-60 samples) with labels y in {0, 1}, probabilities s in [0, 1]
(rounded to a few decimals most of the time, so that scores tie, within and across classes, and land
on the calibration bin edges) and a decision threshold (prediction positive when s >= threshold; the
threshold is often one of the scores, to exercise ties with it). The kinds: random scores of varying
separation and prevalence, all scores tied, a few score levels, scores on the 0.1 grid, perfect and
inverted rankings, and single-class sets.

For every case the file holds, computed by scikit-learn:
  roc_auc            roc_auc_score                 (null when only one class is present)
  average_precision  average_precision_score       (null without positives; see below)
  accuracy, balanced_accuracy, f1, precision, recall, specificity (recall of class 0),
  npv (precision of class 0), brier (brier_score_loss), confusion {tp, fp, tn, fn}
and for some cases calibration_curve(strategy="uniform") with its n_bins, roc_curve (both
drop_intermediate settings, the second for half of them) and precision_recall_curve.

ladnn reports an undefined metric as NaN (null here) where scikit-learn returns a number with a
warning; the script applies those conventions explicitly, and asserts what scikit-learn returned:
  - precision, recall, specificity, npv, f1: zero_division=np.nan (scikit-learn's own option);
  - average_precision without positives: scikit-learn returns 0.0, ladnn NaN;
  - balanced_accuracy with a class absent from y: scikit-learn averages the classes present, ladnn NaN.
roc_curve's first threshold (+inf) is not stored (JSON has no infinity): "thresholds" starts at the
second one. Seeds are fixed, so a rerun rewrites the same file for the same scikit-learn and numpy.
"""
import argparse
import json
import math
import os
import warnings

import numpy as np
import sklearn
from sklearn.calibration import calibration_curve
from sklearn.metrics import (accuracy_score, average_precision_score, balanced_accuracy_score,
                             brier_score_loss, confusion_matrix, f1_score, precision_recall_curve,
                             precision_score, recall_score, roc_auc_score, roc_curve)

SEED = 20240917
N_CASES = 300


def num(v):
    """A float for JSON, NaN as None."""
    v = float(v)
    return None if math.isnan(v) else v


def nums(a):
    return [num(v) for v in a]


def make_case(rng, i):
    """Returns (kind, y, s, threshold)."""
    n = int(rng.integers(5, 61))
    kind = rng.choice(["random"] * 10 + ["tied", "levels", "grid", "perfect", "inverted", "single0",
                                         "single1"])
    if kind == "single0":
        y = np.zeros(n, dtype=int)
    elif kind == "single1":
        y = np.ones(n, dtype=int)
    else:
        prevalence = rng.uniform(0.1, 0.9)
        y = (rng.random(n) < prevalence).astype(int)
        # both classes present, so that the ranking metrics are defined
        y[0], y[1] = 0, 1
        y = rng.permutation(y)

    if kind == "tied":
        s = np.full(n, float(np.round(rng.random(), 2)))
    elif kind == "levels":
        levels = np.round(rng.random(int(rng.integers(2, 4))), 2)
        s = rng.choice(levels, n)
    elif kind == "grid":
        s = rng.integers(0, 11, n) / 10.0  # 0.0, 0.1, ..., 1.0: on the calibration edges
    elif kind == "perfect":
        s = np.where(y == 1, rng.uniform(0.6, 1.0, n), rng.uniform(0.0, 0.4, n))
    elif kind == "inverted":
        s = np.where(y == 1, rng.uniform(0.0, 0.4, n), rng.uniform(0.6, 1.0, n))
    else:
        separation = rng.uniform(-1.0, 4.0)
        z = separation * (y - 0.5) + rng.normal(0.0, 1.0, n)
        s = 1.0 / (1.0 + np.exp(-z))
    decimals = int(rng.choice([1, 2, 2, 3, 6]))  # 6: almost no ties
    if kind != "grid":
        s = np.round(s, decimals)
    s = np.clip(s, 0.0, 1.0)

    r = rng.random()
    if r < 0.6:
        threshold = 0.5
    elif r < 0.85:
        threshold = float(rng.choice(s))  # ties with the threshold
    else:
        threshold = float(np.round(rng.random(), 2))
    return str(kind), y, s, threshold


def expected(y, s, threshold, with_calibration, with_curves, rng):
    both = len(np.unique(y)) == 2
    positives = int(y.sum())
    pred = (s >= threshold).astype(int)
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        auc = roc_auc_score(y, s)  # NaN, with a warning, when only one class is present
        assert both or math.isnan(auc), auc
        out["roc_auc"] = num(auc)
        ap = average_precision_score(y, s)
        if positives == 0:
            assert ap == 0.0, ap  # scikit-learn's value without positives; ladnn says NaN
            out["average_precision"] = None
        else:
            out["average_precision"] = num(ap)
        tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
        out["confusion"] = {"tp": int(tp), "fp": int(fp), "tn": int(tn), "fn": int(fn)}
        out["accuracy"] = num(accuracy_score(y, pred))
        out["balanced_accuracy"] = num(balanced_accuracy_score(y, pred)) if both else None
        zd = dict(zero_division=np.nan)
        out["precision"] = num(precision_score(y, pred, pos_label=1, **zd))
        out["recall"] = num(recall_score(y, pred, pos_label=1, **zd))
        out["specificity"] = num(recall_score(y, pred, pos_label=0, **zd))
        out["npv"] = num(precision_score(y, pred, pos_label=0, **zd))
        out["f1"] = num(f1_score(y, pred, pos_label=1, **zd))
        out["brier"] = num(brier_score_loss(y, s))

        if with_calibration:
            n_bins = int(rng.choice([10, 10, 10, 5, 3, 7, 1]))
            prob_true, prob_pred = calibration_curve(y, s, n_bins=n_bins, strategy="uniform")
            # scikit-learn returns no counts: the same binning, to give the test the counts too
            edges = np.linspace(0.0, 1.0, n_bins + 1)
            ids = np.searchsorted(edges[1:-1], s)
            counts = np.bincount(ids, minlength=n_bins)
            out["calibration"] = {
                "n_bins": n_bins,
                "index": [int(i) for i in np.nonzero(counts)[0]],
                "count": [int(c) for c in counts[counts != 0]],
                "fraction_positive": nums(prob_true),
                "mean_predicted": nums(prob_pred),
            }
        if with_curves:
            for key, drop in (("roc_drop", True), ("roc_keep", False)):
                if key == "roc_keep" and rng.random() < 0.5:
                    continue
                fpr, tpr, thr = roc_curve(y, s, drop_intermediate=drop)
                assert np.isinf(thr[0])
                out[key] = {"fpr": nums(fpr), "tpr": nums(tpr), "thresholds": nums(thr[1:])}
            p, r, thr = precision_recall_curve(y, s)
            out["pr"] = {"precision": nums(p), "recall": nums(r), "thresholds": nums(thr)}
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = os.path.dirname(os.path.abspath(__file__))
    parser.add_argument("--out", default=os.path.join(here, "..", "tests", "golden", "metrics_cases.json"))
    args = parser.parse_args()

    rng = np.random.default_rng(SEED)
    cases = []
    for i in range(N_CASES):
        kind, y, s, threshold = make_case(rng, i)
        exp = expected(y, s, threshold, with_calibration=(i % 2 == 0), with_curves=(i % 6 == 0), rng=rng)
        cases.append({"name": f"case{i:03d}_{kind}", "y": [int(v) for v in y], "s": nums(s),
                      "threshold": threshold, "expected": exp})
    doc = {
        "generator": "tools/make_metrics_fixtures.py",
        "sklearn": sklearn.__version__,
        "numpy": np.__version__,
        "seed": SEED,
        "decision_rule": "positive when s >= threshold",
        "cases": cases,
    }
    text = json.dumps(doc, separators=(",", ":"), allow_nan=False)
    out = os.path.abspath(args.out)
    with open(out, "w") as f:
        f.write(text)
        f.write("\n")
    kinds = {}
    for c in cases:
        k = c["name"].split("_", 1)[1]
        kinds[k] = kinds.get(k, 0) + 1
    print(f"wrote {out}: {len(cases)} cases, {len(text) + 1} bytes; kinds {kinds}")


if __name__ == "__main__":
    main()
