// tests/cam_image_test.cpp — the pictures of models/cam_image.h: jet colours, the overlay blend, the 5x7
// font, and the sizes and contents of the explain figures.
#include "models/cam_image.h"

#include <gtest/gtest.h>

#include "tests/test_util.h"

#include <cmath>
#include <string>
#include <vector>

namespace ladnn::viz {
namespace {


Rgb pixel(const data::Image& im, int x, int y) {
  const uint8_t* p = &im.pixels[(static_cast<size_t>(y) * im.width + x) * 3];
  return {p[0], p[1], p[2]};
}

bool same(Rgb a, Rgb b) {
  return a.r == b.r && a.g == b.g && a.b == b.b;
}

TEST(CamImage, JetMatchesMatplotlibsControlPoints) {
  // matplotlib: jet(0) = (0, 0, 0.5), jet(1) = (0.5, 0, 0); at 0.5 green is 1 and red (0.5-0.35)/0.31.
  EXPECT_TRUE(same(jet(0.0), Rgb{0, 0, 128}));
  EXPECT_TRUE(same(jet(1.0), Rgb{128, 0, 0}));
  const Rgb mid = jet(0.5);
  EXPECT_EQ(mid.g, 255);
  EXPECT_EQ(mid.r, static_cast<uint8_t>(std::lround((0.5 - 0.35) / 0.31 * 255)));
  EXPECT_EQ(mid.b, static_cast<uint8_t>(std::lround((0.65 - 0.5) / 0.31 * 255)));
  // At 0.375 green has just reached 1, red has risen 0.025 / 0.31 and blue fallen 0.035 / 0.31.
  EXPECT_TRUE(same(jet(0.375), Rgb{21, 255, 226}));
  EXPECT_TRUE(same(jet(-3.0), jet(0.0)));  // clamped
  EXPECT_TRUE(same(jet(7.0), jet(1.0)));
  // Monotone hue walk: red grows from 0.35 to 0.66, blue falls from 0.34 to 0.65.
  EXPECT_LT(jet(0.4).r, jet(0.6).r);
  EXPECT_GT(jet(0.4).b, jet(0.6).b);
}

TEST(CamImage, OverlayIsAHalfAndHalfBlend) {
  const float grey[2] = {1.0f, 0.0f}, cam[2] = {0.0f, 1.0f};
  data::Image im = overlay(grey, cam, 2, 1);
  ASSERT_EQ(im.width, 2);
  ASSERT_EQ(im.channels, 3);
  // 0.5 * 1 + 0.5 * jet(0) = (0.5, 0.5, 0.5 + 0.25): rounded from 255 * value.
  EXPECT_TRUE(same(pixel(im, 0, 0),
                   Rgb{128, 128, static_cast<uint8_t>(std::lround((0.5 + 0.5 * 128 / 255.0) * 255))}));
  EXPECT_TRUE(same(pixel(im, 1, 0), Rgb{64, 0, 0}));
  const float g2[1] = {0.3f}, c2[1] = {0.7f};
  data::Image pure = overlay(g2, c2, 1, 1, 1.0);  // image_weight 1: the slice alone
  EXPECT_TRUE(same(pixel(pure, 0, 0), Rgb{77, 77, 77}));
  EXPECT_THROW_WITH(overlay(g2, c2, 1, 1, 1.5), "overlay", "image_weight", "1.5");
}

TEST(CamImage, FontDrawsEveryPrintableGlyphInsideItsCell) {
  EXPECT_EQ(text_width("", 1), 0);
  EXPECT_EQ(text_width("A", 1), 5);
  EXPECT_EQ(text_width("AB", 1), 11);
  EXPECT_EQ(text_width("AB", 3), 33);
  for (int c = 33; c <= 126; ++c) {  // every visible glyph sets pixels, and only inside its 5x7 box
    data::Image im = blank(9, 11);
    draw_text(im, 2, 2, std::string(1, static_cast<char>(c)), Rgb{255, 255, 255});
    int lit = 0;
    for (int y = 0; y < 11; ++y)
      for (int x = 0; x < 9; ++x) {
        const bool on = pixel(im, x, y).r == 255;
        lit += on;
        if (on) {
          EXPECT_TRUE(x >= 2 && x < 7 && y >= 2 && y < 9)
              << "glyph '" << static_cast<char>(c) << "' at " << x << "," << y;
        }
      }
    EXPECT_GT(lit, 0) << "glyph '" << static_cast<char>(c) << "'";
  }
  // Distinct glyphs for characters a legend needs.
  auto bitmap = [](const std::string& s) {
    data::Image im = blank(5, 7);
    draw_text(im, 0, 0, s, Rgb{255, 255, 255});
    return im.pixels;
  };
  const std::string chars = "0123456789.COVIDGsldrPaAiBnSepTh";
  for (size_t i = 0; i < chars.size(); ++i)
    for (size_t j = i + 1; j < chars.size(); ++j)
      EXPECT_NE(bitmap(chars.substr(i, 1)), bitmap(chars.substr(j, 1))) << chars[i] << " vs " << chars[j];
  // Space draws nothing; a non-ASCII byte draws '?'; scale 2 lights 4x the pixels; text is clipped.
  EXPECT_EQ(bitmap(" "), blank(5, 7).pixels);
  EXPECT_EQ(bitmap("\xC3"), bitmap("?"));
  data::Image one = blank(12, 14), two = blank(12, 14);
  draw_text(one, 0, 0, "8", Rgb{255, 0, 0}, 1);
  draw_text(two, 0, 0, "8", Rgb{255, 0, 0}, 2);
  auto count = [](const data::Image& im) {
    int n = 0;
    for (size_t i = 0; i < im.pixels.size(); i += 3) n += im.pixels[i] == 255;
    return n;
  };
  EXPECT_EQ(count(two), 4 * count(one));
  data::Image tiny = blank(3, 3);
  draw_text(tiny, -2, -3, "Grad-CAM++", Rgb{255, 255, 255}, 2);  // must not write out of bounds
  EXPECT_THROW_WITH(draw_text(tiny, 0, 0, "x", Rgb{}, 0), "draw_text", "scale", "0");
}

TEST(CamImage, FiguresHaveTheirLayout) {
  const int size = 64;
  std::vector<float> grey(size * size, 0.5f), map(size * size, 0.0f);
  map[10 * size + 20] = 1.0f;
  Legend legend{"slice.png", "Grad-CAM++", "features", 0.9, {0.1, 0.2, 0.3, 0.4, 0.5}};
  MapPanel panel{"COVID", map.data(), false};
  data::Image fig = overlay_figure(grey.data(), size, panel, legend);
  EXPECT_EQ(fig.width, 2 * size);
  EXPECT_GE(fig.height, size);
  // The left half is the overlay itself.
  data::Image ov = overlay(grey.data(), map.data(), size, size);
  EXPECT_TRUE(same(pixel(fig, 20, 10), pixel(ov, 20, 10)));
  EXPECT_TRUE(same(pixel(fig, 3, 50), pixel(ov, 3, 50)));

  std::vector<MapPanel> six(6, panel);
  data::Image grid = grid_figure(grey.data(), size, six, legend);
  EXPECT_GT(grid.width, 7 * size);
  EXPECT_GT(grid.height, size);
  // The first column is the plain slice (grey 0.5 -> 128), the second the COVID overlay.
  bool found_slice = false, found_overlay = false;
  for (int y = 0; y < grid.height && !(found_slice && found_overlay); ++y)
    for (int x = 0; x < grid.width; ++x) {
      found_slice |= same(pixel(grid, x, y), Rgb{128, 128, 128});
      found_overlay |= same(pixel(grid, x, y), pixel(ov, 20, 10));
    }
  EXPECT_TRUE(found_slice);
  EXPECT_TRUE(found_overlay);
  EXPECT_THROW_WITH(grid_figure(grey.data(), size, std::vector<MapPanel>(5, panel), legend), "grid_figure",
                    "6 maps", "got 5");
  EXPECT_THROW_WITH(overlay_figure(grey.data(), size, MapPanel{"COVID", nullptr, false}, legend),
                    "overlay_figure");
  EXPECT_THROW_WITH(blank(0, 3), "blank", "0x3");
}

}  // namespace
}  // namespace ladnn::viz

