// models/cam_image.cpp — colour map, overlays, the 5x7 font and the explain figures (see cam_image.h).
#include "models/cam_image.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <stdexcept>

namespace ladnn::viz {

namespace {
// The 5x7 font, one glyph per printable ASCII character from ' ' (32) to '~' (126): seven rows, top to
// bottom, the low five bits of each a row of pixels with bit 4 the leftmost.
constexpr uint8_t kFont[95][7] = {
    {0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00},  // ' '
    {0x04, 0x04, 0x04, 0x04, 0x04, 0x00, 0x04},  // '!'
    {0x0A, 0x0A, 0x00, 0x00, 0x00, 0x00, 0x00},  // '"'
    {0x0A, 0x0A, 0x1F, 0x0A, 0x1F, 0x0A, 0x0A},  // '#'
    {0x04, 0x0F, 0x14, 0x0E, 0x05, 0x1E, 0x04},  // '$'
    {0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03},  // '%'
    {0x0C, 0x12, 0x14, 0x08, 0x15, 0x12, 0x0D},  // '&'
    {0x04, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00},  // '\''
    {0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02},  // '('
    {0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08},  // ')'
    {0x00, 0x04, 0x15, 0x0E, 0x15, 0x04, 0x00},  // '*'
    {0x00, 0x04, 0x04, 0x1F, 0x04, 0x04, 0x00},  // '+'
    {0x00, 0x00, 0x00, 0x00, 0x0C, 0x04, 0x08},  // ','
    {0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00},  // '-'
    {0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C},  // '.'
    {0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00},  // '/'
    {0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E},  // '0'
    {0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E},  // '1'
    {0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F},  // '2'
    {0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E},  // '3'
    {0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02},  // '4'
    {0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E},  // '5'
    {0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E},  // '6'
    {0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08},  // '7'
    {0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E},  // '8'
    {0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C},  // '9'
    {0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00},  // ':'
    {0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x04, 0x08},  // ';'
    {0x02, 0x04, 0x08, 0x10, 0x08, 0x04, 0x02},  // '<'
    {0x00, 0x00, 0x1F, 0x00, 0x1F, 0x00, 0x00},  // '='
    {0x08, 0x04, 0x02, 0x01, 0x02, 0x04, 0x08},  // '>'
    {0x0E, 0x11, 0x01, 0x02, 0x04, 0x00, 0x04},  // '?'
    {0x0E, 0x11, 0x01, 0x0D, 0x15, 0x15, 0x0E},  // '@'
    {0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11},  // 'A'
    {0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E},  // 'B'
    {0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E},  // 'C'
    {0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C},  // 'D'
    {0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F},  // 'E'
    {0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10},  // 'F'
    {0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F},  // 'G'
    {0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11},  // 'H'
    {0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E},  // 'I'
    {0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C},  // 'J'
    {0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11},  // 'K'
    {0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F},  // 'L'
    {0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11},  // 'M'
    {0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11},  // 'N'
    {0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E},  // 'O'
    {0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10},  // 'P'
    {0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D},  // 'Q'
    {0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11},  // 'R'
    {0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E},  // 'S'
    {0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04},  // 'T'
    {0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E},  // 'U'
    {0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04},  // 'V'
    {0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A},  // 'W'
    {0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11},  // 'X'
    {0x11, 0x11, 0x0A, 0x04, 0x04, 0x04, 0x04},  // 'Y'
    {0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F},  // 'Z'
    {0x0E, 0x08, 0x08, 0x08, 0x08, 0x08, 0x0E},  // '['
    {0x00, 0x10, 0x08, 0x04, 0x02, 0x01, 0x00},  // '\\'
    {0x0E, 0x02, 0x02, 0x02, 0x02, 0x02, 0x0E},  // ']'
    {0x04, 0x0A, 0x11, 0x00, 0x00, 0x00, 0x00},  // '^'
    {0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1F},  // '_'
    {0x08, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00},  // '`'
    {0x00, 0x00, 0x0E, 0x01, 0x0F, 0x11, 0x0F},  // 'a'
    {0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x1E},  // 'b'
    {0x00, 0x00, 0x0E, 0x10, 0x10, 0x11, 0x0E},  // 'c'
    {0x01, 0x01, 0x0D, 0x13, 0x11, 0x11, 0x0F},  // 'd'
    {0x00, 0x00, 0x0E, 0x11, 0x1F, 0x10, 0x0E},  // 'e'
    {0x06, 0x09, 0x08, 0x1C, 0x08, 0x08, 0x08},  // 'f'
    {0x00, 0x0F, 0x11, 0x11, 0x0F, 0x01, 0x0E},  // 'g'
    {0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x11},  // 'h'
    {0x04, 0x00, 0x0C, 0x04, 0x04, 0x04, 0x0E},  // 'i'
    {0x02, 0x00, 0x06, 0x02, 0x02, 0x12, 0x0C},  // 'j'
    {0x10, 0x10, 0x12, 0x14, 0x18, 0x14, 0x12},  // 'k'
    {0x0C, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E},  // 'l'
    {0x00, 0x00, 0x1A, 0x15, 0x15, 0x11, 0x11},  // 'm'
    {0x00, 0x00, 0x16, 0x19, 0x11, 0x11, 0x11},  // 'n'
    {0x00, 0x00, 0x0E, 0x11, 0x11, 0x11, 0x0E},  // 'o'
    {0x00, 0x00, 0x1E, 0x11, 0x1E, 0x10, 0x10},  // 'p'
    {0x00, 0x00, 0x0D, 0x13, 0x0F, 0x01, 0x01},  // 'q'
    {0x00, 0x00, 0x16, 0x19, 0x10, 0x10, 0x10},  // 'r'
    {0x00, 0x00, 0x0E, 0x10, 0x0E, 0x01, 0x1E},  // 's'
    {0x08, 0x08, 0x1C, 0x08, 0x08, 0x09, 0x06},  // 't'
    {0x00, 0x00, 0x11, 0x11, 0x11, 0x13, 0x0D},  // 'u'
    {0x00, 0x00, 0x11, 0x11, 0x11, 0x0A, 0x04},  // 'v'
    {0x00, 0x00, 0x11, 0x11, 0x15, 0x15, 0x0A},  // 'w'
    {0x00, 0x00, 0x11, 0x0A, 0x04, 0x0A, 0x11},  // 'x'
    {0x00, 0x00, 0x11, 0x11, 0x0F, 0x01, 0x0E},  // 'y'
    {0x00, 0x00, 0x1F, 0x02, 0x04, 0x08, 0x1F},  // 'z'
    {0x02, 0x04, 0x04, 0x08, 0x04, 0x04, 0x02},  // '{'
    {0x04, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04},  // '|'
    {0x08, 0x04, 0x04, 0x02, 0x04, 0x04, 0x08},  // '}'
    {0x00, 0x00, 0x08, 0x15, 0x02, 0x00, 0x00},  // '~'
};

uint8_t to_byte(double v) {
  return static_cast<uint8_t>(std::lround(std::clamp(v, 0.0, 1.0) * 255.0));
}

void put(data::Image& im, int x, int y, Rgb c) {
  if (x < 0 || y < 0 || x >= im.width || y >= im.height) return;
  uint8_t* p = &im.pixels[(static_cast<size_t>(y) * im.width + x) * 3];
  p[0] = c.r;
  p[1] = c.g;
  p[2] = c.b;
}

/// "0.934" — probabilities to three decimals.
std::string prob_str(double p) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3f", p);
  return buf;
}

const Rgb kBackground{24, 24, 24}, kText{230, 230, 230}, kHighlight{255, 214, 0}, kDim{150, 150, 150};
constexpr const char* kLesions[5] = {"GGO", "Csld", "CrPa", "AirBr", "InSepThi"};

int scale_for(int size) {
  return size >= 200 ? 2 : 1;
}
}  // namespace

