// tests/metrics_test.cpp — the evaluation metrics (models/metrics.h).
//
// Three kinds of check:
//   - hand-made cases whose answers are worked out in the comments (ties, all-tied, perfect and inverted
//     rankings, single-class sets, thresholds equal to a score, calibration bin edges);
//   - independent oracles on random tied data: ROC-AUC against the Mann-Whitney pair count, AP against
//     its definition evaluated threshold by threshold in O(n^2);
//   - scikit-learn itself, through tests/golden/metrics_cases.json (tools/make_metrics_fixtures.py):
//     300 cases with ties, compared to 1e-12.
// Plus the bootstrap (determinism, NaN skipping, percentiles), JSON output, and every error path.
#include "models/metrics.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

namespace ladnn::metrics {
namespace {

using json = nlohmann::json;
constexpr double kInf = std::numeric_limits<double>::infinity();

/// Runs `f`, expects std::invalid_argument whose message contains every string of `parts`.
void expect_invalid(const std::function<void()>& f, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "no exception; expected one mentioning '" << parts.front() << "'";
  } catch (const std::invalid_argument& e) {
    const std::string msg = e.what();
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
  }
}

// ---- Hand-made cases ---------------------------------------------------------------------------------

// scikit-learn's documentation example. Sorted by falling score: 0.8 (y=1), 0.4 (0), 0.35 (1), 0.1 (0).
// ROC points (fpr, tpr): (0,0) (0,.5) (.5,.5) (.5,1) (1,1) → area 0.5·0.5 + 0.5·1 = 0.75.
// PR at each threshold: 0.8 → P 1, R .5; 0.4 → P .5, R .5; 0.35 → P 2/3, R 1; 0.1 → P .5, R 1.
// AP = .5·1 + 0·.5 + .5·(2/3) + 0·.5 = 5/6.
TEST(Metrics, DocumentationExample) {
  const std::vector<int> y{0, 0, 1, 1};
  const std::vector<double> s{0.1, 0.4, 0.35, 0.8};
  EXPECT_DOUBLE_EQ(roc_auc(y, s), 0.75);
  EXPECT_NEAR(average_precision(y, s), 5.0 / 6.0, 1e-15);

  const RocCurve r = roc_curve(y, s);
  EXPECT_EQ(r.fpr, (std::vector<double>{0, 0, 0.5, 0.5, 1}));
  EXPECT_EQ(r.tpr, (std::vector<double>{0, 0.5, 0.5, 1, 1}));
  EXPECT_EQ(r.thresholds, (std::vector<double>{kInf, 0.8, 0.4, 0.35, 0.1}));

  const PrCurve pr = precision_recall_curve(y, s);
  EXPECT_EQ(pr.thresholds, (std::vector<double>{0.1, 0.35, 0.4, 0.8}));
  EXPECT_EQ(pr.recall, (std::vector<double>{1, 1, 0.5, 0.5, 0}));
  ASSERT_EQ(pr.precision.size(), 5u);
  EXPECT_DOUBLE_EQ(pr.precision[0], 0.5);
  EXPECT_DOUBLE_EQ(pr.precision[1], 2.0 / 3.0);
  EXPECT_DOUBLE_EQ(pr.precision[2], 0.5);
  EXPECT_DOUBLE_EQ(pr.precision[3], 1.0);
  EXPECT_DOUBLE_EQ(pr.precision[4], 1.0);
}

// Ties across classes count half: y = [0, 1, 0, 1], s = [.2, .2, .7, .9]. Pairs (pos, neg): (.2,.2) ½,
// (.2,.7) 0, (.9,.2) 1, (.9,.7) 1 → AUC 2.5 / 4. PR: .9 → P 1, R .5; .7 → P .5, R .5; .2 → P .5, R 1.
// AP = .5·1 + 0 + .5·.5 = .75.
TEST(Metrics, TiesAcrossClassesCountHalf) {
  const std::vector<int> y{0, 1, 0, 1};
  const std::vector<double> s{0.2, 0.2, 0.7, 0.9};
  EXPECT_DOUBLE_EQ(roc_auc(y, s), 0.625);
  EXPECT_DOUBLE_EQ(average_precision(y, s), 0.75);
}

// All scores equal: the ROC curve is the diagonal (one threshold), AUC 1/2; every sample is predicted
// positive at the only threshold, so AP = precision there = prevalence.
TEST(Metrics, AllTiedScores) {
  const std::vector<int> y{1, 0, 0, 1, 0, 0, 0};
  const std::vector<double> s(y.size(), 0.3);
  EXPECT_DOUBLE_EQ(roc_auc(y, s), 0.5);
  EXPECT_DOUBLE_EQ(average_precision(y, s), 2.0 / 7.0);
  const RocCurve r = roc_curve(y, s);
  EXPECT_EQ(r.fpr, (std::vector<double>{0, 1}));
  EXPECT_EQ(r.tpr, (std::vector<double>{0, 1}));
  EXPECT_EQ(r.thresholds, (std::vector<double>{kInf, 0.3}));
}

// Perfect ranking: AUC 1, AP 1. Inverted, y = [1, 1, 0, 0], s = [.1, .2, .3, .4]: AUC 0; PR by falling
// threshold .4 → P 0, R 0; .3 → P 0, R 0; .2 → P 1/3, R 1/2; .1 → P 1/2, R 1; AP = ½·⅓ + ½·½ = 5/12.
TEST(Metrics, PerfectAndInvertedRankings) {
  EXPECT_DOUBLE_EQ(roc_auc({0, 0, 1, 1, 1}, {0.1, 0.2, 0.6, 0.7, 0.7}), 1.0);
  EXPECT_DOUBLE_EQ(average_precision({0, 0, 1, 1, 1}, {0.1, 0.2, 0.6, 0.7, 0.7}), 1.0);
  EXPECT_DOUBLE_EQ(roc_auc({1, 1, 0, 0}, {0.1, 0.2, 0.3, 0.4}), 0.0);
  EXPECT_NEAR(average_precision({1, 1, 0, 0}, {0.1, 0.2, 0.3, 0.4}), 5.0 / 12.0, 1e-15);
}

TEST(Metrics, SingleClassAndEmptyGiveNaN) {
  const std::vector<double> s{0.1, 0.5, 0.9};
  EXPECT_TRUE(std::isnan(roc_auc({0, 0, 0}, s)));
  EXPECT_TRUE(std::isnan(roc_auc({1, 1, 1}, s)));
  EXPECT_TRUE(std::isnan(roc_auc({}, {})));
  EXPECT_TRUE(std::isnan(average_precision({0, 0, 0}, s)));
  EXPECT_TRUE(std::isnan(average_precision({}, {})));
  // Only positives: every threshold has precision 1, so AP is 1 (defined).
  EXPECT_DOUBLE_EQ(average_precision({1, 1, 1}, s), 1.0);

  // The curves stay defined in shape; the undefined rate is NaN, as scikit-learn. (Of the computed points
  // fps = 1, 2, 3 the middle one is collinear and dropped.)
  const RocCurve r = roc_curve({0, 0, 0}, s);
  ASSERT_EQ(r.fpr.size(), 3u);
  EXPECT_EQ(r.fpr, (std::vector<double>{0, 1.0 / 3.0, 1}));
  EXPECT_EQ(r.thresholds, (std::vector<double>{kInf, 0.9, 0.1}));
  for (double v : r.tpr) EXPECT_TRUE(std::isnan(v));
  const RocCurve e = roc_curve({}, {});
  ASSERT_EQ(e.fpr.size(), 1u);
  EXPECT_TRUE(std::isnan(e.fpr[0]) && std::isnan(e.tpr[0]));
  EXPECT_EQ(e.thresholds[0], kInf);
  const PrCurve pe = precision_recall_curve({}, {});
  EXPECT_EQ(pe.precision, (std::vector<double>{1}));
  EXPECT_EQ(pe.recall, (std::vector<double>{0}));
  EXPECT_TRUE(pe.thresholds.empty());
  // Without positives, recall is 1 at every threshold (scikit-learn's convention for the curve).
  const PrCurve p0 = precision_recall_curve({0, 0, 0}, s);
  EXPECT_EQ(p0.recall, (std::vector<double>{1, 1, 1, 0}));
}

// drop_intermediate keeps the ends and every corner of the points computed from the data (the (0, 0)
// point is added afterwards). y = [1, 1, 0, 0, 0], s falling: the points (0,.5) (0,1) (⅓,1) (⅔,1) (1,1);
// (⅓,1) and (⅔,1) lie inside the straight segment from (0,1) to (1,1) and are dropped, the first point
// (0,.5) is kept as an end although it lies on the segment from (0,0) to (0,1) (as scikit-learn).
TEST(Metrics, RocDropIntermediate) {
  const std::vector<int> y{1, 1, 0, 0, 0};
  const std::vector<double> s{0.9, 0.8, 0.3, 0.2, 0.1};
  const RocCurve keep = roc_curve(y, s, Intermediate::keep);
  EXPECT_EQ(keep.fpr, (std::vector<double>{0, 0, 0, 1.0 / 3.0, 2.0 / 3.0, 1}));
  EXPECT_EQ(keep.tpr, (std::vector<double>{0, 0.5, 1, 1, 1, 1}));
  EXPECT_EQ(keep.thresholds, (std::vector<double>{kInf, 0.9, 0.8, 0.3, 0.2, 0.1}));
  const RocCurve drop = roc_curve(y, s, Intermediate::drop);
  EXPECT_EQ(drop.fpr, (std::vector<double>{0, 0, 0, 1}));
  EXPECT_EQ(drop.tpr, (std::vector<double>{0, 0.5, 1, 1}));
  EXPECT_EQ(drop.thresholds, (std::vector<double>{kInf, 0.9, 0.8, 0.1}));
  // Dropping changes the points, never the area.
  EXPECT_EQ(roc_auc(y, s), 1.0);
}

// ---- Independent oracles on random data with ties ----------------------------------------------------

/// AUC as the Mann-Whitney statistic: the fraction of (positive, negative) pairs ranked correctly, ties ½.
double auc_by_pairs(const std::vector<int>& y, const std::vector<double>& s) {
  double wins = 0, pairs = 0;
  for (std::size_t i = 0; i < y.size(); ++i) {
    for (std::size_t j = 0; j < y.size(); ++j) {
      if (y[i] != 1 || y[j] != 0) continue;
      pairs += 1;
      wins += s[i] > s[j] ? 1.0 : (s[i] == s[j] ? 0.5 : 0.0);
    }
  }
  return wins / pairs;
}

/// AP from its definition: over the distinct thresholds t, from the highest, (R(t) - R(prev)) · P(t),
/// with tp(t), fp(t) counted afresh for the rule s >= t.
double ap_by_definition(const std::vector<int>& y, const std::vector<double>& s) {
  std::vector<double> ts = s;
  std::sort(ts.begin(), ts.end(), std::greater<double>());
  ts.erase(std::unique(ts.begin(), ts.end()), ts.end());
  double positives = 0;
  for (int v : y) positives += v;
  double ap = 0, previous_recall = 0;
  for (double t : ts) {
    double tp = 0, fp = 0;
    for (std::size_t i = 0; i < y.size(); ++i) {
      if (s[i] >= t) (y[i] == 1 ? tp : fp) += 1;
    }
    const double r = tp / positives;
    ap += (r - previous_recall) * (tp / (tp + fp));
    previous_recall = r;
  }
  return ap;
}

TEST(Metrics, MatchesPairCountAndDefinitionOnRandomTiedData) {
  std::mt19937_64 gen(7);
  int checked = 0;
  for (int trial = 0; trial < 300; ++trial) {
    const int n = 2 + static_cast<int>(gen() % 80);
    const int levels = 1 + static_cast<int>(gen() % 12);  // few levels → many ties
    std::vector<int> y(static_cast<std::size_t>(n));
    std::vector<double> s(static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i) {
      y[i] = static_cast<int>(gen() % 3 == 0);
      s[i] = static_cast<double>(gen() % static_cast<std::uint64_t>(levels)) / levels +
             0.05 * y[i] * (gen() % 2);
    }
    const int positives = static_cast<int>(std::count(y.begin(), y.end(), 1));
    SCOPED_TRACE("trial " + std::to_string(trial) + ", n " + std::to_string(n));
    if (positives == 0 || positives == n) {
      EXPECT_TRUE(std::isnan(roc_auc(y, s)));
      continue;
    }
    EXPECT_NEAR(roc_auc(y, s), auc_by_pairs(y, s), 1e-12);
    EXPECT_NEAR(average_precision(y, s), ap_by_definition(y, s), 1e-12);
    // Both depend on the order of the scores only: a strictly increasing map changes nothing, bit for bit.
    std::vector<double> logits(s.size());
    for (std::size_t i = 0; i < s.size(); ++i) logits[i] = std::log(s[i] + 0.01) * 3.0 - 7.0;
    EXPECT_EQ(roc_auc(y, logits), roc_auc(y, s));
    EXPECT_EQ(average_precision(y, logits), average_precision(y, s));
    // Reversing the scores flips the AUC (ties stay ties).
    std::vector<double> negated(s.size());
    for (std::size_t i = 0; i < s.size(); ++i) negated[i] = -s[i];
    EXPECT_NEAR(roc_auc(y, negated), 1.0 - roc_auc(y, s), 1e-12);
    ++checked;
  }
  EXPECT_GT(checked, 250);
}

// ---- Thresholded metrics -----------------------------------------------------------------------------

// y = [1, 1, 1, 0, 0, 0, 0], p = [.9, .5, .2, .5, .4, .1, .6] at 0.5: p >= 0.5 is positive, so the ties
// at 0.5 are predicted positive: tp 2 (.9, .5), fn 1 (.2), fp 2 (.5, .6), tn 2 (.4, .1).
TEST(Metrics, ConfusionAtThresholdPredictsPositiveOnTies) {
  const std::vector<int> y{1, 1, 1, 0, 0, 0, 0};
  const std::vector<double> p{0.9, 0.5, 0.2, 0.5, 0.4, 0.1, 0.6};
  const Confusion c = confusion_at(y, p);
  EXPECT_EQ(c.tp, 2);
  EXPECT_EQ(c.fn, 1);
  EXPECT_EQ(c.fp, 2);
  EXPECT_EQ(c.tn, 2);
  EXPECT_EQ(c.n(), 7);
  EXPECT_DOUBLE_EQ(accuracy(c), 4.0 / 7.0);
  EXPECT_DOUBLE_EQ(recall(c), 2.0 / 3.0);
  EXPECT_DOUBLE_EQ(specificity(c), 0.5);
  EXPECT_DOUBLE_EQ(precision(c), 0.5);
  EXPECT_DOUBLE_EQ(npv(c), 2.0 / 3.0);
  EXPECT_DOUBLE_EQ(balanced_accuracy(c), (2.0 / 3.0 + 0.5) / 2.0);
  EXPECT_DOUBLE_EQ(f1(c), 4.0 / 7.0);  // 2·2 / (2·2 + 2 + 1)
  // A threshold just above the tie moves both 0.5s to negative.
  const Confusion above = confusion_at(y, p, std::nextafter(0.5, 1.0));
  EXPECT_EQ(above.tp, 1);
  EXPECT_EQ(above.fp, 1);
}

TEST(Metrics, ZeroDenominatorsGiveNaN) {
  const Confusion none;  // n = 0
  for (double v : {accuracy(none), recall(none), specificity(none), precision(none), npv(none),
                   balanced_accuracy(none), f1(none)}) {
    EXPECT_TRUE(std::isnan(v));
  }
  // Nothing predicted positive but positives exist: precision undefined, recall 0, F1 0 (not NaN).
  Confusion c;
  c.fn = 3;
  c.tn = 2;
  EXPECT_TRUE(std::isnan(precision(c)));
  EXPECT_EQ(recall(c), 0.0);
  EXPECT_EQ(f1(c), 0.0);
  EXPECT_DOUBLE_EQ(npv(c), 0.4);
  // Only negatives, all predicted negative: recall and F1 undefined, balanced accuracy too.
  Confusion neg;
  neg.tn = 4;
  EXPECT_TRUE(std::isnan(recall(neg)));
  EXPECT_TRUE(std::isnan(f1(neg)));
  EXPECT_TRUE(std::isnan(balanced_accuracy(neg)));
  EXPECT_EQ(specificity(neg), 1.0);
}

TEST(Metrics, BrierScore) {
  // ((0.25 - 0)^2 + (0.5 - 1)^2 + (1 - 1)^2) / 3 = (0.0625 + 0.25) / 3
  EXPECT_DOUBLE_EQ(brier({0, 1, 1}, {0.25, 0.5, 1.0}), 0.3125 / 3.0);
  EXPECT_TRUE(std::isnan(brier({}, {})));
}

// Edges for 10 bins are i · 0.1: 0.1 sits on the first inner edge and goes to bin 0 (searchsorted
// left); 3 · 0.1 = 0.30000000000000004 > 0.3, so 0.3 goes to bin 2; 0 goes to bin 0 and 1 to bin 9.
TEST(Metrics, CalibrationBinsAndEdges) {
  const std::vector<int> y{0, 1, 1, 0, 1, 1};
  const std::vector<double> p{0.0, 0.1, 0.3, 0.35, 1.0, 0.05};
  const auto bins = calibration_curve(y, p, 10);
  ASSERT_EQ(bins.size(), 4u);
  EXPECT_EQ(bins[0].index, 0);
  EXPECT_EQ(bins[0].count, 3);
  EXPECT_DOUBLE_EQ(bins[0].mean_predicted, (0.0 + 0.1 + 0.05) / 3.0);
  EXPECT_DOUBLE_EQ(bins[0].fraction_positive, 2.0 / 3.0);
  EXPECT_EQ(bins[0].lower, 0.0);
  EXPECT_EQ(bins[0].upper, 0.1);
  EXPECT_EQ(bins[1].index, 2);
  EXPECT_EQ(bins[1].count, 1);
  EXPECT_EQ(bins[1].fraction_positive, 1.0);
  EXPECT_EQ(bins[2].index, 3);
  EXPECT_EQ(bins[2].fraction_positive, 0.0);
  EXPECT_EQ(bins[3].index, 9);
  EXPECT_EQ(bins[3].upper, 1.0);
  EXPECT_EQ(bins[3].mean_predicted, 1.0);
  // One bin holds everything.
  const auto one = calibration_curve(y, p, 1);
  ASSERT_EQ(one.size(), 1u);
  EXPECT_EQ(one[0].count, 6);
  EXPECT_TRUE(calibration_curve({}, {}, 10).empty());
}

TEST(Metrics, BinaryReportCombinesTheParts) {
  const std::vector<int> y{1, 1, 1, 0, 0, 0, 0};
  const std::vector<double> p{0.9, 0.5, 0.2, 0.5, 0.4, 0.1, 0.6};
  const BinaryReport r = binary_report(y, p, 0.5);
  EXPECT_EQ(r.n, 7);
  EXPECT_EQ(r.positives, 3);
  EXPECT_EQ(r.negatives, 4);
  EXPECT_EQ(r.threshold, 0.5);
  EXPECT_EQ(r.confusion.tp, 2);
  EXPECT_EQ(r.accuracy, accuracy(r.confusion));
  EXPECT_EQ(r.f1, f1(r.confusion));
  EXPECT_EQ(r.recall, recall(r.confusion));
  EXPECT_EQ(r.specificity, specificity(r.confusion));
  EXPECT_EQ(r.precision, precision(r.confusion));
  EXPECT_EQ(r.npv, npv(r.confusion));
  EXPECT_EQ(r.balanced_accuracy, balanced_accuracy(r.confusion));
  EXPECT_EQ(r.brier, brier(y, p));
  EXPECT_EQ(r.roc_auc, roc_auc(y, p));
  EXPECT_EQ(r.average_precision, average_precision(y, p));
  const BinaryReport other = binary_report(y, p, 0.95);
  EXPECT_EQ(other.confusion.tp, 0);
  EXPECT_TRUE(std::isnan(other.precision));
  EXPECT_EQ(other.roc_auc, r.roc_auc);  // threshold-free
}

TEST(Metrics, ToJsonWritesNaNAsNull) {
  const BinaryReport r = binary_report({0, 0, 0}, {0.1, 0.7, 0.2});
  const json j = to_json(r);
  EXPECT_EQ(j.at("n"), 3);
  EXPECT_EQ(j.at("negatives"), 3);
  EXPECT_TRUE(j.at("roc_auc").is_null());
  EXPECT_TRUE(j.at("average_precision").is_null());
  EXPECT_TRUE(j.at("recall").is_null());
  EXPECT_EQ(j.at("f1"), 0.0);  // tp = fn = 0 but fp = 1: 2·0 / (0 + 1 + 0) = 0, defined
  EXPECT_EQ(j.at("precision"), 0.0);
  EXPECT_EQ(j.at("confusion").at("fp"), 1);
  EXPECT_EQ(j.at("confusion").at("tn"), 2);
  EXPECT_DOUBLE_EQ(j.at("specificity").get<double>(), 2.0 / 3.0);
  EXPECT_DOUBLE_EQ(j.at("brier").get<double>(), (0.01 + 0.49 + 0.04) / 3.0);
  EXPECT_EQ(j.at("threshold"), 0.5);
  const std::string text = j.dump();
  EXPECT_EQ(text.find("nan"), std::string::npos) << text;
  EXPECT_EQ(text.find("NaN"), std::string::npos) << text;

  Interval iv;
  iv.estimate = 0.8;
  iv.lower = std::numeric_limits<double>::quiet_NaN();
  iv.upper = kInf;
  iv.resamples = 10;
  iv.used = 0;
  const json ji = to_json(iv);
  EXPECT_EQ(ji.at("estimate"), 0.8);
  EXPECT_TRUE(ji.at("lower").is_null());
  EXPECT_TRUE(ji.at("upper").is_null());
  EXPECT_EQ(ji.at("used"), 0);

  const json jb = to_json(calibration_curve({0, 1}, {0.15, 0.95}, 10));
  ASSERT_EQ(jb.size(), 2u);
  EXPECT_EQ(jb[0].at("index"), 1);
  EXPECT_EQ(jb[1].at("count"), 1);
  EXPECT_EQ(jb[1].at("fraction_positive"), 1.0);
}

// ---- scikit-learn fixtures ---------------------------------------------------------------------------

/// Compares to 1e-12: scikit-learn sums with numpy's pairwise summation and we sum left to right, which
/// for at most 61 terms of size <= 1 differ by a few ulp of 1 (~1e-15); 1e-12 leaves room for that only.
void expect_match(double got, const json& want, const std::string& what) {
  if (want.is_null()) {
    EXPECT_TRUE(std::isnan(got)) << what << ": got " << got << ", scikit-learn (with ladnn's convention) NaN";
  } else {
    EXPECT_NEAR(got, want.get<double>(), 1e-12) << what;
  }
}

void expect_match(const std::vector<double>& got, const json& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (std::size_t i = 0; i < got.size(); ++i)
    expect_match(got[i], want[i], what + "[" + std::to_string(i) + "]");
}

TEST(Metrics, MatchesScikitLearnFixtures) {
  const std::string path = std::string(LADNN_GOLDEN_DIR) + "/metrics_cases.json";
  std::ifstream in(path);
  ASSERT_TRUE(in) << "cannot open " << path << " (written by tools/make_metrics_fixtures.py)";
  const json doc = json::parse(in);
  const json& cases = doc.at("cases");
  ASSERT_GE(cases.size(), 250u);
  int with_calibration = 0, with_curves = 0, with_roc_keep = 0, single_class = 0, threshold_ties = 0;
  for (const json& c : cases) {
    const std::string name = c.at("name");
    SCOPED_TRACE(name);
    const auto y = c.at("y").get<std::vector<int>>();
    const auto s = c.at("s").get<std::vector<double>>();
    const double threshold = c.at("threshold");
    const json& e = c.at("expected");

    const BinaryReport r = binary_report(y, s, threshold);
    const json& cm = e.at("confusion");
    EXPECT_EQ(r.confusion.tp, cm.at("tp").get<std::int64_t>());
    EXPECT_EQ(r.confusion.fp, cm.at("fp").get<std::int64_t>());
    EXPECT_EQ(r.confusion.tn, cm.at("tn").get<std::int64_t>());
    EXPECT_EQ(r.confusion.fn, cm.at("fn").get<std::int64_t>());
    expect_match(r.roc_auc, e.at("roc_auc"), "roc_auc");
    expect_match(r.average_precision, e.at("average_precision"), "average_precision");
    expect_match(r.accuracy, e.at("accuracy"), "accuracy");
    expect_match(r.balanced_accuracy, e.at("balanced_accuracy"), "balanced_accuracy");
    expect_match(r.f1, e.at("f1"), "f1");
    expect_match(r.precision, e.at("precision"), "precision");
    expect_match(r.recall, e.at("recall"), "recall");
    expect_match(r.specificity, e.at("specificity"), "specificity");
    expect_match(r.npv, e.at("npv"), "npv");
    expect_match(r.brier, e.at("brier"), "brier");
    single_class += r.positives == 0 || r.negatives == 0;
    threshold_ties += std::count(s.begin(), s.end(), threshold) > 0;

    if (e.contains("calibration")) {
      ++with_calibration;
      const json& cal = e.at("calibration");
      const auto bins = calibration_curve(y, s, cal.at("n_bins").get<int>());
      ASSERT_EQ(bins.size(), cal.at("index").size());
      for (std::size_t b = 0; b < bins.size(); ++b) {
        EXPECT_EQ(bins[b].index, cal.at("index")[b].get<int>());
        EXPECT_EQ(bins[b].count, cal.at("count")[b].get<std::int64_t>());
        expect_match(bins[b].fraction_positive, cal.at("fraction_positive")[b], "fraction_positive");
        expect_match(bins[b].mean_predicted, cal.at("mean_predicted")[b], "mean_predicted");
      }
    }
    if (e.contains("roc_drop")) {
      ++with_curves;
      for (const auto& [key, mode] : {std::pair<const char*, Intermediate>{"roc_drop", Intermediate::drop},
                                      std::pair<const char*, Intermediate>{"roc_keep", Intermediate::keep}}) {
        if (!e.contains(key)) continue;
        with_roc_keep += mode == Intermediate::keep;
        const RocCurve roc = roc_curve(y, s, mode);
        const json& w = e.at(key);
        expect_match(roc.fpr, w.at("fpr"), std::string(key) + ".fpr");
        expect_match(roc.tpr, w.at("tpr"), std::string(key) + ".tpr");
        ASSERT_EQ(roc.thresholds.size(), w.at("thresholds").size() + 1) << key;
        EXPECT_EQ(roc.thresholds[0], kInf);
        expect_match(std::vector<double>(roc.thresholds.begin() + 1, roc.thresholds.end()),
                     w.at("thresholds"), std::string(key) + ".thresholds");
      }
      const PrCurve pr = precision_recall_curve(y, s);
      const json& w = e.at("pr");
      expect_match(pr.precision, w.at("precision"), "pr.precision");
      expect_match(pr.recall, w.at("recall"), "pr.recall");
      expect_match(pr.thresholds, w.at("thresholds"), "pr.thresholds");
    }
  }
  // The file must exercise what it claims to (a truncated or regenerated-wrong fixture fails here).
  EXPECT_GE(with_calibration, 100);
  EXPECT_GE(with_curves, 30);
  EXPECT_GE(with_roc_keep, 10);
  EXPECT_GE(single_class, 10);
  EXPECT_GE(threshold_ties, 30);
}

// ---- Bootstrap ---------------------------------------------------------------------------------------

TEST(Metrics, PercentileMatchesNumpyLinear) {
  // numpy.percentile([1, 2, 3, 4], 25) = 1.75; ([10, 7, 4, 3, 2, 1], 50) = 3.5; 97.5 of 0..10 = 9.75.
  EXPECT_DOUBLE_EQ(percentile({1, 2, 3, 4}, 25), 1.75);
  EXPECT_DOUBLE_EQ(percentile({10, 7, 4, 3, 2, 1}, 50), 3.5);
  EXPECT_DOUBLE_EQ(percentile({0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, 97.5), 9.75);
  EXPECT_EQ(percentile({3, 1, 2}, 0), 1);
  EXPECT_EQ(percentile({3, 1, 2}, 100), 3);
  EXPECT_EQ(percentile({5}, 40), 5);
  EXPECT_TRUE(std::isnan(percentile({}, 50)));
  expect_invalid([] { percentile({1, 2}, 101); }, {"percentile", "101"});
  expect_invalid([] { percentile({1, std::nan("")}, 50); }, {"percentile", "values[1]"});
}

TEST(Metrics, BootstrapIsSeededAndDeterministic) {
  std::mt19937_64 gen(3);
  std::vector<int> y(60);
  std::vector<double> s(60);
  for (std::size_t i = 0; i < y.size(); ++i) {
    y[i] = static_cast<int>(gen() % 2);
    s[i] = std::round((0.3 * y[i] + 0.7 * static_cast<double>(gen() % 1000) / 1000.0) * 20) / 20;  // ties
  }
  BootstrapOptions o;
  o.resamples = 200;
  o.seed = 11;
  const Interval a = bootstrap_ci(y, s, roc_auc, o);
  const Interval b = bootstrap_ci(y, s, roc_auc, o);
  EXPECT_EQ(a.lower, b.lower);
  EXPECT_EQ(a.upper, b.upper);
  EXPECT_EQ(a.estimate, roc_auc(y, s));
  EXPECT_EQ(a.resamples, 200);
  EXPECT_EQ(a.used, 200);  // 60 samples: a single-class resample has probability ~2^-59
  EXPECT_LE(a.lower, a.estimate);
  EXPECT_GE(a.upper, a.estimate);
  EXPECT_LT(a.lower, a.upper);
  o.seed = 12;
  const Interval c = bootstrap_ci(y, s, roc_auc, o);
  EXPECT_TRUE(c.lower != a.lower || c.upper != a.upper);

  // Several metrics over the same resamples equal one call each with the same seed.
  o.seed = 11;
  const auto both = bootstrap_cis(y, s, {{"auc", roc_auc}, {"ap", average_precision}}, o);
  ASSERT_EQ(both.size(), 2u);
  EXPECT_EQ(both[0].first, "auc");
  EXPECT_EQ(both[0].second.lower, a.lower);
  EXPECT_EQ(both[0].second.upper, a.upper);
  const Interval ap = bootstrap_ci(y, s, average_precision, o);
  EXPECT_EQ(both[1].second.lower, ap.lower);
  EXPECT_EQ(both[1].second.upper, ap.upper);
}

// The bootstrap distribution of a proportion p̂ from n samples has standard deviation sqrt(p(1-p)/n):
// for 50 ones in 200, 0.0306, so the 95% interval is about 0.25 ± 1.96 · 0.0306 = [0.190, 0.310]. With
// B = 2000 the percentile estimates scatter by ~0.004 (and p̂* is on a 1/200 grid), so 0.015 is a margin
// that a biased or broken resampler (e.g. one drawing from a subset of the indices) does not meet.
TEST(Metrics, BootstrapIntervalOfAProportionHasTheRightWidth) {
  std::vector<int> y(200, 0);
  for (std::size_t i = 0; i < 50; ++i) y[i * 4] = 1;
  std::vector<double> s(200, 0.5);
  const Metric mean_y = [](const std::vector<int>& yy, const std::vector<double>&) {
    double sum = 0;
    for (int v : yy) sum += v;
    return sum / static_cast<double>(yy.size());
  };
  BootstrapOptions o;
  o.resamples = 2000;
  o.seed = 5;
  const Interval iv = bootstrap_ci(y, s, mean_y, o);
  const double sd = std::sqrt(0.25 * 0.75 / 200.0);
  EXPECT_NEAR(iv.lower, 0.25 - 1.959964 * sd, 0.015);
  EXPECT_NEAR(iv.upper, 0.25 + 1.959964 * sd, 0.015);
  EXPECT_EQ(iv.used, 2000);
}

TEST(Metrics, BootstrapSkipsNaNResamples) {
  // One positive in five: a resample misses it with probability (4/5)^5 = 0.33, and then AUC is NaN.
  const std::vector<int> y{1, 0, 0, 0, 0};
  const std::vector<double> s{0.9, 0.1, 0.2, 0.3, 0.4};
  BootstrapOptions o;
  o.resamples = 1000;
  const Interval iv = bootstrap_ci(y, s, roc_auc, o);
  EXPECT_GT(iv.used, 550);
  EXPECT_LT(iv.used, 790);
  EXPECT_EQ(iv.upper, 1.0);
  EXPECT_FALSE(std::isnan(iv.lower));

  const Metric never = [](const std::vector<int>&, const std::vector<double>&) {
    return std::numeric_limits<double>::quiet_NaN();
  };
  const Interval none = bootstrap_ci(y, s, never, o);
  EXPECT_EQ(none.used, 0);
  EXPECT_TRUE(std::isnan(none.lower) && std::isnan(none.upper) && std::isnan(none.estimate));

  const Interval empty = bootstrap_ci({}, {}, roc_auc, o);
  EXPECT_EQ(empty.used, 0);
  EXPECT_TRUE(std::isnan(empty.estimate));

  const Metric constant = [](const std::vector<int>&, const std::vector<double>&) { return 0.25; };
  const Interval flat = bootstrap_ci(y, s, constant, o);
  EXPECT_EQ(flat.lower, 0.25);
  EXPECT_EQ(flat.upper, 0.25);
}

// ---- Errors ------------------------------------------------------------------------------------------

TEST(Metrics, ErrorsNameTheFunctionAndTheElement) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  expect_invalid([] { roc_auc({0, 1}, {0.5}); }, {"roc_auc", "2 labels", "1 values"});
  expect_invalid([] { average_precision({0, 2}, {0.5, 0.6}); }, {"average_precision", "y[1] = 2", "0 or 1"});
  expect_invalid([&] { roc_curve({0, 1}, {0.5, nan}); }, {"roc_curve", "score[1]", "finite"});
  expect_invalid([] { precision_recall_curve({0, 1}, {kInf, 0.1}); }, {"precision_recall_curve", "score[0]"});
  expect_invalid([] { confusion_at({0, -1}, {0.5, 0.5}); }, {"confusion_at", "y[1] = -1"});
  expect_invalid([&] { confusion_at({0, 1}, {0.5, 0.5}, nan); }, {"confusion_at", "threshold"});
  expect_invalid([] { brier({0, 1}, {0.5, 1.5}); }, {"brier", "prob[1] = 1.5", "[0, 1]"});
  expect_invalid([] { calibration_curve({0, 1}, {-0.1, 0.5}); }, {"calibration_curve", "prob[0] = -0.1"});
  expect_invalid([] { calibration_curve({0, 1}, {0.1, 0.5}, 0); }, {"calibration_curve", "n_bins", "0"});
  expect_invalid([] { binary_report({0, 1}, {0.1, 2.0}); }, {"binary_report", "prob[1] = 2"});
  BootstrapOptions o;
  o.resamples = 0;
  expect_invalid([&] { bootstrap_ci({0, 1}, {0.1, 0.2}, roc_auc, o); }, {"bootstrap_ci", "resamples", "0"});
  o.resamples = 10;
  o.confidence = 1.0;
  expect_invalid([&] { bootstrap_ci({0, 1}, {0.1, 0.2}, roc_auc, o); }, {"bootstrap_ci", "confidence"});
  o.confidence = 0.9;
  expect_invalid([&] { bootstrap_ci({0, 1}, {0.1}, roc_auc, o); }, {"bootstrap_ci", "2 labels", "1 values"});
  expect_invalid(
      [&] {
        bootstrap_cis({0, 1}, {0.1, 0.2}, {{"auc", Metric{}}}, o);
      },
      {"bootstrap_ci", "'auc'"});
  // Logits are fine for the ranking metrics and for confusion_at (the rule is the same).
  EXPECT_DOUBLE_EQ(roc_auc({0, 1}, {-3.0, 2.0}), 1.0);
  EXPECT_EQ(confusion_at({0, 1}, {-3.0, 2.0}, 0.0).tp, 1);
}

}  // namespace
}  // namespace ladnn::metrics
