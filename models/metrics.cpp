// models/metrics.cpp — binary-classification metrics; see metrics.h for the definitions and the NaN
// conventions. The ranking code follows scikit-learn's _ranking.py step by step (same sort, same
// threshold grouping, same formulas in the same order) so the results agree to rounding.
#include "models/metrics.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <sstream>
#include <stdexcept>

namespace ladnn::metrics {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

/// What the values beside the labels must be.
enum class Values { finite, probability };

std::string fmt(double v) {
  std::ostringstream os;
  os.precision(17);
  os << v;
  return os.str();
}

/// Checks y (0/1 labels) against `values` (same length; finite, or probabilities in [0, 1]). `fn` and
/// `what` name the function and the value vector in the error.
void check_inputs(const char* fn, const std::vector<int>& y, const std::vector<double>& values, Values need,
                  const char* what) {
  if (y.size() != values.size()) {
    throw std::invalid_argument(std::string(fn) + ": y has " + std::to_string(y.size()) + " labels but " +
                                what + " has " + std::to_string(values.size()) + " values");
  }
  for (std::size_t i = 0; i < y.size(); ++i) {
    if (y[i] != 0 && y[i] != 1) {
      throw std::invalid_argument(std::string(fn) + ": y[" + std::to_string(i) +
                                  "] = " + std::to_string(y[i]) + ", but labels must be 0 or 1");
    }
    const double v = values[i];
    if (!std::isfinite(v)) {
      throw std::invalid_argument(std::string(fn) + ": " + what + "[" + std::to_string(i) + "] is " + fmt(v) +
                                  ", but it must be finite");
    }
    if (need == Values::probability && (v < 0.0 || v > 1.0)) {
      throw std::invalid_argument(std::string(fn) + ": " + what + "[" + std::to_string(i) + "] = " + fmt(v) +
                                  " is outside [0, 1], but it must be a probability");
    }
  }
}

std::int64_t count_positives(const std::vector<int>& y) {
  return std::count(y.begin(), y.end(), 1);
}

/// sklearn's confusion_matrix_at_thresholds: sort by score, descending and stable; one entry per distinct
/// score, holding the false and true positives of the rule score >= that score.
struct ThresholdCounts {
  std::vector<double> fps, tps, thresholds;  // (m,) each, thresholds falling
};

ThresholdCounts counts_at_thresholds(const std::vector<int>& y, const std::vector<double>& score) {
  const std::size_t n = y.size();
  std::vector<std::size_t> order(n);
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return score[a] > score[b]; });
  ThresholdCounts c;
  double tp = 0.0;  // an integer count kept in double, as sklearn's cumulative_sum
  for (std::size_t i = 0; i < n; ++i) {
    tp += static_cast<double>(y[order[i]]);
    // The last sample of each group of equal scores closes a threshold.
    if (i + 1 == n || score[order[i]] != score[order[i + 1]]) {
      c.tps.push_back(tp);
      c.fps.push_back(1.0 + static_cast<double>(i) - tp);
      c.thresholds.push_back(score[order[i]]);
    }
  }
  return c;
}

/// Keeps the entries of `c` whose flag is set.
void keep_only(ThresholdCounts& c, const std::vector<bool>& keep) {
  std::size_t out = 0;
  for (std::size_t i = 0; i < keep.size(); ++i) {
    if (!keep[i]) continue;
    c.fps[out] = c.fps[i];
    c.tps[out] = c.tps[i];
    c.thresholds[out] = c.thresholds[i];
    ++out;
  }
  c.fps.resize(out);
  c.tps.resize(out);
  c.thresholds.resize(out);
}

void check_options(const BootstrapOptions& o) {
  if (o.resamples < 1) {
    throw std::invalid_argument("bootstrap_ci: resamples must be at least 1, got " +
                                std::to_string(o.resamples));
  }
  if (!(o.confidence > 0.0 && o.confidence < 1.0)) {
    throw std::invalid_argument("bootstrap_ci: confidence must lie in (0, 1), got " + fmt(o.confidence));
  }
}

