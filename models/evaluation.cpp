// models/evaluation.cpp — see evaluation.h.
#include "models/evaluation.h"

#include <cmath>
#include <cstdio>
#include <sstream>
#include <stdexcept>

#include "models/ladnn.h"

namespace ladnn {

const char* const kBalancedAccuracyNote =
    "The LA-DNN paper's published \"AUC\" was computed on 0/1 predictions, which makes it the balanced "
    "accuracy (recall + specificity) / 2; compare the paper's AUC with balanced_accuracy and use roc_auc "
    "(from probabilities) for the area under the ROC curve.";

namespace {

nlohmann::json number(double v) {
  return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr);
}

nlohmann::json numbers(const std::vector<double>& v) {
  nlohmann::json a = nlohmann::json::array();
  for (double x : v) a.push_back(number(x));
  return a;
}

std::string image_label(const Predictions& p, size_t i) {
  return "image " + std::to_string(i) + (i < p.names.size() ? " ('" + p.names[i] + "')" : "");
}

// Readable lesion names for the table, in kLesionNames order.
constexpr std::array<const char*, 5> kLesionLongNames = {"ground-glass opacity", "consolidation",
                                                         "crazy paving", "air bronchogram",
                                                         "interlobular septal thickening"};

}  // namespace

const std::vector<std::string>& headline_metric_names() {
  static const std::vector<std::string> names = {"accuracy", "roc_auc",     "average_precision", "f1",
                                                 "recall",   "specificity", "balanced_accuracy"};
  return names;
}

void validate_predictions(const Predictions& p) {
  const size_t n = p.names.size();
  auto same = [&](size_t m, const char* field) {
    if (m != n)
      throw std::invalid_argument("evaluation: predictions have " + std::to_string(n) + " names but " +
                                  std::to_string(m) + " entries in '" + field + "'");
  };
  same(p.covid.size(), "covid");
  same(p.covid_prob.size(), "covid_prob");
  same(p.lesions.size(), "lesions");
  same(p.has_lesion_labels.size(), "has_lesion_labels");
  same(p.lesion_prob.size(), "lesion_prob");
  auto prob_ok = [](double v) { return v >= 0.0 && v <= 1.0; };  // false for NaN
  for (size_t i = 0; i < n; ++i) {
    if (p.covid[i] != 0 && p.covid[i] != 1)
      throw std::invalid_argument("evaluation: the COVID label of " + image_label(p, i) + " is " +
                                  std::to_string(p.covid[i]) + ", expected 0 or 1");
    if (!prob_ok(p.covid_prob[i]))
      throw std::invalid_argument("evaluation: the COVID probability of " + image_label(p, i) + " is " +
                                  std::to_string(p.covid_prob[i]) + ", expected a number in [0, 1]");
    for (int k = 0; k < 5; ++k) {
      if (p.has_lesion_labels[i] && p.lesions[i][k] != 0 && p.lesions[i][k] != 1)
        throw std::invalid_argument("evaluation: the " + std::string(kLesionNames[k]) + " label of " +
                                    image_label(p, i) + " is " + std::to_string(p.lesions[i][k]) +
                                    ", expected 0 or 1");
      if (!prob_ok(p.lesion_prob[i][k]))
        throw std::invalid_argument("evaluation: the " + std::string(kLesionNames[k]) + " probability of " +
                                    image_label(p, i) + " is " + std::to_string(p.lesion_prob[i][k]) +
                                    ", expected a number in [0, 1]");
    }
  }
}

HeadData covid_scores(const Predictions& p) {
  validate_predictions(p);
  return {"COVID", p.covid, p.covid_prob};
}

std::array<HeadData, 5> lesion_scores(const Predictions& p) {
  validate_predictions(p);
  std::array<HeadData, 5> heads;
  for (int k = 0; k < 5; ++k) heads[k].name = kLesionNames[k];
  for (size_t i = 0; i < p.names.size(); ++i) {
    if (!p.has_lesion_labels[i]) continue;  // lesion targets unknown, not negative
    for (int k = 0; k < 5; ++k) {
      heads[k].y.push_back(p.lesions[i][k]);
      heads[k].prob.push_back(p.lesion_prob[i][k]);
    }
  }
  return heads;
}

