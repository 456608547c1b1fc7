// models/evaluation.h — what `ladnn eval` reports about a model on a labelled split.
//
// Everything here is computed from a Predictions (models/trainer.h), so a test can hand-make one and
// check every number; the app only loads the checkpoint, runs predict() and writes the files.
//
// The COVID head (positive class = COVID-19) gets the full binary report of models/metrics.h at the
// chosen threshold (confusion matrix, ACC, balanced accuracy, F1, recall = sensitivity, specificity,
// precision = PPV, NPV, Brier score, ROC-AUC and average precision from the probabilities), and
// percentile-bootstrap 95% intervals for the headline metrics.
//
// Balanced accuracy versus "AUC". The LA-DNN paper's published "AUC" was computed from the 0/1
// predictions, not from the probabilities: the area under the ROC curve of a single operating point
// (0,0)–(1-spec, recall)–(1,1) is (recall + specificity) / 2, i.e. the balanced accuracy. We report
// both, so a comparison with the paper compares like with like.
//
// The lesion heads are scored only over the images that carry lesion labels (in COVID-CT, the COVID
// images a radiologist annotated; elsewhere the lesion targets are unknown, not negative). A lesion
// with no positive among them (the test split has no interlobular septal thickening) has an undefined
// AUC and AP: NaN here, null in JSON, "n/a" in the table.
#pragma once

#include <array>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "models/metrics.h"
#include "models/trainer.h"

namespace ladnn {

struct EvaluationOptions {
  double threshold = 0.5;  ///< COVID predicted when prob >= threshold; in [0, 1]
  /// Bootstrap intervals of the headline metrics; resamples = 0 leaves the intervals out.
  metrics::BootstrapOptions bootstrap;
};

/// One head's labels and probabilities over the images where its label is known.
struct HeadData {
  std::string name;  ///< "COVID", "GGO", …
  std::vector<int> y;
  std::vector<double> prob;
};

/// The COVID head over every image. Validates `p` (validate_predictions).
HeadData covid_scores(const Predictions& p);

/// The five lesion heads (kLesionNames order), each over the images with has_lesion_labels only.
/// Validates `p`.
std::array<HeadData, 5> lesion_scores(const Predictions& p);

/// One lesion head's ranking metrics over the images that carry lesion labels.
struct LesionEvaluation {
  std::string name;
  std::int64_t n = 0;          ///< images with lesion labels
  std::int64_t positives = 0;  ///< of them, with this lesion
  std::int64_t negatives = 0;
  double roc_auc = 0;            ///< NaN unless both classes are present
  double average_precision = 0;  ///< NaN without positives
};

/// Everything `ladnn eval` prints and writes.
struct Evaluation {
  EvaluationOptions options;
  metrics::BinaryReport covid;  ///< all COVID-head metrics at options.threshold
  /// Bootstrap intervals, in this order: accuracy, roc_auc, average_precision, f1, recall, specificity,
  /// balanced_accuracy (empty when options.bootstrap.resamples == 0).
  std::vector<std::pair<std::string, metrics::Interval>> intervals;
  std::vector<metrics::CalibrationBin> calibration;  ///< COVID head, 10 uniform bins
  std::int64_t lesion_images = 0;                    ///< images that carry lesion labels
  std::array<LesionEvaluation, 5> lesions;
  double loss = 0;  ///< Predictions::loss (the training loss averaged over the images)
};

/// The names of the headline metrics that get bootstrap intervals, in report order.
const std::vector<std::string>& headline_metric_names();

/// Checks that every per-image vector of `p` has the same length and that labels are 0/1 and
/// probabilities in [0, 1]; throws std::invalid_argument naming the field and the image otherwise.
void validate_predictions(const Predictions& p);

/// Computes the evaluation. Throws std::invalid_argument for malformed predictions, an empty set, a
/// threshold outside [0, 1] or bad bootstrap options.
Evaluation evaluate(const Predictions& p, const EvaluationOptions& options = {});

/// The JSON report: "format", "threshold", "n", "positives", "negatives", "loss", "covid" (the binary
/// report), "note" (balanced accuracy vs. the paper's AUC), "bootstrap" (options and one interval per
/// headline metric, or null), "calibration", "curves" (COVID ROC and PR points), "lesion_images",
/// "lesions" (per lesion name), and "predictions" (per image: name, label, prob, lesion_labels — null
/// where the image carries none — and lesion_probs). Undefined numbers are null.
nlohmann::json to_json(const Evaluation& e, const Predictions& p);

/// evaluate() and to_json() in one call.
nlohmann::json evaluation_report(const Predictions& p, const EvaluationOptions& options = {});

/// The terminal table: the COVID metrics with their intervals, the confusion matrix, the note on
/// balanced accuracy, and the lesion AUC/AP ("n/a" where undefined). Ends with a newline.
std::string format_evaluation(const Evaluation& e);

/// The sentence about the paper's "AUC" that the table and the JSON carry.
extern const char* const kBalancedAccuracyNote;

}  // namespace ladnn