/// A uniform index in [0, n), n >= 1, by rejection: of the 2^64 raw values, the lowest 2^64 mod n are
/// rejected, which leaves a multiple of n. Unlike std::uniform_int_distribution (whose algorithm each
/// standard library picks) the stream is the same everywhere.
std::uint64_t uniform_index(std::mt19937_64& gen, std::uint64_t n) {
  const std::uint64_t rejected = (std::uint64_t{0} - n) % n;  // 2^64 mod n
  std::uint64_t x = gen();
  while (x < rejected) x = gen();
  return x % n;
}

nlohmann::json number(double v) {
  return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr);
}

}  // namespace

// ---- Curves ------------------------------------------------------------------------------------------

RocCurve roc_curve(const std::vector<int>& y, const std::vector<double>& score, Intermediate intermediate) {
  check_inputs("roc_curve", y, score, Values::finite, "score");
  ThresholdCounts c = counts_at_thresholds(y, score);
  const std::size_t m = c.fps.size();
  if (intermediate == Intermediate::drop && m > 2) {
    // Keep the ends and every corner: a point where the second difference of fps or tps is non-zero.
    std::vector<bool> keep(m, true);
    for (std::size_t i = 1; i + 1 < m; ++i) {
      const double dfps = (c.fps[i + 1] - c.fps[i]) - (c.fps[i] - c.fps[i - 1]);
      const double dtps = (c.tps[i + 1] - c.tps[i]) - (c.tps[i] - c.tps[i - 1]);
      keep[i] = dfps != 0.0 || dtps != 0.0;
    }
    keep_only(c, keep);
  }
  // The extra point (0, 0) at threshold +inf, where nothing is predicted positive.
  c.fps.insert(c.fps.begin(), 0.0);
  c.tps.insert(c.tps.begin(), 0.0);
  c.thresholds.insert(c.thresholds.begin(), kInf);
  RocCurve r;
  r.thresholds = std::move(c.thresholds);
  const double negatives = c.fps.back(), positives = c.tps.back();
  r.fpr.resize(c.fps.size());
  r.tpr.resize(c.tps.size());
  for (std::size_t i = 0; i < c.fps.size(); ++i) {
    r.fpr[i] = negatives > 0 ? c.fps[i] / negatives : kNaN;
    r.tpr[i] = positives > 0 ? c.tps[i] / positives : kNaN;
  }
  return r;
}

PrCurve precision_recall_curve(const std::vector<int>& y, const std::vector<double>& score,
                               Intermediate intermediate) {
  check_inputs("precision_recall_curve", y, score, Values::finite, "score");
  ThresholdCounts c = counts_at_thresholds(y, score);
  const std::size_t m = c.fps.size();
  if (intermediate == Intermediate::drop && m > 2) {
    // Keep the ends and the first and last point of each run of equal tps (equal recall).
    std::vector<bool> keep(m, true);
    for (std::size_t i = 1; i + 1 < m; ++i) keep[i] = c.tps[i] != c.tps[i - 1] || c.tps[i + 1] != c.tps[i];
    keep_only(c, keep);
  }
  PrCurve r;
  const std::size_t k = c.tps.size();
  const double positives = k > 0 ? c.tps.back() : 0.0;
  // sklearn computes in falling-threshold order, then reverses; we fill the reversed arrays directly.
  r.precision.resize(k + 1);
  r.recall.resize(k + 1);
  r.thresholds.resize(k);
  for (std::size_t i = 0; i < k; ++i) {
    const std::size_t j = k - 1 - i;
    const double predicted = c.tps[i] + c.fps[i];
    r.precision[j] = predicted != 0.0 ? c.tps[i] / predicted : 0.0;
    r.recall[j] = positives == 0.0 ? 1.0 : c.tps[i] / positives;
    r.thresholds[j] = c.thresholds[i];
  }
  r.precision[k] = 1.0;
  r.recall[k] = 0.0;
  return r;
}