Rgb jet(double v) {
  // matplotlib's _jet_data: piecewise linear red, green and blue through these (x, value) points.
  v = std::clamp(v, 0.0, 1.0);
  auto ramp = [v](std::initializer_list<std::pair<double, double>> pts) {
    auto prev = *pts.begin();
    for (const auto& p : pts) {
      if (v <= p.first) {
        if (p.first == prev.first) return p.second;
        return prev.second + (p.second - prev.second) * (v - prev.first) / (p.first - prev.first);
      }
      prev = p;
    }
    return prev.second;
  };
  const double r = ramp({{0, 0}, {0.35, 0}, {0.66, 1}, {0.89, 1}, {1, 0.5}});
  const double g = ramp({{0, 0}, {0.125, 0}, {0.375, 1}, {0.64, 1}, {0.91, 0}, {1, 0}});
  const double b = ramp({{0, 0.5}, {0.11, 1}, {0.34, 1}, {0.65, 0}, {1, 0}});
  return {to_byte(r), to_byte(g), to_byte(b)};
}

data::Image blank(int width, int height, Rgb fill) {
  if (width < 1 || height < 1)
    throw std::invalid_argument("viz::blank: size must be positive, got " + std::to_string(width) + "x" +
                                std::to_string(height));
  data::Image im;
  im.width = width;
  im.height = height;
  im.channels = 3;
  im.pixels.resize(static_cast<size_t>(width) * height * 3);
  for (size_t i = 0; i < im.pixels.size(); i += 3) {
    im.pixels[i] = fill.r;
    im.pixels[i + 1] = fill.g;
    im.pixels[i + 2] = fill.b;
  }
  return im;
}

