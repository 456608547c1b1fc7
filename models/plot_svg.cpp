// models/plot_svg.cpp — line plots as SVG text; see plot_svg.h for the layout.
#include "models/plot_svg.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>
#include <stdexcept>
#include <utility>

namespace ladnn::plot {
namespace {

// matplotlib's "tab10" palette: distinct, and readable by most colour-blind viewers.
const char* const kPalette[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                                "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};
constexpr int kPaletteSize = sizeof(kPalette) / sizeof(kPalette[0]);

// Layout in pixels: margins around the square plot area, and the legend rows below it.
constexpr int kLeft = 64, kRight = 24, kTop = 44;
constexpr int kBelowPlot = 56;  // tick labels and the x-axis label
constexpr int kLegendRow = 20;
constexpr int kTicks = 5;     // intervals per axis
constexpr int kOverhang = 4;  // clip margin around the plot area

/// A pixel coordinate with two decimals (locale-independent: snprintf in the "C" locale).
std::string px(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f", v);
  return buf;
}

std::string tick_label(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.4g", std::abs(v) < 1e-12 ? 0.0 : v);
  return buf;
}

}  // namespace

std::string xml_escape(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&apos;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

std::string format_value(double v) {
  if (std::isnan(v)) return "n/a";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3f", v);
  return buf;
}

std::string line_plot_svg(const std::string& title, const std::string& x_label, const std::string& y_label,
                          const std::vector<Series>& series, const PlotOptions& o) {
  if (!(o.x_min < o.x_max) || !(o.y_min < o.y_max) || !std::isfinite(o.x_max - o.x_min) ||
      !std::isfinite(o.y_max - o.y_min)) {
    throw std::invalid_argument("line_plot_svg: axis ranges must be finite with min < max, got x [" +
                                tick_label(o.x_min) + ", " + tick_label(o.x_max) + "], y [" +
                                tick_label(o.y_min) + ", " + tick_label(o.y_max) + "]");
  }
  if (o.plot_size < 100) {
    throw std::invalid_argument("line_plot_svg: plot_size must be at least 100 pixels, got " +
                                std::to_string(o.plot_size));
  }
  for (const Series& s : series) {
    if (s.xs.size() != s.ys.size()) {
      throw std::invalid_argument("line_plot_svg: series '" + s.name + "' has " +
                                  std::to_string(s.xs.size()) + " x values but " +
                                  std::to_string(s.ys.size()) + " y values");
    }
  }

  const double size = o.plot_size;
  const bool diagonal_in_legend = o.diagonal == Diagonal::show && !o.diagonal_name.empty();
  const int legend_rows = static_cast<int>(series.size()) + (diagonal_in_legend ? 1 : 0);
  const int width = kLeft + o.plot_size + kRight;
  const int height = kTop + o.plot_size + kBelowPlot + legend_rows * kLegendRow + 8;
  const double bottom = kTop + size;
  auto X = [&](double x) { return kLeft + (x - o.x_min) / (o.x_max - o.x_min) * size; };
  auto Y = [&](double y) { return bottom - (y - o.y_min) / (o.y_max - o.y_min) * size; };

  std::ostringstream svg;
  svg << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << width << "\" height=\"" << height
      << "\" viewBox=\"0 0 " << width << " " << height << "\" font-family=\"sans-serif\" font-size=\"12\">\n";
  svg << "<title>" << xml_escape(title) << "</title>\n";
  svg << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  // The clip rectangle overhangs the frame by a few pixels so that a curve along an edge (tpr = 1) and
  // the markers on it stay whole, while points far outside the ranges are still cut.
  svg << "<defs><clipPath id=\"plot-area\"><rect x=\"" << kLeft - kOverhang << "\" y=\"" << kTop - kOverhang
      << "\" width=\"" << o.plot_size + 2 * kOverhang << "\" height=\"" << o.plot_size + 2 * kOverhang
      << "\"/></clipPath></defs>\n";
  svg << "<text x=\"" << px(kLeft + size / 2) << "\" y=\"26\" text-anchor=\"middle\" font-size=\"15\" "
      << "font-weight=\"bold\">" << xml_escape(title) << "</text>\n";

  // Grid, ticks and tick labels.
  svg << "<g stroke=\"#e0e0e0\" stroke-width=\"1\">\n";
  for (int k = 0; k <= kTicks; ++k) {
    const double gx = X(o.x_min + k * (o.x_max - o.x_min) / kTicks);
    const double gy = Y(o.y_min + k * (o.y_max - o.y_min) / kTicks);
    svg << "<line x1=\"" << px(gx) << "\" y1=\"" << kTop << "\" x2=\"" << px(gx) << "\" y2=\"" << px(bottom)
        << "\"/>\n";
    svg << "<line x1=\"" << kLeft << "\" y1=\"" << px(gy) << "\" x2=\"" << px(kLeft + size) << "\" y2=\""
        << px(gy) << "\"/>\n";
  }
  svg << "</g>\n<g class=\"ticks\">\n";
  for (int k = 0; k <= kTicks; ++k) {
    const double vx = o.x_min + k * (o.x_max - o.x_min) / kTicks;
    const double vy = o.y_min + k * (o.y_max - o.y_min) / kTicks;
    svg << "<line x1=\"" << px(X(vx)) << "\" y1=\"" << px(bottom) << "\" x2=\"" << px(X(vx)) << "\" y2=\""
        << px(bottom + 5) << "\" stroke=\"black\"/>\n";
    svg << "<text x=\"" << px(X(vx)) << "\" y=\"" << px(bottom + 18) << "\" text-anchor=\"middle\">"
        << tick_label(vx) << "</text>\n";
    svg << "<line x1=\"" << kLeft - 5 << "\" y1=\"" << px(Y(vy)) << "\" x2=\"" << kLeft << "\" y2=\""
        << px(Y(vy)) << "\" stroke=\"black\"/>\n";
    svg << "<text x=\"" << kLeft - 8 << "\" y=\"" << px(Y(vy) + 4) << "\" text-anchor=\"end\">"
        << tick_label(vy) << "</text>\n";
  }
  svg << "</g>\n";
  svg << "<rect x=\"" << kLeft << "\" y=\"" << kTop << "\" width=\"" << o.plot_size << "\" height=\""
      << o.plot_size << "\" fill=\"none\" stroke=\"black\"/>\n";
  svg << "<text x=\"" << px(kLeft + size / 2) << "\" y=\"" << px(bottom + 40) << "\" text-anchor=\"middle\">"
      << xml_escape(x_label) << "</text>\n";
  const double ylx = 18, yly = kTop + size / 2;
  svg << "<text x=\"" << px(ylx) << "\" y=\"" << px(yly)
      << "\" text-anchor=\"middle\" transform=\"rotate(-90 " << px(ylx) << " " << px(yly) << ")\">"
      << xml_escape(y_label) << "</text>\n";

  // The diagonal y = x over the part of it inside both ranges.
  const double d_lo = std::max(o.x_min, o.y_min), d_hi = std::min(o.x_max, o.y_max);
  const char* const dash = "stroke-dasharray=\"6 4\"";
  if (o.diagonal == Diagonal::show && d_lo < d_hi) {
    svg << "<line class=\"diagonal\" x1=\"" << px(X(d_lo)) << "\" y1=\"" << px(Y(d_lo)) << "\" x2=\""
        << px(X(d_hi)) << "\" y2=\"" << px(Y(d_hi)) << "\" stroke=\"#888888\" " << dash << "/>\n";
  }

  // The series, clipped to the plot area.
  svg << "<g clip-path=\"url(#plot-area)\">\n";
  for (std::size_t i = 0; i < series.size(); ++i) {
    const Series& s = series[i];
    const char* color = kPalette[i % kPaletteSize];
    std::vector<std::pair<double, double>> pts;
    for (std::size_t k = 0; k < s.xs.size(); ++k) {
      if (std::isfinite(s.xs[k]) && std::isfinite(s.ys[k])) pts.emplace_back(s.xs[k], s.ys[k]);
    }
    std::vector<std::pair<double, double>> path;
    for (std::size_t k = 0; k < pts.size(); ++k) {
      path.push_back(pts[k]);
      if (s.draw == Draw::steps_post && k + 1 < pts.size())
        path.emplace_back(pts[k + 1].first, pts[k].second);
    }
    svg << "<polyline class=\"series\" fill=\"none\" stroke=\"" << color << "\" stroke-width=\"2\" points=\"";
    for (std::size_t k = 0; k < path.size(); ++k) {
      svg << (k ? " " : "") << px(X(path[k].first)) << "," << px(Y(path[k].second));
    }
    svg << "\"/>\n";
    if (s.draw == Draw::line_markers) {
      for (const auto& p : pts) {
        svg << "<circle cx=\"" << px(X(p.first)) << "\" cy=\"" << px(Y(p.second)) << "\" r=\"3.5\" fill=\""
            << color << "\"/>\n";
      }
    }
  }
  svg << "</g>\n";

  // Legend: one row per series, then the diagonal.
  svg << "<g class=\"legend\">\n";
  double row_y = bottom + kBelowPlot + 6;
  for (std::size_t i = 0; i < series.size(); ++i, row_y += kLegendRow) {
    svg << "<line x1=\"" << kLeft << "\" y1=\"" << px(row_y - 4) << "\" x2=\"" << kLeft + 24 << "\" y2=\""
        << px(row_y - 4) << "\" stroke=\"" << kPalette[i % kPaletteSize] << "\" stroke-width=\"2\"/>\n";
    svg << "<text x=\"" << kLeft + 32 << "\" y=\"" << px(row_y) << "\">" << xml_escape(series[i].name)
        << "</text>\n";
  }
  if (diagonal_in_legend) {
    svg << "<line x1=\"" << kLeft << "\" y1=\"" << px(row_y - 4) << "\" x2=\"" << kLeft + 24 << "\" y2=\""
        << px(row_y - 4) << "\" stroke=\"#888888\" " << dash << "/>\n";
    svg << "<text x=\"" << kLeft + 32 << "\" y=\"" << px(row_y) << "\">" << xml_escape(o.diagonal_name)
        << "</text>\n";
  }
  svg << "</g>\n</svg>\n";
  return svg.str();
}

}  // namespace ladnn::plot
