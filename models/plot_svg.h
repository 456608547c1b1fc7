// models/plot_svg.h — a small line-plot writer for `ladnn eval`'s ROC, precision-recall and reliability
// curves, as standalone SVG text (opens in any browser, no plotting library needed).
//
// One chart: a square plot area with a frame, grid lines and tick labels every 0.2 of [0, 1] on both axes
// (other ranges get 5 equal steps), a title, axis labels, an optional dashed diagonal y = x ("chance" for
// ROC, "perfectly calibrated" for reliability), one polyline per series in a fixed palette, and a legend
// below the plot with one row per series (its name, e.g. "COVID (AUC 0.912)"). Every text is
// XML-escaped. Non-finite points (a NaN rate from a single-class set) are left out.
#pragma once

#include <string>
#include <vector>

namespace ladnn::plot {

/// How a series is drawn.
enum class Draw {
  line,          ///< straight segments between the points (ROC)
  steps_post,    ///< each y held until the next x, as matplotlib's drawstyle="steps-post" (PR curves)
  line_markers,  ///< segments and a dot on each point (reliability bins)
};

struct Series {
  std::string name;        ///< legend text
  std::vector<double> xs;  ///< same length as ys
  std::vector<double> ys;
  Draw draw = Draw::line;
};

/// Whether the plot shows the dashed diagonal y = x.
enum class Diagonal { none, show };

struct PlotOptions {
  double x_min = 0.0, x_max = 1.0;  ///< axis ranges (x_min < x_max, y_min < y_max)
  double y_min = 0.0, y_max = 1.0;
  int plot_size = 400;  ///< side of the square plot area in pixels (>= 100)
  Diagonal diagonal = Diagonal::none;
  std::string diagonal_name;  ///< legend text of the diagonal; empty: not in the legend
};

/// The SVG document of one chart. Throws std::invalid_argument naming the series when xs and ys differ
/// in length, or when the options are out of range.
std::string line_plot_svg(const std::string& title, const std::string& x_label, const std::string& y_label,
                          const std::vector<Series>& series, const PlotOptions& options = {});

/// Escapes & < > " ' for XML text and attribute values.
std::string xml_escape(const std::string& text);

/// A metric value for a legend: three decimals ("0.912"), or "n/a" when it is NaN.
std::string format_value(double v);

}  // namespace ladnn::plot
