// tests/plot_svg_test.cpp — the SVG line-plot writer (models/plot_svg.h).
//
// The document must be well-formed (every tag closed in order, checked by a small tag-stack parser), hold
// one polyline per series with exactly the expected points (steps doubled, non-finite points dropped),
// map data to pixels as the layout says, escape every text, and reject mismatched series by name.
#include "models/plot_svg.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "models/metrics.h"

namespace ladnn::plot {
namespace {

/// Checks that tags nest and close properly, text has no raw '<' or '&' outside entities, and that the
/// document is a single <svg> element. Returns "" when fine, else what is wrong.
std::string well_formed(const std::string& doc) {
  std::vector<std::string> stack;
  std::size_t i = 0;
  bool root_seen = false;
  while (i < doc.size()) {
    if (doc[i] == '&') {
      const std::size_t semi = doc.find(';', i);
      if (semi == std::string::npos || semi - i > 6) return "bare '&' at " + std::to_string(i);
      i = semi + 1;
      continue;
    }
    if (doc[i] != '<') {
      ++i;
      continue;
    }
    const std::size_t end = doc.find('>', i);
    if (end == std::string::npos) return "unterminated tag at " + std::to_string(i);
    std::string tag = doc.substr(i + 1, end - i - 1);
    // Attribute values must not contain a raw '<' (our escaping turns it into &lt;).
    if (tag.find('<') != std::string::npos) return "'<' inside tag at " + std::to_string(i);
    i = end + 1;
    if (tag.empty()) return "empty tag";
    if (tag[0] == '/') {
      const std::string name = tag.substr(1);
      if (stack.empty() || stack.back() != name) {
        return "closing </" + name + "> does not match <" + (stack.empty() ? "" : stack.back()) + ">";
      }
      stack.pop_back();
      continue;
    }
    const bool self_closing = tag.back() == '/';
    const std::string name = tag.substr(0, tag.find_first_of(" /"));
    if (stack.empty()) {
      if (root_seen) return "a second root element <" + name + ">";
      if (name != "svg") return "root element is <" + name + ">, not <svg>";
      root_seen = true;
    }
    if (!self_closing) stack.push_back(name);
  }
  if (!stack.empty()) return "<" + stack.back() + "> never closed";
  return root_seen ? "" : "no <svg> element";
}

/// The value of `points="..."` of each polyline, in order.
std::vector<std::string> polylines(const std::string& doc) {
  std::vector<std::string> out;
  for (std::size_t at = doc.find("<polyline"); at != std::string::npos; at = doc.find("<polyline", at + 1)) {
    const std::size_t b = doc.find("points=\"", at) + 8;
    out.push_back(doc.substr(b, doc.find('"', b) - b));
  }
  return out;
}

/// The "x,y" pairs of a points attribute.
std::vector<std::pair<double, double>> parse_points(const std::string& pts) {
  std::vector<std::pair<double, double>> out;
  std::size_t i = 0;
  while (i < pts.size()) {
    std::size_t next = pts.find(' ', i);
    if (next == std::string::npos) next = pts.size();
    const std::string pair = pts.substr(i, next - i);
    const std::size_t comma = pair.find(',');
    out.emplace_back(std::stod(pair.substr(0, comma)), std::stod(pair.substr(comma + 1)));
    i = next + 1;
  }
  return out;
}

std::size_t count(const std::string& doc, const std::string& what) {
  std::size_t n = 0;
  for (std::size_t at = doc.find(what); at != std::string::npos; at = doc.find(what, at + 1)) ++n;
  return n;
}

TEST(PlotSvg, WellFormedWithOnePolylinePerSeries) {
  const std::vector<Series> series{{"COVID (AUC 0.912)", {0, 0.1, 0.5, 1}, {0, 0.6, 0.9, 1}, Draw::line},
                                   {"GGO", {0, 1}, {0, 1}, Draw::line},
                                   {"PR", {1, 0.5, 0}, {0.5, 0.8, 1}, Draw::steps_post}};
  PlotOptions o;
  o.diagonal = Diagonal::show;
  o.diagonal_name = "chance";
  const std::string svg = line_plot_svg("ROC curve", "False positive rate", "True positive rate", series, o);
  EXPECT_EQ(svg.rfind("<svg ", 0), 0u) << svg.substr(0, 40);
  EXPECT_NE(svg.find("xmlns=\"http://www.w3.org/2000/svg\""), std::string::npos);
  EXPECT_EQ(well_formed(svg), "");
  const auto lines = polylines(svg);
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(parse_points(lines[0]).size(), 4u);
  EXPECT_EQ(parse_points(lines[1]).size(), 2u);
  EXPECT_EQ(parse_points(lines[2]).size(), 5u);  // steps-post: 3 points and 2 corners
  EXPECT_EQ(count(svg, "class=\"diagonal\""), 1u);
  for (const char* text : {"ROC curve", "False positive rate", "True positive rate", "COVID (AUC 0.912)",
                           "GGO", "chance", ">0.2<", ">1<", ">0<"}) {
    EXPECT_NE(svg.find(text), std::string::npos) << text;
  }
}

// Layout: plot area from x = 64 to 64 + size, y from 44 (top) to 44 + size (bottom); data [0, 1]² maps
// onto it with y upwards. Steps-post holds each y until the next x.
TEST(PlotSvg, PointsMapOntoThePlotArea) {
  PlotOptions o;
  o.plot_size = 200;
  const std::string svg =
      line_plot_svg("t", "x", "y", {{"s", {0.0, 0.5, 1.0}, {0.0, 0.25, 1.0}, Draw::steps_post}}, o);
  const auto p = parse_points(polylines(svg).at(0));
  ASSERT_EQ(p.size(), 5u);
  const std::vector<std::pair<double, double>> want{{64, 244}, {164, 244}, {164, 194}, {264, 194}, {264, 44}};
  for (std::size_t i = 0; i < p.size(); ++i) {
    EXPECT_DOUBLE_EQ(p[i].first, want[i].first) << i;
    EXPECT_DOUBLE_EQ(p[i].second, want[i].second) << i;
  }
  // Another range: x in [10, 20], y in [-1, 1]; (15, 0) is the centre of the area.
  o.x_min = 10;
  o.x_max = 20;
  o.y_min = -1;
  o.y_max = 1;
  const auto c =
      parse_points(polylines(line_plot_svg("t", "x", "y", {{"s", {15}, {0}, Draw::line}}, o)).at(0));
  ASSERT_EQ(c.size(), 1u);
  EXPECT_DOUBLE_EQ(c[0].first, 164);
  EXPECT_DOUBLE_EQ(c[0].second, 144);
}

TEST(PlotSvg, DropsNonFinitePointsAndDrawsMarkers) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const std::string svg = line_plot_svg("t", "x", "y",
                                        {{"bins",
                                          {0.1, nan, 0.5, 0.9},
                                          {0.2, 0.3, std::numeric_limits<double>::infinity(), 0.8},
                                          Draw::line_markers}});
  EXPECT_EQ(well_formed(svg), "");
  EXPECT_EQ(parse_points(polylines(svg).at(0)).size(), 2u);
  EXPECT_EQ(count(svg, "<circle"), 2u);
  EXPECT_EQ(svg.find("nan"), std::string::npos);
  EXPECT_EQ(count(svg, "class=\"diagonal\""), 0u);
  // An empty series still gives a valid (empty) polyline and its legend row.
  const std::string empty = line_plot_svg("t", "x", "y", {{"none", {}, {}, Draw::line}});
  EXPECT_EQ(well_formed(empty), "");
  EXPECT_EQ(polylines(empty).at(0), "");
  EXPECT_NE(empty.find(">none<"), std::string::npos);
}

TEST(PlotSvg, EscapesEveryText) {
  const std::string title = "ROC <COVID> & \"lesions\" 'all'";
  const std::string svg = line_plot_svg(title, "x < 1", "y & z", {{"a<b>&c", {0, 1}, {0, 1}, Draw::line}});
  EXPECT_EQ(well_formed(svg), "");
  EXPECT_EQ(svg.find("<COVID>"), std::string::npos);
  EXPECT_EQ(count(svg, "ROC &lt;COVID&gt; &amp; &quot;lesions&quot; &apos;all&apos;"),
            2u);  // <title> and heading
  EXPECT_NE(svg.find("x &lt; 1"), std::string::npos);
  EXPECT_NE(svg.find("y &amp; z"), std::string::npos);
  EXPECT_NE(svg.find("a&lt;b&gt;&amp;c"), std::string::npos);
  EXPECT_EQ(xml_escape("<&>\"'x"), "&lt;&amp;&gt;&quot;&apos;x");
}

TEST(PlotSvg, FormatValue) {
  EXPECT_EQ(format_value(0.91249), "0.912");
  EXPECT_EQ(format_value(1.0), "1.000");
  EXPECT_EQ(format_value(std::numeric_limits<double>::quiet_NaN()), "n/a");
}

TEST(PlotSvg, RocCurveOfMetricsPlotsEveryPoint) {
  const std::vector<int> y{0, 0, 1, 1, 0, 1, 1};
  const std::vector<double> s{0.1, 0.4, 0.35, 0.8, 0.4, 0.9, 0.2};
  const metrics::RocCurve r = metrics::roc_curve(y, s);
  const std::string svg = line_plot_svg("ROC", "FPR", "TPR", {{"head", r.fpr, r.tpr, Draw::line}});
  EXPECT_EQ(parse_points(polylines(svg).at(0)).size(), r.fpr.size());
}

TEST(PlotSvg, Errors) {
  try {
    line_plot_svg("t", "x", "y", {{"lesion 3", {0, 1}, {0}, Draw::line}});
    ADD_FAILURE() << "no exception";
  } catch (const std::invalid_argument& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("line_plot_svg"), std::string::npos) << msg;
    EXPECT_NE(msg.find("'lesion 3'"), std::string::npos) << msg;
    EXPECT_NE(msg.find("2 x values but 1 y values"), std::string::npos) << msg;
  }
  PlotOptions o;
  o.x_max = 0;
  EXPECT_THROW(line_plot_svg("t", "x", "y", {}, o), std::invalid_argument);
  o = PlotOptions{};
  o.plot_size = 50;
  EXPECT_THROW(line_plot_svg("t", "x", "y", {}, o), std::invalid_argument);
}

}  // namespace
}  // namespace ladnn::plot
