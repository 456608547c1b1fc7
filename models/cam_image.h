// models/cam_image.h — pictures of Grad-CAM maps: the jet colour map, overlays on a grey CT slice, text
// in a built-in 5x7 bitmap font, and the two figures `ladnn explain` writes.
//
//   overlay figure  [ slice with the map blended over it | legend: method, layer, target, P(COVID) and
//                     the five lesion probabilities (the explained target's line highlighted), colour bar ]
//   grid figure     [ CT slice | COVID | GGO | Csld | CrPa | AirBr | InSepThi ], each panel titled with
//                   its probability, a footer naming the image, the method and the layer, and a colour bar
//
// Colours: matplotlib's "jet" (dark blue 0 -> cyan -> yellow -> dark red 1), blended as pytorch-grad-cam's
// show_cam_on_image with image_weight 0.5 — out = w * slice + (1 - w) * jet(map) — but without its final
// division by the image's maximum, so equal map values give equal colours in every figure. A map with no
// evidence (its raw cam is 0 everywhere) is drawn blue and its panel says "no evidence".
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "data/image.h"

namespace ladnn::viz {

struct Rgb {
  uint8_t r = 0, g = 0, b = 0;
};

/// matplotlib's jet at v (clamped to [0, 1]).
Rgb jet(double v);

/// A width x height RGB image filled with `fill`.
data::Image blank(int width, int height, Rgb fill = {});
/// Grey values in [0, 1] (height rows of width, clamped) as an RGB image.
data::Image grey_image(const float* grey, int width, int height);
/// image_weight * grey + (1 - image_weight) * jet(cam), both (height, width) in [0, 1].
data::Image overlay(const float* grey, const float* cam, int width, int height, double image_weight = 0.5);

/// The font: 5 x 7 glyphs on a 6 x 8 cell, printable ASCII (32..126); other bytes draw as '?'.
inline constexpr int kGlyphWidth = 5, kGlyphHeight = 7, kAdvance = 6;
/// Pixel width of `text` at `scale` (each glyph pixel drawn as a scale x scale square).
int text_width(const std::string& text, int scale = 1);
/// Draws `text` with its top-left corner at (x, y), clipped to the image.
void draw_text(data::Image& image, int x, int y, const std::string& text, Rgb colour, int scale = 1);
/// Fills a rectangle, clipped to the image.
void fill_rect(data::Image& image, int x, int y, int width, int height, Rgb colour);
/// Copies `src` (3 channels) into `dst` with its top-left corner at (x, y), clipped.
void blit(data::Image& dst, const data::Image& src, int x, int y);
/// A horizontal jet bar from 0 (left) to 1 (right).
void draw_colour_bar(data::Image& image, int x, int y, int width, int height);

/// What the legends say about one image.
struct Legend {
  std::string image_name;  // shown in the grid's footer
  std::string method;      // "Grad-CAM++" | "Grad-CAM"
  std::string layer;       // "features" | "norm5"
  double covid_prob = 0;
  std::array<double, 5> lesion_prob{};  // kLesionNames' order
};

/// One explained target: its title ("COVID", "GGO", …, "not COVID"), its map (size x size, in [0, 1])
/// and whether the raw cam was 0 everywhere.
struct MapPanel {
  std::string title;
  const float* map = nullptr;
  bool no_evidence = false;
};

/// The overlay figure for one target: (2 * size) wide, as tall as the slice or the legend, whichever is
/// taller. `grey` is the slice (size x size, [0, 1]).
data::Image overlay_figure(const float* grey, int size, const MapPanel& panel, const Legend& legend);
/// The grid figure: the slice then the six maps (COVID and the five lesions, in that order) side by side.
/// Throws std::invalid_argument unless exactly six panels are given.
data::Image grid_figure(const float* grey, int size, const std::vector<MapPanel>& panels,
                        const Legend& legend);

}  // namespace ladnn::viz
