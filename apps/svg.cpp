// apps/svg.cpp — see svg.h.
#include "apps/svg.h"

#include <utility>

#include "models/metrics.h"
#include "models/plot_svg.h"

namespace ladnn::apps {

std::string roc_svg(const std::string& title, const std::vector<HeadScores>& heads) {
  std::vector<plot::Series> series;
  for (const HeadScores& h : heads) {
    const metrics::RocCurve r = metrics::roc_curve(h.y, h.prob);
    const std::string auc = plot::format_value(metrics::roc_auc(h.y, h.prob));
    series.push_back({h.name + " (AUC " + auc + ")", r.fpr, r.tpr, plot::Draw::line});
  }
  plot::PlotOptions o;
  o.diagonal = plot::Diagonal::show;
  o.diagonal_name = "chance";
  return plot::line_plot_svg(title, "False positive rate (1 - specificity)",
                             "True positive rate (sensitivity)", series, o);
}

std::string pr_svg(const std::string& title, const std::vector<HeadScores>& heads) {
  std::vector<plot::Series> series;
  for (const HeadScores& h : heads) {
    const metrics::PrCurve pr = metrics::precision_recall_curve(h.y, h.prob);
    const std::string ap = plot::format_value(metrics::average_precision(h.y, h.prob));
    series.push_back({h.name + " (AP " + ap + ")", pr.recall, pr.precision, plot::Draw::steps_post});
  }
  return plot::line_plot_svg(title, "Recall (sensitivity)", "Precision (PPV)", series);
}

std::string reliability_svg(const std::string& title, const std::vector<HeadScores>& heads, int n_bins) {
  std::vector<plot::Series> series;
  for (const HeadScores& h : heads) {
    plot::Series s{h.name + " (Brier " + plot::format_value(metrics::brier(h.y, h.prob)) + ")",
                   {},
                   {},
                   plot::Draw::line_markers};
    for (const metrics::CalibrationBin& b : metrics::calibration_curve(h.y, h.prob, n_bins)) {
      s.xs.push_back(b.mean_predicted);
      s.ys.push_back(b.fraction_positive);
    }
    series.push_back(std::move(s));
  }
  plot::PlotOptions o;
  o.diagonal = plot::Diagonal::show;
  o.diagonal_name = "perfectly calibrated";
  return plot::line_plot_svg(title, "Mean predicted probability", "Fraction of positives", series, o);
}

}  // namespace ladnn::apps