// ---- Ranking metrics ---------------------------------------------------------------------------------

double roc_auc(const std::vector<int>& y, const std::vector<double>& score) {
  check_inputs("roc_auc", y, score, Values::finite, "score");
  const std::int64_t positives = count_positives(y);
  if (positives == 0 || positives == static_cast<std::int64_t>(y.size())) return kNaN;
  const RocCurve r = roc_curve(y, score, Intermediate::drop);
  // sklearn.metrics.auc: numpy's trapezoid, sum of dx * (y_right + y_left) / 2. fpr never falls.
  double area = 0.0;
  for (std::size_t i = 1; i < r.fpr.size(); ++i) {
    area += (r.fpr[i] - r.fpr[i - 1]) * (r.tpr[i] + r.tpr[i - 1]) / 2.0;
  }
  return area;
}

double average_precision(const std::vector<int>& y, const std::vector<double>& score) {
  check_inputs("average_precision", y, score, Values::finite, "score");
  if (count_positives(y) == 0) return kNaN;
  const PrCurve pr = precision_recall_curve(y, score, Intermediate::keep);
  // sklearn: -sum(diff(recall) * precision[:-1]), clipped at 0 against a rounding -0.0.
  double sum = 0.0;
  for (std::size_t i = 0; i + 1 < pr.recall.size(); ++i)
    sum += (pr.recall[i + 1] - pr.recall[i]) * pr.precision[i];
  return std::max(0.0, -sum);
}

// ---- Thresholded metrics -----------------------------------------------------------------------------

Confusion confusion_at(const std::vector<int>& y, const std::vector<double>& prob, double threshold) {
  check_inputs("confusion_at", y, prob, Values::finite, "prob");
  if (std::isnan(threshold)) throw std::invalid_argument("confusion_at: threshold is nan");
  Confusion c;
  for (std::size_t i = 0; i < y.size(); ++i) {
    const bool predicted = prob[i] >= threshold;
    if (y[i] == 1) {
      (predicted ? c.tp : c.fn) += 1;
    } else {
      (predicted ? c.fp : c.tn) += 1;
    }
  }
  return c;
}

namespace {
/// num / den, NaN when den is 0.
double ratio(std::int64_t num, std::int64_t den) {
  return den == 0 ? kNaN : static_cast<double>(num) / static_cast<double>(den);
}
}  // namespace

double accuracy(const Confusion& c) {
  return ratio(c.tp + c.tn, c.n());
}
double recall(const Confusion& c) {
  return ratio(c.tp, c.tp + c.fn);
}
double specificity(const Confusion& c) {
  return ratio(c.tn, c.tn + c.fp);
}
double precision(const Confusion& c) {
  return ratio(c.tp, c.tp + c.fp);
}
double npv(const Confusion& c) {
  return ratio(c.tn, c.tn + c.fn);
}
double balanced_accuracy(const Confusion& c) {
  return (recall(c) + specificity(c)) / 2.0;
}
double f1(const Confusion& c) {
  return ratio(2 * c.tp, 2 * c.tp + c.fp + c.fn);
}

double brier(const std::vector<int>& y, const std::vector<double>& prob) {
  check_inputs("brier", y, prob, Values::probability, "prob");
  if (y.empty()) return kNaN;
  double sum = 0.0;
  for (std::size_t i = 0; i < y.size(); ++i) {
    const double d = prob[i] - static_cast<double>(y[i]);
    sum += d * d;
  }
  return sum / static_cast<double>(y.size());
}

// ---- Calibration -------------------------------------------------------------------------------------