// ---- ladnn eval --cams: which images get a grid -----------------------------------------------------------
#include "models/cam_report.h"

TEST(CamReport, PicksBestThenWorst) {
  using ladnn::pick_best_and_worst;
  // errors |p - y|: 0.1, 0.9, 0.4, 0.05, 0.7
  std::vector<int> y{1, 0, 1, 0, 1};
  std::vector<double> p{0.9, 0.9, 0.6, 0.05, 0.3};
  auto picks = pick_best_and_worst(y, p, 3);
  ASSERT_EQ(picks.size(), 3u);
  EXPECT_EQ(picks[0].index, 3u);  // best: error 0.05
  EXPECT_EQ(picks[0].kind, "best");
  EXPECT_EQ(picks[1].index, 0u);  // next best: 0.1
  EXPECT_EQ(picks[2].index, 1u);  // worst: 0.9
  EXPECT_EQ(picks[2].kind, "worst");
  EXPECT_NEAR(picks[2].error, 0.9, 1e-12);
  EXPECT_EQ(pick_best_and_worst(y, p, 50).size(), 5u);  // capped, each image once
  EXPECT_TRUE(pick_best_and_worst(y, p, 0).empty());
  EXPECT_THROW(pick_best_and_worst(y, {0.5}, 2), std::invalid_argument);
}
