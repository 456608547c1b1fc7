// tests/evaluation_test.cpp — `ladnn eval`'s report (models/evaluation.h) on hand-made predictions:
// every number against a value computed by hand, the lesion heads scored only over images with lesion
// labels, "n/a"/null for a lesion without positives, the bootstrap, the JSON and the error sentences.
#include "models/evaluation.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <random>
#include <sstream>

using namespace ladnn;

namespace {

/// Five images: two non-COVID without lesion labels (their lesion probabilities are 0.9, so including
/// them would change every lesion AUC), three COVID with lesion labels.
///   y    = [0,   0,   1,    1,   1  ]
///   prob = [0.1, 0.4, 0.35, 0.8, 0.9]
/// At threshold 0.5 the predictions are [0,0,0,1,1]: tp 2, fn 1, tn 2, fp 0.
Predictions hand_made() {
  Predictions p;
  p.names = {"n0.png", "n1.png", "c2.png", "c3.png", "c4.png"};
  p.covid = {0, 0, 1, 1, 1};
  p.covid_prob = {0.1, 0.4, 0.35, 0.8, 0.9};
  p.has_lesion_labels = {false, false, true, true, true};
  p.lesions = {{0, 0, 0, 0, 0}, {0, 0, 0, 0, 0}, {1, 0, 1, 0, 0}, {0, 1, 1, 1, 0}, {1, 0, 0, 1, 0}};
  p.lesion_prob = {{0.9, 0.9, 0.9, 0.9, 0.9},
                   {0.9, 0.9, 0.9, 0.9, 0.9},
                   {0.7, 0.6, 0.5, 0.3, 0.1},
                   {0.2, 0.3, 0.5, 0.2, 0.2},
                   {0.4, 0.5, 0.5, 0.8, 0.3}};
  p.loss = 0.625;
  return p;
}

/// `n` images with noisy but informative probabilities (seeded), a third of the COVID ones with lesions.
Predictions random_predictions(int n, unsigned seed) {
  std::mt19937 g(seed);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  Predictions p;
  for (int i = 0; i < n; ++i) {
    const int y = u(g) < 0.5 ? 1 : 0;
    p.names.push_back("img" + std::to_string(i) + ".png");
    p.covid.push_back(y);
    p.covid_prob.push_back(std::clamp(0.5 + (y ? 0.2 : -0.2) + 0.35 * (u(g) - 0.5) * 2, 0.0, 1.0));
    const bool labelled = y == 1 && u(g) < 0.66;
    p.has_lesion_labels.push_back(labelled);
    std::array<int, 5> l{};
    std::array<double, 5> lp{};
    for (int k = 0; k < 5; ++k) {
      l[k] = labelled && k < 4 && u(g) < 0.5 ? 1 : 0;
      lp[k] = u(g);
    }
    p.lesions.push_back(l);
    p.lesion_prob.push_back(lp);
  }
  p.loss = 0.5;
  return p;
}

/// The line of `text` that starts (after indentation) with `label`, or "" when there is none.
std::string line_of(const std::string& text, const std::string& label) {
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    const std::string line = text.substr(start, end - start);
    const size_t first = line.find_first_not_of(' ');
    if (first != std::string::npos && line.compare(first, label.size(), label) == 0) return line;
    start = end + 1;
  }
  return "";
}

EvaluationOptions no_bootstrap(double threshold = 0.5) {
  EvaluationOptions o;
  o.threshold = threshold;
  o.bootstrap.resamples = 0;
  return o;
}

}  // namespace

