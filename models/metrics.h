// models/metrics.h — binary-classification metrics for `ladnn eval` (the COVID head and each lesion head).
//
// Plain C++ on std::vector: labels y are 0 or 1, scores are any finite numbers (probabilities or logits)
// for the ranking metrics, and probabilities in [0, 1] for the ones that need them (Brier score,
// calibration). The ranking metrics reproduce scikit-learn exactly, ties included:
//   roc_curve / roc_auc            == sklearn.metrics.roc_curve / roc_auc_score
//   precision_recall_curve / average_precision
//                                  == sklearn.metrics.precision_recall_curve / average_precision_score
//   calibration_curve              == sklearn.calibration.calibration_curve(strategy="uniform")
// (tests/metrics_test.cpp checks them against tests/golden/metrics_cases.json, which
// tools/make_metrics_fixtures.py writes with scikit-learn.)
//
// Undefined values are NaN, never an exception and never a crash. Where scikit-learn returns a number
// with a warning instead, we return NaN on purpose, because a report should show "undefined" rather than
// a number that looks meaningful:
//   - roc_auc with only one class present (sklearn also returns NaN);
//   - average_precision without positives (sklearn: 0.0 with a warning);
//   - precision, recall, specificity, NPV and F1 whose denominator is 0 (sklearn: 0.0 by default; equal
//     to sklearn's zero_division=np.nan);
//   - balanced accuracy when either class is absent (sklearn: the mean over the classes present);
//   - accuracy and the Brier score of an empty set.
// Malformed input throws std::invalid_argument with a sentence naming the function and the bad element:
// y and score of different lengths, a label other than 0/1, a non-finite score, a probability outside
// [0, 1] where one is needed, a bad option.
//
// Decision rule: a sample is predicted positive when prob >= threshold (default 0.5).
#pragma once

#include <cstdint>
#include <functional>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <utility>
#include <vector>