std::vector<CalibrationBin> calibration_curve(const std::vector<int>& y, const std::vector<double>& prob,
                                              int n_bins) {
  if (n_bins < 1) {
    throw std::invalid_argument("calibration_curve: n_bins must be at least 1, got " +
                                std::to_string(n_bins));
  }
  check_inputs("calibration_curve", y, prob, Values::probability, "prob");
  // numpy.linspace(0, 1, n_bins + 1): edge i = i * (1 / n_bins), the last one exactly 1.
  const double step = 1.0 / n_bins;
  auto edge = [&](int i) { return i == n_bins ? 1.0 : static_cast<double>(i) * step; };
  std::vector<double> inner(static_cast<std::size_t>(n_bins - 1));
  for (int i = 1; i < n_bins; ++i) inner[static_cast<std::size_t>(i - 1)] = edge(i);
  std::vector<double> sum(static_cast<std::size_t>(n_bins), 0.0),
      positives(static_cast<std::size_t>(n_bins), 0.0);
  std::vector<std::int64_t> count(static_cast<std::size_t>(n_bins), 0);
  for (std::size_t i = 0; i < y.size(); ++i) {
    // numpy.searchsorted(inner, p, side="left"): the number of inner edges strictly below p.
    const auto b =
        static_cast<std::size_t>(std::lower_bound(inner.begin(), inner.end(), prob[i]) - inner.begin());
    sum[b] += prob[i];
    positives[b] += static_cast<double>(y[i]);
    count[b] += 1;
  }
  std::vector<CalibrationBin> bins;
  for (int b = 0; b < n_bins; ++b) {
    const auto k = static_cast<std::size_t>(b);
    if (count[k] == 0) continue;
    CalibrationBin bin;
    bin.index = b;
    bin.lower = edge(b);
    bin.upper = edge(b + 1);
    bin.mean_predicted = sum[k] / static_cast<double>(count[k]);
    bin.fraction_positive = positives[k] / static_cast<double>(count[k]);
    bin.count = count[k];
    bins.push_back(bin);
  }
  return bins;
}

// ---- The whole report --------------------------------------------------------------------------------

BinaryReport binary_report(const std::vector<int>& y, const std::vector<double>& prob, double threshold) {
  check_inputs("binary_report", y, prob, Values::probability, "prob");
  BinaryReport r;
  r.n = static_cast<std::int64_t>(y.size());
  r.positives = count_positives(y);
  r.negatives = r.n - r.positives;
  r.threshold = threshold;
  r.confusion = confusion_at(y, prob, threshold);
  const Confusion& c = r.confusion;
  r.accuracy = accuracy(c);
  r.balanced_accuracy = balanced_accuracy(c);
  r.f1 = f1(c);
  r.recall = recall(c);
  r.specificity = specificity(c);
  r.precision = precision(c);
  r.npv = npv(c);
  r.brier = brier(y, prob);
  r.roc_auc = roc_auc(y, prob);
  r.average_precision = average_precision(y, prob);
  return r;
}

// ---- Bootstrap confidence intervals ------------------------------------------------------------------

double percentile(std::vector<double> values, double q) {
  if (!(q >= 0.0 && q <= 100.0))
    throw std::invalid_argument("percentile: q must lie in [0, 100], got " + fmt(q));
  if (values.empty()) return kNaN;
  for (std::size_t i = 0; i < values.size(); ++i) {
    if (std::isnan(values[i])) {
      throw std::invalid_argument("percentile: values[" + std::to_string(i) + "] is nan");
    }
  }
  std::sort(values.begin(), values.end());
  // numpy's "linear" method: virtual index q/100 * (n - 1), then its _lerp, which interpolates from the
  // nearer end for accuracy.
  const double index = q / 100.0 * static_cast<double>(values.size() - 1);
  const double below = std::floor(index);
  const auto lo = static_cast<std::size_t>(below);
  const std::size_t hi = std::min(lo + 1, values.size() - 1);
  const double t = index - below;
  const double a = values[lo], b = values[hi];
  const double diff = b - a;
  return t >= 0.5 ? b - diff * (1.0 - t) : a + diff * t;
}

