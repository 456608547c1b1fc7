// apps/svg.h — `ladnn eval`'s charts: ROC, precision-recall and reliability curves of one or more heads
// (COVID and the lesions) as standalone SVG text. Thin glue: the curves come from models/metrics.h and
// the drawing from models/plot_svg.h, where the tests are.
#pragma once

#include <string>
#include <vector>

namespace ladnn::apps {

/// One head's labels (0/1) and predicted probabilities, named for the legend ("COVID", "GGO", …).
struct HeadScores {
  std::string name;
  std::vector<int> y;
  std::vector<double> prob;
};

/// ROC curves with the chance diagonal; legend "name (AUC 0.912)", "n/a" when a class is absent.
std::string roc_svg(const std::string& title, const std::vector<HeadScores>& heads);

/// Precision-recall curves drawn as steps; legend "name (AP 0.874)".
std::string pr_svg(const std::string& title, const std::vector<HeadScores>& heads);

/// Reliability diagrams: fraction positive against mean predicted probability in `n_bins` uniform bins,
/// with the diagonal of perfect calibration; legend "name (Brier 0.123)".
std::string reliability_svg(const std::string& title, const std::vector<HeadScores>& heads, int n_bins = 10);

}  // namespace ladnn::apps