namespace ladnn::metrics {

// ---- Curves ------------------------------------------------------------------------------------------

/// Whether a curve keeps every distinct threshold or only its corners (sklearn's drop_intermediate).
enum class Intermediate { keep, drop };

/// The ROC curve, as sklearn.metrics.roc_curve returns it: fpr and tpr rise from (0, 0) to (1, 1);
/// thresholds fall, thresholds[0] = +infinity (no sample predicted positive) and thresholds[i] is the
/// score at which the point (fpr[i], tpr[i]) is reached with the rule score >= threshold. With no
/// negatives fpr is all NaN; with no positives tpr is all NaN (as sklearn).
struct RocCurve {
  std::vector<double> fpr;
  std::vector<double> tpr;
  std::vector<double> thresholds;
};

/// sklearn.metrics.roc_curve(y, score, drop_intermediate=...). Intermediate::drop (sklearn's default)
/// removes points collinear with their neighbours, which changes neither the plot nor the area.
/// An empty input gives the single point (NaN, NaN) at threshold +infinity.
RocCurve roc_curve(const std::vector<int>& y, const std::vector<double>& score,
                   Intermediate intermediate = Intermediate::drop);

/// The precision-recall curve, as sklearn.metrics.precision_recall_curve returns it: thresholds rise
/// (one per distinct score), recall falls, and precision and recall have one more entry than thresholds,
/// the final point (recall 0, precision 1). Precision at a threshold with no predicted positive is 0 and,
/// without positives, recall is 1 everywhere (both as sklearn).
struct PrCurve {
  std::vector<double> precision;
  std::vector<double> recall;
  std::vector<double> thresholds;
};

/// sklearn.metrics.precision_recall_curve(y, score, drop_intermediate=...); sklearn's default is keep.
PrCurve precision_recall_curve(const std::vector<int>& y, const std::vector<double>& score,
                               Intermediate intermediate = Intermediate::keep);

// ---- Ranking metrics ---------------------------------------------------------------------------------

/// Area under the ROC curve: the trapezoid rule over roc_curve's points, so tied scores count half
/// (equal to the Mann-Whitney U statistic / (P N)). NaN unless both classes are present.
double roc_auc(const std::vector<int>& y, const std::vector<double>& score);

/// Average precision, sum over distinct thresholds of (R_n - R_{n-1}) P_n (no interpolation), exactly
/// sklearn.metrics.average_precision_score. NaN without positives.
double average_precision(const std::vector<int>& y, const std::vector<double>& score);

// ---- Thresholded metrics -----------------------------------------------------------------------------

/// Counts of a 2x2 confusion matrix.
struct Confusion {
  std::int64_t tp = 0;  ///< y = 1, predicted 1
  std::int64_t fp = 0;  ///< y = 0, predicted 1
  std::int64_t tn = 0;  ///< y = 0, predicted 0
  std::int64_t fn = 0;  ///< y = 1, predicted 0
  std::int64_t n() const { return tp + fp + tn + fn; }
};

/// The confusion matrix of the rule "positive when prob >= threshold". `prob` may be any finite score
/// (the rule is the same for logits with a logit threshold); `threshold` must not be NaN.
Confusion confusion_at(const std::vector<int>& y, const std::vector<double>& prob, double threshold = 0.5);

/// (tp + tn) / n; NaN when n = 0.
double accuracy(const Confusion& c);
/// Recall = sensitivity = true-positive rate, tp / (tp + fn); NaN without positives.
double recall(const Confusion& c);
/// Specificity = true-negative rate, tn / (tn + fp); NaN without negatives.
double specificity(const Confusion& c);
/// Precision = positive predictive value, tp / (tp + fp); NaN when nothing is predicted positive.
double precision(const Confusion& c);
/// Negative predictive value, tn / (tn + fn); NaN when nothing is predicted negative.
double npv(const Confusion& c);
/// (recall + specificity) / 2; NaN when either class is absent.
double balanced_accuracy(const Confusion& c);
/// F1 = 2 tp / (2 tp + fp + fn) (the harmonic mean of precision and recall, and 0 when tp = 0 but
/// fp + fn > 0, as sklearn); NaN when tp + fp + fn = 0.
double f1(const Confusion& c);

/// Brier score, mean of (prob - y)^2 (sklearn.metrics.brier_score_loss for binary input). Probabilities
/// must lie in [0, 1]. NaN for an empty input.
double brier(const std::vector<int>& y, const std::vector<double>& prob);

// ---- Calibration -------------------------------------------------------------------------------------

/// One bin of a reliability diagram.
struct CalibrationBin {
  int index = 0;                 ///< bin number in [0, n_bins)
  double lower = 0, upper = 0;   ///< bin edges: index / n_bins and (index + 1) / n_bins
  double mean_predicted = 0;     ///< mean prob of the samples in the bin (sklearn's prob_pred)
  double fraction_positive = 0;  ///< fraction of them with y = 1 (sklearn's prob_true)
  std::int64_t count = 0;        ///< samples in the bin (> 0)
};

/// sklearn.calibration.calibration_curve(y, prob, n_bins, strategy="uniform"), with the counts: n_bins
/// equal-width bins over [0, 1]; a prob exactly on an inner edge falls in the lower bin (edges are
/// computed as numpy's linspace does, i * (1.0 / n_bins), so 0.3 lies in bin 2 since 3 * 0.1 is a hair
/// above 0.3), 0 in the first bin and 1 in the last. Only non-empty bins are returned, in order.
/// Probabilities must lie in [0, 1]; n_bins >= 1.
std::vector<CalibrationBin> calibration_curve(const std::vector<int>& y, const std::vector<double>& prob,
                                              int n_bins = 10);

// ---- The whole report --------------------------------------------------------------------------------

/// Everything `ladnn eval` prints for one head. Undefined entries are NaN (see the file comment).
struct BinaryReport {
  std::int64_t n = 0;          ///< samples
  std::int64_t positives = 0;  ///< samples with y = 1
  std::int64_t negatives = 0;  ///< samples with y = 0
  double threshold = 0.5;      ///< predicted positive when prob >= threshold
  Confusion confusion;
  double accuracy = 0;
  double balanced_accuracy = 0;
  double f1 = 0;
  double recall = 0;  ///< = sensitivity
  double specificity = 0;
  double precision = 0;  ///< = positive predictive value (PPV)
  double npv = 0;
  double brier = 0;
  double roc_auc = 0;
  double average_precision = 0;
};

/// All metrics of one head at `threshold`. `prob` must be probabilities in [0, 1] (for the Brier score).
BinaryReport binary_report(const std::vector<int>& y, const std::vector<double>& prob,
                           double threshold = 0.5);

// ---- Bootstrap confidence intervals ------------------------------------------------------------------

/// A metric of (labels, scores), e.g. roc_auc, average_precision, or a lambda over confusion_at.
using Metric = std::function<double(const std::vector<int>& y, const std::vector<double>& score)>;

struct BootstrapOptions {
  int resamples = 1000;      ///< B, the number of resamples (>= 1)
  std::uint64_t seed = 0;    ///< seeds std::mt19937_64; the same seed gives the same intervals
  double confidence = 0.95;  ///< in (0, 1); 0.95 gives the 2.5th and 97.5th percentiles
};

/// A point estimate with its percentile-bootstrap interval.
struct Interval {
  double estimate = 0;  ///< the metric on the full sample (may be NaN)
  double lower = 0;     ///< percentile (1 - confidence) / 2 of the resampled values; NaN if used == 0
  double upper = 0;     ///< percentile (1 + confidence) / 2
  double confidence = 0.95;
  int resamples = 0;  ///< B
  int used = 0;       ///< resamples whose metric was not NaN (the others are skipped)
};

/// Percentile bootstrap: B times, draw n indices uniformly with replacement (std::mt19937_64 seeded with
/// options.seed, indices by rejection sampling so the stream does not depend on the standard library),
/// evaluate the metric on the resample, drop NaN values, and take the percentiles of the rest with
/// numpy's default (linear) interpolation. Throws on bad options; an empty input gives used = 0.
Interval bootstrap_ci(const std::vector<int>& y, const std::vector<double>& score, const Metric& metric,
                      const BootstrapOptions& options = {});

/// bootstrap_ci for several metrics over the same resamples (each resample is drawn once and every
/// metric is evaluated on it; equal to calling bootstrap_ci once per metric with the same seed).
std::vector<std::pair<std::string, Interval>> bootstrap_cis(
    const std::vector<int>& y, const std::vector<double>& score,
    const std::vector<std::pair<std::string, Metric>>& metrics, const BootstrapOptions& options = {});

/// The q-th percentile (q in [0, 100]) of `values` with linear interpolation between order statistics,
/// numpy.percentile's default. NaN for an empty input; values must not contain NaN.
double percentile(std::vector<double> values, double q);

// ---- JSON (NaN and infinities are written as null) ---------------------------------------------------

nlohmann::json to_json(const Confusion& c);
nlohmann::json to_json(const BinaryReport& r);
nlohmann::json to_json(const Interval& i);
nlohmann::json to_json(const std::vector<CalibrationBin>& bins);

}  // namespace ladnn::metrics