TEST(EvaluationTest, CovidMetricsMatchHandComputedValues) {
  const Evaluation e = evaluate(hand_made(), no_bootstrap());
  const metrics::BinaryReport& r = e.covid;
  EXPECT_EQ(r.n, 5);
  EXPECT_EQ(r.positives, 3);
  EXPECT_EQ(r.negatives, 2);
  EXPECT_EQ(r.confusion.tp, 2);
  EXPECT_EQ(r.confusion.fn, 1);
  EXPECT_EQ(r.confusion.tn, 2);
  EXPECT_EQ(r.confusion.fp, 0);
  EXPECT_DOUBLE_EQ(r.accuracy, 4.0 / 5.0);
  EXPECT_DOUBLE_EQ(r.recall, 2.0 / 3.0);
  EXPECT_DOUBLE_EQ(r.specificity, 1.0);
  EXPECT_DOUBLE_EQ(r.precision, 1.0);
  EXPECT_DOUBLE_EQ(r.npv, 2.0 / 3.0);
  EXPECT_DOUBLE_EQ(r.balanced_accuracy, (2.0 / 3.0 + 1.0) / 2.0);
  EXPECT_DOUBLE_EQ(r.f1, 4.0 / 5.0);  // 2tp / (2tp + fp + fn)
  // AUC: of the 6 (positive, negative) pairs only (0.35, 0.4) is ranked wrong.
  EXPECT_DOUBLE_EQ(r.roc_auc, 5.0 / 6.0);
  // AP: recall steps of 1/3 at precisions 1 (0.9), 1 (0.8), 3/4 (0.35).
  EXPECT_NEAR(r.average_precision, 1.0 / 3 + 1.0 / 3 + 0.75 / 3, 1e-12);
  EXPECT_NEAR(r.brier, (0.01 + 0.16 + 0.4225 + 0.04 + 0.01) / 5, 1e-12);
  EXPECT_DOUBLE_EQ(e.loss, 0.625);
  EXPECT_TRUE(e.intervals.empty());
  int64_t binned = 0;
  for (const auto& b : e.calibration) binned += b.count;
  EXPECT_EQ(binned, 5);
}

TEST(EvaluationTest, ThresholdIsInclusive) {
  // At 0.35 the image with prob 0.35 is predicted COVID: [0,1,1,1,1].
  const Evaluation e = evaluate(hand_made(), no_bootstrap(0.35));
  EXPECT_EQ(e.covid.confusion.tp, 3);
  EXPECT_EQ(e.covid.confusion.fp, 1);
  EXPECT_EQ(e.covid.confusion.tn, 1);
  EXPECT_EQ(e.covid.confusion.fn, 0);
  EXPECT_DOUBLE_EQ(e.covid.specificity, 0.5);
  EXPECT_DOUBLE_EQ(e.covid.roc_auc, 5.0 / 6.0);  // threshold-free
}

TEST(EvaluationTest, LesionHeadsUseOnlyImagesWithLesionLabels) {
  const Predictions p = hand_made();
  const std::array<HeadData, 5> heads = lesion_scores(p);
  EXPECT_EQ(heads[0].name, "GGO");
  EXPECT_EQ(heads[4].name, "InSepThi");
  for (const HeadData& h : heads) {
    ASSERT_EQ(h.y.size(), 3u) << h.name;
    ASSERT_EQ(h.prob.size(), 3u) << h.name;
  }
  EXPECT_EQ(heads[0].y, (std::vector<int>{1, 0, 1}));
  EXPECT_EQ(heads[0].prob, (std::vector<double>{0.7, 0.2, 0.4}));

  const Evaluation e = evaluate(p, no_bootstrap());
  EXPECT_EQ(e.lesion_images, 3);
  // GGO: y [1,0,1], prob [0.7,0.2,0.4]: both positives above the negative. With the two unlabelled
  // images (prob 0.9, label 0) it would be 2/6.
  EXPECT_DOUBLE_EQ(e.lesions[0].roc_auc, 1.0);
  EXPECT_DOUBLE_EQ(e.lesions[0].average_precision, 1.0);
  EXPECT_EQ(e.lesions[0].positives, 2);
  EXPECT_EQ(e.lesions[0].negatives, 1);
  // Csld: y [0,1,0], prob [0.6,0.3,0.5]: the positive ranks last.
  EXPECT_DOUBLE_EQ(e.lesions[1].roc_auc, 0.0);
  EXPECT_NEAR(e.lesions[1].average_precision, 1.0 / 3.0, 1e-12);
  // CrPa: y [1,1,0], all prob 0.5: one tied threshold.
  EXPECT_DOUBLE_EQ(e.lesions[2].roc_auc, 0.5);
  EXPECT_NEAR(e.lesions[2].average_precision, 2.0 / 3.0, 1e-12);
  // AirBr: y [0,1,1], prob [0.3,0.2,0.8]: AP = 1/2 * 1 + 1/2 * 2/3.
  EXPECT_DOUBLE_EQ(e.lesions[3].roc_auc, 0.5);
  EXPECT_NEAR(e.lesions[3].average_precision, 0.5 + 1.0 / 3.0, 1e-12);
  // InSepThi: no positive among the labelled images -> undefined.
  EXPECT_EQ(e.lesions[4].positives, 0);
  EXPECT_EQ(e.lesions[4].negatives, 3);
  EXPECT_TRUE(std::isnan(e.lesions[4].roc_auc));
  EXPECT_TRUE(std::isnan(e.lesions[4].average_precision));
}