Evaluation evaluate(const Predictions& p, const EvaluationOptions& options) {
  validate_predictions(p);
  if (p.names.empty()) throw std::invalid_argument("evaluation: there are no predictions to evaluate");
  if (!(options.threshold >= 0.0 && options.threshold <= 1.0))
    throw std::invalid_argument("evaluation: --threshold must lie in [0, 1], got " +
                                std::to_string(options.threshold));
  if (options.bootstrap.resamples < 0)
    throw std::invalid_argument("evaluation: --bootstrap must be 0 (no intervals) or more resamples, got " +
                                std::to_string(options.bootstrap.resamples));

  Evaluation e;
  e.options = options;
  e.loss = p.loss;
  e.covid = metrics::binary_report(p.covid, p.covid_prob, options.threshold);
  e.calibration = metrics::calibration_curve(p.covid, p.covid_prob, 10);

  if (options.bootstrap.resamples > 0) {
    const double t = options.threshold;
    using metrics::Confusion;
    auto at = [t](double (*f)(const Confusion&)) -> metrics::Metric {
      return [t, f](const std::vector<int>& y, const std::vector<double>& s) {
        return f(metrics::confusion_at(y, s, t));
      };
    };
    const std::vector<std::pair<std::string, metrics::Metric>> ms = {
        {"accuracy", at(&metrics::accuracy)},
        {"roc_auc",
         [](const std::vector<int>& y, const std::vector<double>& s) { return metrics::roc_auc(y, s); }},
        {"average_precision", [](const std::vector<int>& y,
                                 const std::vector<double>& s) { return metrics::average_precision(y, s); }},
        {"f1", at(&metrics::f1)},
        {"recall", at(&metrics::recall)},
        {"specificity", at(&metrics::specificity)},
        {"balanced_accuracy", at(&metrics::balanced_accuracy)},
    };
    e.intervals = metrics::bootstrap_cis(p.covid, p.covid_prob, ms, options.bootstrap);
  }

  const std::array<HeadData, 5> heads = lesion_scores(p);
  e.lesion_images = static_cast<std::int64_t>(heads[0].y.size());
  for (int k = 0; k < 5; ++k) {
    LesionEvaluation& l = e.lesions[k];
    l.name = heads[k].name;
    l.n = static_cast<std::int64_t>(heads[k].y.size());
    for (int v : heads[k].y) (v == 1 ? l.positives : l.negatives) += 1;
    l.roc_auc = metrics::roc_auc(heads[k].y, heads[k].prob);
    l.average_precision = metrics::average_precision(heads[k].y, heads[k].prob);
  }
  return e;
}

nlohmann::json to_json(const Evaluation& e, const Predictions& p) {
  validate_predictions(p);
  if (e.covid.n != static_cast<std::int64_t>(p.names.size()))
    throw std::invalid_argument("evaluation: the evaluation covers " + std::to_string(e.covid.n) +
                                " images but the predictions hold " + std::to_string(p.names.size()));
  nlohmann::json j;
  j["format"] = "ladnn-eval-1";
  j["threshold"] = number(e.options.threshold);
  j["n"] = e.covid.n;
  j["positives"] = e.covid.positives;
  j["negatives"] = e.covid.negatives;
  j["loss"] = number(e.loss);
  j["covid"] = metrics::to_json(e.covid);
  j["note"] = kBalancedAccuracyNote;
  if (e.intervals.empty()) {
    j["bootstrap"] = nullptr;
  } else {
    nlohmann::json b = {{"resamples", e.options.bootstrap.resamples},
                        {"seed", e.options.bootstrap.seed},
                        {"confidence", number(e.options.bootstrap.confidence)},
                        {"method", "percentile"}};
    for (const auto& [name, iv] : e.intervals) b["intervals"][name] = metrics::to_json(iv);
    j["bootstrap"] = b;
  }
  j["calibration"] = metrics::to_json(e.calibration);
  const metrics::RocCurve roc = metrics::roc_curve(p.covid, p.covid_prob);
  const metrics::PrCurve pr = metrics::precision_recall_curve(p.covid, p.covid_prob);
  j["curves"]["roc"] = {
      {"fpr", numbers(roc.fpr)}, {"tpr", numbers(roc.tpr)}, {"thresholds", numbers(roc.thresholds)}};
  j["curves"]["pr"] = {{"precision", numbers(pr.precision)},
                       {"recall", numbers(pr.recall)},
                       {"thresholds", numbers(pr.thresholds)}};
  j["lesion_images"] = e.lesion_images;
  j["lesions"] = nlohmann::json::object();
  for (const LesionEvaluation& l : e.lesions)
    j["lesions"][l.name] = {{"n", l.n},
                            {"positives", l.positives},
                            {"negatives", l.negatives},
                            {"roc_auc", number(l.roc_auc)},
                            {"average_precision", number(l.average_precision)}};
  nlohmann::json preds = nlohmann::json::array();
  for (size_t i = 0; i < p.names.size(); ++i) {
    nlohmann::json r = {{"name", p.names[i]}, {"label", p.covid[i]}, {"prob", number(p.covid_prob[i])}};
    r["lesion_labels"] = nullptr;
    if (p.has_lesion_labels[i]) {
      r["lesion_labels"] = nlohmann::json::object();
      for (int k = 0; k < 5; ++k) r["lesion_labels"][kLesionNames[k]] = p.lesions[i][k];
    }
    r["lesion_probs"] = nlohmann::json::object();
    for (int k = 0; k < 5; ++k) r["lesion_probs"][kLesionNames[k]] = number(p.lesion_prob[i][k]);
    preds.push_back(std::move(r));
  }
  j["predictions"] = std::move(preds);
  return j;
}