data::Image grey_image(const float* grey, int width, int height) {
  data::Image im = blank(width, height);
  for (int i = 0; i < width * height; ++i) {
    const uint8_t v = to_byte(grey[i]);
    im.pixels[static_cast<size_t>(i) * 3] = im.pixels[static_cast<size_t>(i) * 3 + 1] =
        im.pixels[static_cast<size_t>(i) * 3 + 2] = v;
  }
  return im;
}

data::Image overlay(const float* grey, const float* cam, int width, int height, double image_weight) {
  if (image_weight < 0 || image_weight > 1)
    throw std::invalid_argument("viz::overlay: image_weight must be in [0, 1], got " +
                                std::to_string(image_weight));
  data::Image im = blank(width, height);
  for (int i = 0; i < width * height; ++i) {
    const double g = std::clamp(static_cast<double>(grey[i]), 0.0, 1.0);
    const Rgb h = jet(cam[i]);
    uint8_t* p = &im.pixels[static_cast<size_t>(i) * 3];
    p[0] = to_byte(image_weight * g + (1 - image_weight) * h.r / 255.0);
    p[1] = to_byte(image_weight * g + (1 - image_weight) * h.g / 255.0);
    p[2] = to_byte(image_weight * g + (1 - image_weight) * h.b / 255.0);
  }
  return im;
}

int text_width(const std::string& text, int scale) {
  if (text.empty()) return 0;
  return (static_cast<int>(text.size()) * kAdvance - (kAdvance - kGlyphWidth)) * scale;
}

void draw_text(data::Image& image, int x, int y, const std::string& text, Rgb colour, int scale) {
  if (scale < 1)
    throw std::invalid_argument("viz::draw_text: scale must be >= 1, got " + std::to_string(scale));
  int pen = x;
  for (unsigned char ch : text) {
    const int index = (ch >= 32 && ch <= 126) ? ch - 32 : '?' - 32;
    for (int row = 0; row < kGlyphHeight; ++row)
      for (int col = 0; col < kGlyphWidth; ++col)
        if (kFont[index][row] & (0x10 >> col))
          for (int dy = 0; dy < scale; ++dy)
            for (int dx = 0; dx < scale; ++dx)
              put(image, pen + col * scale + dx, y + row * scale + dy, colour);
    pen += kAdvance * scale;
  }
}

void fill_rect(data::Image& image, int x, int y, int width, int height, Rgb colour) {
  for (int yy = std::max(0, y); yy < std::min(image.height, y + height); ++yy)
    for (int xx = std::max(0, x); xx < std::min(image.width, x + width); ++xx) put(image, xx, yy, colour);
}

void blit(data::Image& dst, const data::Image& src, int x, int y) {
  if (src.channels != 3 || dst.channels != 3)
    throw std::invalid_argument("viz::blit: both images must be RGB, got " + std::to_string(src.channels) +
                                " and " + std::to_string(dst.channels) + " channels");
  for (int yy = 0; yy < src.height; ++yy)
    for (int xx = 0; xx < src.width; ++xx) {
      const uint8_t* p = &src.pixels[(static_cast<size_t>(yy) * src.width + xx) * 3];
      put(dst, x + xx, y + yy, {p[0], p[1], p[2]});
    }
}

void draw_colour_bar(data::Image& image, int x, int y, int width, int height) {
  for (int i = 0; i < width; ++i)
    fill_rect(image, x + i, y, 1, height, jet(width > 1 ? static_cast<double>(i) / (width - 1) : 0.0));
}