std::vector<std::pair<std::string, Interval>> bootstrap_cis(
    const std::vector<int>& y, const std::vector<double>& score,
    const std::vector<std::pair<std::string, Metric>>& metrics, const BootstrapOptions& options) {
  check_options(options);
  if (y.size() != score.size()) {
    throw std::invalid_argument("bootstrap_ci: y has " + std::to_string(y.size()) + " labels but score has " +
                                std::to_string(score.size()) + " values");
  }
  for (const auto& m : metrics) {
    if (!m.second) throw std::invalid_argument("bootstrap_ci: metric '" + m.first + "' is empty");
  }
  std::vector<std::pair<std::string, Interval>> out;
  out.reserve(metrics.size());
  for (const auto& m : metrics) {
    Interval iv;
    iv.estimate = m.second(y, score);
    iv.confidence = options.confidence;
    iv.resamples = options.resamples;
    out.emplace_back(m.first, iv);
  }
  std::vector<std::vector<double>> values(metrics.size());
  const std::size_t n = y.size();
  if (n > 0) {
    std::mt19937_64 gen(options.seed);
    std::vector<int> yb(n);
    std::vector<double> sb(n);
    for (auto& v : values) v.reserve(static_cast<std::size_t>(options.resamples));
    for (int b = 0; b < options.resamples; ++b) {
      for (std::size_t i = 0; i < n; ++i) {
        const auto j = static_cast<std::size_t>(uniform_index(gen, n));
        yb[i] = y[j];
        sb[i] = score[j];
      }
      for (std::size_t k = 0; k < metrics.size(); ++k) {
        const double v = metrics[k].second(yb, sb);
        if (!std::isnan(v)) values[k].push_back(v);
      }
    }
  }
  const double alpha = (1.0 - options.confidence) / 2.0;
  for (std::size_t k = 0; k < metrics.size(); ++k) {
    Interval& iv = out[k].second;
    iv.used = static_cast<int>(values[k].size());
    iv.lower = percentile(values[k], 100.0 * alpha);
    iv.upper = percentile(values[k], 100.0 * (1.0 - alpha));
  }
  return out;
}

Interval bootstrap_ci(const std::vector<int>& y, const std::vector<double>& score, const Metric& metric,
                      const BootstrapOptions& options) {
  return bootstrap_cis(y, score, {{"metric", metric}}, options).front().second;
}

// ---- JSON --------------------------------------------------------------------------------------------

nlohmann::json to_json(const Confusion& c) {
  return nlohmann::json{{"tp", c.tp}, {"fp", c.fp}, {"tn", c.tn}, {"fn", c.fn}};
}

nlohmann::json to_json(const BinaryReport& r) {
  return nlohmann::json{{"n", r.n},
                        {"positives", r.positives},
                        {"negatives", r.negatives},
                        {"threshold", number(r.threshold)},
                        {"confusion", to_json(r.confusion)},
                        {"accuracy", number(r.accuracy)},
                        {"balanced_accuracy", number(r.balanced_accuracy)},
                        {"f1", number(r.f1)},
                        {"recall", number(r.recall)},
                        {"specificity", number(r.specificity)},
                        {"precision", number(r.precision)},
                        {"npv", number(r.npv)},
                        {"brier", number(r.brier)},
                        {"roc_auc", number(r.roc_auc)},
                        {"average_precision", number(r.average_precision)}};
}

nlohmann::json to_json(const Interval& i) {
  return nlohmann::json{{"estimate", number(i.estimate)}, {"lower", number(i.lower)},
                        {"upper", number(i.upper)},       {"confidence", number(i.confidence)},
                        {"resamples", i.resamples},       {"used", i.used}};
}

nlohmann::json to_json(const std::vector<CalibrationBin>& bins) {
  nlohmann::json a = nlohmann::json::array();
  for (const auto& b : bins) {
    a.push_back(nlohmann::json{{"index", b.index},
                               {"lower", number(b.lower)},
                               {"upper", number(b.upper)},
                               {"mean_predicted", number(b.mean_predicted)},
                               {"fraction_positive", number(b.fraction_positive)},
                               {"count", b.count}});
  }
  return a;
}

}  // namespace ladnn::metrics