nlohmann::json evaluation_report(const Predictions& p, const EvaluationOptions& options) {
  return to_json(evaluate(p, options), p);
}

namespace {

std::string fmt4(double v) {
  if (!std::isfinite(v)) return "n/a";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.4f", v);
  return buf;
}

/// `text` broken into lines of at most `width` characters at spaces, each ending in a newline.
std::string wrap(const std::string& text, size_t width) {
  std::istringstream words(text);
  std::string out, line;
  for (std::string w; words >> w;) {
    if (!line.empty() && line.size() + 1 + w.size() > width) {
      out += line + "\n";
      line.clear();
    }
    line += (line.empty() ? "" : " ") + w;
  }
  if (!line.empty()) out += line + "\n";
  return out;
}

}  // namespace

std::string format_evaluation(const Evaluation& e) {
  std::ostringstream o;
  char line[256];
  const metrics::BinaryReport& r = e.covid;
  std::snprintf(line, sizeof line,
                "%lld images: %lld COVID, %lld non-COVID; COVID predicted when p >= %g\n\n", (long long)r.n,
                (long long)r.positives, (long long)r.negatives, e.options.threshold);
  o << line;

  auto interval = [&](const std::string& name) -> std::string {
    for (const auto& [n, iv] : e.intervals)
      if (n == name) return iv.used > 0 ? "[" + fmt4(iv.lower) + ", " + fmt4(iv.upper) + "]" : "[n/a]";
    return "";
  };
  if (e.intervals.empty()) {
    o << "COVID-19 (positive class)          value\n";
  } else {
    std::snprintf(line, sizeof line,
                  "COVID-19 (positive class)          value   %g%% CI (bootstrap, %d resamples, seed %llu)\n",
                  100.0 * e.options.bootstrap.confidence, e.options.bootstrap.resamples,
                  (unsigned long long)e.options.bootstrap.seed);
    o << line;
  }
  struct Row {
    const char* label;
    double value;
    const char* key;  // interval name, or ""
  };
  const Row rows[] = {
      {"accuracy", r.accuracy, "accuracy"},
      {"ROC-AUC (from probabilities)", r.roc_auc, "roc_auc"},
      {"average precision", r.average_precision, "average_precision"},
      {"balanced accuracy (paper's AUC)", r.balanced_accuracy, "balanced_accuracy"},
      {"F1", r.f1, "f1"},
      {"recall (sensitivity)", r.recall, "recall"},
      {"specificity", r.specificity, "specificity"},
      {"precision (PPV)", r.precision, ""},
      {"NPV", r.npv, ""},
      {"Brier score", r.brier, ""},
      {"loss", e.loss, ""},
  };
  for (const Row& row : rows) {
    std::string ci = *row.key ? interval(row.key) : "";
    std::snprintf(line, sizeof line, "  %-31s %7s   %s", row.label, fmt4(row.value).c_str(), ci.c_str());
    std::string s = line;
    while (!s.empty() && s.back() == ' ') s.pop_back();
    o << s << "\n";
  }

  if (std::isnan(r.precision)) o << "  precision n/a: no image was predicted COVID\n";
  if (std::isnan(r.npv)) o << "  NPV n/a: no image was predicted non-COVID\n";

  const metrics::Confusion& c = r.confusion;
  o << "\nConfusion matrix (rows: truth, columns: prediction)\n";
  std::snprintf(line, sizeof line, "  %-12s %12s %16s\n", "", "pred COVID", "pred non-COVID");
  o << line;
  std::snprintf(line, sizeof line, "  %-12s %12lld %16lld\n", "COVID", (long long)c.tp, (long long)c.fn);
  o << line;
  std::snprintf(line, sizeof line, "  %-12s %12lld %16lld\n", "non-COVID", (long long)c.fp, (long long)c.tn);
  o << line;

  o << "\n" << wrap("Note: " + std::string(kBalancedAccuracyNote), 100);

  std::snprintf(line, sizeof line, "\nLesions (over the %lld images that carry lesion labels)\n",
                (long long)e.lesion_images);
  o << line;
  std::snprintf(line, sizeof line, "  %-41s %9s %9s %9s\n", "", "positives", "ROC-AUC", "AP");
  o << line;
  for (int k = 0; k < 5; ++k) {
    const LesionEvaluation& l = e.lesions[k];
    char label[96];
    std::snprintf(label, sizeof label, "%-9s %s", l.name.c_str(), kLesionLongNames[k]);
    std::snprintf(line, sizeof line, "  %-41s %9lld %9s %9s\n", label, (long long)l.positives,
                  fmt4(l.roc_auc).c_str(), fmt4(l.average_precision).c_str());
    o << line;
  }
  bool any_na = false;
  for (const LesionEvaluation& l : e.lesions)
    any_na = any_na || !std::isfinite(l.roc_auc) || !std::isfinite(l.average_precision);
  if (any_na) o << "  n/a: undefined, the lesion has no positive (or no negative) among these images\n";
  return o.str();
}

}  // namespace ladnn