data::Image overlay_figure(const float* grey, int size, const MapPanel& panel, const Legend& legend) {
  if (size < 1 || grey == nullptr || panel.map == nullptr)
    throw std::invalid_argument("viz::overlay_figure: needs a slice, a map and a positive size, got size " +
                                std::to_string(size));
  const int s = scale_for(size), line = (kGlyphHeight + 3) * s, small = kGlyphHeight + 3, pad = 4 * s;
  const int bar_h = 6 * s;
  // The legend, top to bottom: method and layer (small), the map's target, the six probabilities, the
  // colour bar with its label and end values. The figure is as tall as the slice or the legend.
  const int legend_h = pad + small + line + pad + 6 * line + pad + small + bar_h + 2 + small + pad;
  data::Image fig = blank(2 * size, std::max(size, legend_h), kBackground);
  blit(fig, overlay(grey, panel.map, size, size), 0, 0);
  if (panel.no_evidence) draw_text(fig, pad, size - line, "no evidence", kText, s);

  const int x = size + pad;
  int y = pad;
  draw_text(fig, x, y, legend.method + " on " + legend.layer, kDim, 1);
  y += small;
  draw_text(fig, x, y, "map: " + panel.title, kText, s);
  y += line + pad;
  const bool covid_target = panel.title == "COVID" || panel.title == "not COVID";
  draw_text(fig, x, y, "COVID     " + prob_str(legend.covid_prob), covid_target ? kHighlight : kText, s);
  y += line;
  for (int k = 0; k < 5; ++k) {
    std::string name = kLesions[k];
    name.resize(10, ' ');
    draw_text(fig, x, y, name + prob_str(legend.lesion_prob[k]),
              panel.title == kLesions[k] ? kHighlight : kText, s);
    y += line;
  }
  y += pad;
  draw_text(fig, x, y, "map value", kDim, 1);
  y += small;
  const int bar_w = size - 2 * pad;
  draw_colour_bar(fig, x, y, bar_w, bar_h);
  y += bar_h + 2;
  draw_text(fig, x, y, "0", kText, 1);
  draw_text(fig, x + bar_w - text_width("1", 1), y, "1", kText, 1);
  return fig;
}

data::Image grid_figure(const float* grey, int size, const std::vector<MapPanel>& panels,
                        const Legend& legend) {
  if (panels.size() != 6)
    throw std::invalid_argument("viz::grid_figure: needs 6 maps (COVID and the five lesions), got " +
                                std::to_string(panels.size()));
  if (size < 1 || grey == nullptr)
    throw std::invalid_argument("viz::grid_figure: needs a slice and a positive size, got size " +
                                std::to_string(size));
  const int s = scale_for(size), line = (kGlyphHeight + 3) * s, gap = 4 * s;
  const int title_h = line + gap, footer_h = 2 * line + 2 * gap;
  const int width = 7 * size + 8 * gap, height = title_h + size + footer_h;
  data::Image fig = blank(width, height, kBackground);
  auto column_x = [&](int c) { return gap + c * (size + gap); };

  draw_text(fig, column_x(0), gap, "CT slice", kText, s);
  blit(fig, grey_image(grey, size, size), column_x(0), title_h);
  for (int c = 0; c < 6; ++c) {
    const MapPanel& p = panels[static_cast<size_t>(c)];
    if (p.map == nullptr)
      throw std::invalid_argument("viz::grid_figure: map " + std::to_string(c) + " is missing");
    const double prob = c == 0 ? legend.covid_prob : legend.lesion_prob[static_cast<size_t>(c - 1)];
    draw_text(fig, column_x(c + 1), gap, p.title + " " + prob_str(prob), kText, s);
    blit(fig, overlay(grey, p.map, size, size), column_x(c + 1), title_h);
    if (p.no_evidence) draw_text(fig, column_x(c + 1) + gap, title_h + size - line, "no evidence", kText, s);
  }
  const int fy = title_h + size + gap;
  draw_text(fig, gap, fy, legend.image_name, kText, s);
  draw_text(
      fig, gap, fy + line,
      legend.method + " on " + legend.layer + " - each map scaled to [0, 1]; titles: sigmoid probability",
      kDim, s);
  const int bar_w = 2 * size, bar_x = width - gap - bar_w - text_width("1", s) - gap;
  draw_text(fig, bar_x - text_width("0", s) - gap, fy + line, "0", kText, s);
  draw_colour_bar(fig, bar_x, fy + line, bar_w, kGlyphHeight * s);
  draw_text(fig, bar_x + bar_w + gap, fy + line, "1", kText, s);
  return fig;
}

}  // namespace ladnn::viz