TEST(EvaluationTest, NoImageWithLesionLabelsLeavesEveryLesionUndefined) {
  Predictions p = hand_made();
  p.has_lesion_labels.assign(5, false);
  const Evaluation e = evaluate(p, no_bootstrap());
  EXPECT_EQ(e.lesion_images, 0);
  for (const LesionEvaluation& l : e.lesions) {
    EXPECT_EQ(l.n, 0) << l.name;
    EXPECT_TRUE(std::isnan(l.roc_auc)) << l.name;
    EXPECT_TRUE(std::isnan(l.average_precision)) << l.name;
  }
}

TEST(EvaluationTest, BootstrapIntervalsContainTheEstimatesAndFollowTheSeed) {
  const Predictions p = random_predictions(300, 7);
  EvaluationOptions o;
  o.bootstrap.resamples = 400;
  o.bootstrap.seed = 3;
  const Evaluation e = evaluate(p, o);
  ASSERT_EQ(e.intervals.size(), headline_metric_names().size());
  const std::map<std::string, double> point = {{"accuracy", e.covid.accuracy},
                                               {"roc_auc", e.covid.roc_auc},
                                               {"average_precision", e.covid.average_precision},
                                               {"f1", e.covid.f1},
                                               {"recall", e.covid.recall},
                                               {"specificity", e.covid.specificity},
                                               {"balanced_accuracy", e.covid.balanced_accuracy}};
  for (size_t k = 0; k < e.intervals.size(); ++k) {
    const auto& [name, iv] = e.intervals[k];
    EXPECT_EQ(name, headline_metric_names()[k]);
    EXPECT_DOUBLE_EQ(iv.estimate, point.at(name)) << name;
    EXPECT_EQ(iv.resamples, 400) << name;
    EXPECT_EQ(iv.used, 400) << name;
    EXPECT_LT(iv.lower, iv.estimate) << name;
    EXPECT_GT(iv.upper, iv.estimate) << name;
    EXPECT_LT(iv.upper - iv.lower, 0.25) << name;  // 300 samples: a few hundredths either side
  }
  // Same seed, same intervals; another seed, other intervals.
  const Evaluation again = evaluate(p, o);
  o.bootstrap.seed = 4;
  const Evaluation other = evaluate(p, o);
  for (size_t k = 0; k < e.intervals.size(); ++k) {
    EXPECT_EQ(e.intervals[k].second.lower, again.intervals[k].second.lower);
    EXPECT_EQ(e.intervals[k].second.upper, again.intervals[k].second.upper);
  }
  EXPECT_NE(e.intervals[1].second.lower, other.intervals[1].second.lower);
  // Equal to the metrics library's own bootstrap of that metric with the same seed.
  metrics::BootstrapOptions bo;
  bo.resamples = 400;
  bo.seed = 3;
  const metrics::Interval auc = metrics::bootstrap_ci(
      p.covid, p.covid_prob,
      [](const std::vector<int>& y, const std::vector<double>& s) { return metrics::roc_auc(y, s); }, bo);
  EXPECT_EQ(auc.lower, e.intervals[1].second.lower);
  EXPECT_EQ(auc.upper, e.intervals[1].second.upper);
}

