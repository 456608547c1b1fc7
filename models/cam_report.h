// models/cam_report.h — Grad-CAM++ grid figures for a list of image files (ladnn explain and
// ladnn eval --cams share it).
#pragma once

#include <string>
#include <vector>

#include "data/image.h"
#include "models/gradcam.h"

namespace ladnn {

/// The slice as the network saw it (resized to size x size, no augmentation) in grey [0, 1]:
/// 0.299 R + 0.587 G + 0.114 B.
std::vector<float> grey_slice(const data::Image& image, int size);

/// Explains each image for the grid's six targets (COVID and the five lesions) and writes
/// `out_paths[i]` (a PNG: slice, COVID map, five lesion maps, probabilities). Images go through the
/// model `batch` at a time.
void write_cam_grids(LaDnn& model, const std::vector<std::string>& image_paths,
                     const std::vector<std::string>& out_paths, int size, const ExplainConfig& config,
                     int batch = 8);

/// An image chosen for `ladnn eval --cams`: its index, "best" or "worst", and |prob - label|.
struct CamPick {
  size_t index;
  std::string kind;
  double error;
};
/// The ceil(n/2) best-classified images (smallest |prob - label|) then the floor(n/2) worst (largest),
/// each group ordered from the extreme inwards; no image twice; n is capped at the number of images.
/// Ties keep the earlier image first.
std::vector<CamPick> pick_best_and_worst(const std::vector<int>& labels, const std::vector<double>& prob, int n);

}  // namespace ladnn