TEST(EvaluationTest, JsonHoldsEveryNumberAndNullForUndefined) {
  Predictions p = hand_made();
  p.loss = NAN;
  EvaluationOptions o;
  o.bootstrap.resamples = 50;
  o.bootstrap.seed = 1;
  const nlohmann::json j = evaluation_report(p, o);
  EXPECT_EQ(j["format"], "ladnn-eval-1");
  EXPECT_EQ(j["n"], 5);
  EXPECT_EQ(j["positives"], 3);
  EXPECT_EQ(j["negatives"], 2);
  EXPECT_DOUBLE_EQ(j["threshold"].get<double>(), 0.5);
  EXPECT_TRUE(j["loss"].is_null());
  EXPECT_DOUBLE_EQ(j["covid"]["roc_auc"].get<double>(), 5.0 / 6.0);
  EXPECT_DOUBLE_EQ(j["covid"]["balanced_accuracy"].get<double>(), 5.0 / 6.0);
  EXPECT_EQ(j["covid"]["confusion"]["tp"], 2);
  EXPECT_EQ(j["covid"]["confusion"]["fn"], 1);
  EXPECT_NE(j["note"].get<std::string>().find("balanced"), std::string::npos);
  EXPECT_EQ(j["bootstrap"]["resamples"], 50);
  for (const std::string& name : headline_metric_names())
    EXPECT_TRUE(j["bootstrap"]["intervals"].contains(name)) << name;
  // ROC thresholds start at +infinity: null in JSON.
  EXPECT_TRUE(j["curves"]["roc"]["thresholds"][0].is_null());
  EXPECT_EQ(j["curves"]["roc"]["fpr"].size(), j["curves"]["roc"]["tpr"].size());
  EXPECT_EQ(j["lesion_images"], 3);
  EXPECT_DOUBLE_EQ(j["lesions"]["GGO"]["roc_auc"].get<double>(), 1.0);
  EXPECT_TRUE(j["lesions"]["InSepThi"]["roc_auc"].is_null());
  EXPECT_TRUE(j["lesions"]["InSepThi"]["average_precision"].is_null());
  EXPECT_EQ(j["lesions"]["InSepThi"]["positives"], 0);
  ASSERT_EQ(j["predictions"].size(), 5u);
  EXPECT_EQ(j["predictions"][0]["name"], "n0.png");
  EXPECT_EQ(j["predictions"][0]["label"], 0);
  EXPECT_TRUE(j["predictions"][0]["lesion_labels"].is_null());
  EXPECT_DOUBLE_EQ(j["predictions"][3]["prob"].get<double>(), 0.8);
  EXPECT_EQ(j["predictions"][3]["lesion_labels"]["Csld"], 1);
  EXPECT_DOUBLE_EQ(j["predictions"][3]["lesion_probs"]["AirBr"].get<double>(), 0.2);
  // No bootstrap: null.
  EXPECT_TRUE(evaluation_report(p, no_bootstrap())["bootstrap"].is_null());
  // The dump is valid JSON (no NaN literal).
  EXPECT_NO_THROW(nlohmann::json::parse(j.dump()));
}

TEST(EvaluationTest, TableShowsMetricsConfusionNoteAndNa) {
  EvaluationOptions o;
  o.bootstrap.resamples = 20;
  const std::string t = format_evaluation(evaluate(hand_made(), o));
  EXPECT_NE(t.find("5 images: 3 COVID, 2 non-COVID"), std::string::npos) << t;
  EXPECT_NE(line_of(t, "ROC-AUC (from probabilities)").find(" 0.8333   ["), std::string::npos) << t;
  EXPECT_NE(line_of(t, "balanced accuracy (paper's AUC)").find(" 0.8333   ["), std::string::npos) << t;
  EXPECT_NE(line_of(t, "accuracy").find(" 0.8000   ["), std::string::npos) << t;
  EXPECT_NE(line_of(t, "precision (PPV)").find(" 1.0000"), std::string::npos) << t;
  EXPECT_EQ(line_of(t, "precision (PPV)").find("["), std::string::npos) << t;  // no interval
  EXPECT_NE(line_of(t, "Brier score").find(" 0.1285"), std::string::npos) << t;
  EXPECT_NE(line_of(t, "loss").find(" 0.6250"), std::string::npos) << t;
  EXPECT_NE(t.find("95% CI (bootstrap, 20 resamples, seed 0)"), std::string::npos) << t;
  std::string one_line = t;  // the note is wrapped
  std::replace(one_line.begin(), one_line.end(), '\n', ' ');
  EXPECT_NE(one_line.find("Note: " + std::string(kBalancedAccuracyNote)), std::string::npos) << t;
  // Confusion rows: COVID -> tp fn, non-COVID -> fp tn.
  auto cells = [](const std::string& line) {
    std::istringstream in(line);
    std::vector<std::string> words;
    for (std::string w; in >> w;) words.push_back(w);
    return words;
  };
  EXPECT_EQ(cells(line_of(t, "COVID ")), (std::vector<std::string>{"COVID", "2", "1"})) << t;
  EXPECT_EQ(cells(line_of(t, "non-COVID ")), (std::vector<std::string>{"non-COVID", "0", "2"})) << t;
  EXPECT_EQ(cells(line_of(t, "GGO")),
            (std::vector<std::string>{"GGO", "ground-glass", "opacity", "2", "1.0000", "1.0000"}))
      << t;
  EXPECT_EQ(cells(line_of(t, "InSepThi")),
            (std::vector<std::string>{"InSepThi", "interlobular", "septal", "thickening", "0", "n/a", "n/a"}))
      << t;
  EXPECT_EQ(t.find("nan"), std::string::npos) << t;
}

TEST(EvaluationTest, TableExplainsAnUndefinedPrecision) {
  Predictions p = hand_made();
  p.covid_prob = {0.1, 0.4, 0.35, 0.3, 0.2};  // nothing reaches 0.5
  const std::string t = format_evaluation(evaluate(p, no_bootstrap()));
  EXPECT_NE(line_of(t, "precision (PPV)").find("n/a"), std::string::npos) << t;
  EXPECT_NE(t.find("precision n/a: no image was predicted COVID"), std::string::npos) << t;
  EXPECT_EQ(t.find("NPV n/a"), std::string::npos) << t;
  EXPECT_EQ(t.find("nan"), std::string::npos) << t;
}

TEST(EvaluationTest, ErrorsNameTheProblem) {
  auto message = [](const Predictions& p, const EvaluationOptions& o) -> std::string {
    try {
      evaluate(p, o);
    } catch (const std::invalid_argument& e) {
      return e.what();
    }
    return "(no error)";
  };
  Predictions p = hand_made();
  p.covid_prob.pop_back();
  EXPECT_EQ(message(p, no_bootstrap()), "evaluation: predictions have 5 names but 4 entries in 'covid_prob'");
  p = hand_made();
  p.covid[2] = 2;
  EXPECT_EQ(message(p, no_bootstrap()),
            "evaluation: the COVID label of image 2 ('c2.png') is 2, expected 0 or 1");
  p = hand_made();
  p.lesion_prob[1][3] = 1.5;
  EXPECT_NE(message(p, no_bootstrap()).find("the AirBr probability of image 1 ('n1.png') is 1.5"),
            std::string::npos);
  p = hand_made();
  p.covid_prob[0] = NAN;
  EXPECT_NE(message(p, no_bootstrap()).find("COVID probability of image 0"), std::string::npos);
  EXPECT_EQ(message(Predictions{}, no_bootstrap()), "evaluation: there are no predictions to evaluate");
  EXPECT_NE(message(hand_made(), no_bootstrap(1.5)).find("--threshold must lie in [0, 1]"),
            std::string::npos);
  EvaluationOptions o;
  o.bootstrap.resamples = -1;
  EXPECT_NE(message(hand_made(), o).find("--bootstrap must be 0"), std::string::npos);
  p = hand_made();
  p.has_lesion_labels.pop_back();
  EXPECT_THROW(lesion_scores(p), std::invalid_argument);
  EXPECT_THROW(covid_scores(p), std::invalid_argument);
  const Evaluation five = evaluate(hand_made(), no_bootstrap());
  Predictions four = hand_made();
  four.names.pop_back();
  four.covid.pop_back();
  four.covid_prob.pop_back();
  four.lesions.pop_back();
  four.has_lesion_labels.pop_back();
  four.lesion_prob.pop_back();
  try {
    to_json(five, four);
    ADD_FAILURE() << "to_json accepted predictions of another size";
  } catch (const std::invalid_argument& e) {
    EXPECT_STREQ(e.what(), "evaluation: the evaluation covers 5 images but the predictions hold 4");
  }
  o.bootstrap.resamples = 10;
  o.bootstrap.confidence = 1.5;
  EXPECT_NE(message(hand_made(), o).find("confidence"), std::string::npos);
}
