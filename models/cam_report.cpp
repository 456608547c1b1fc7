// models/cam_report.cpp — grid figures for image files (see cam_report.h).
#include "models/cam_report.h"

#include <algorithm>
#include <cmath>

#include "data/transforms.h"
#include "models/cam_image.h"

namespace ladnn {

std::vector<float> grey_slice(const data::Image& image, int size) {
  Tensor rgb = data::transform(image, size, {}, data::Normalize::none());  // (3, S, S) in [0, 1]
  const float* p = rgb.data<float>();
  const size_t n = static_cast<size_t>(size) * size;
  std::vector<float> grey(n);
  for (size_t i = 0; i < n; ++i) grey[i] = 0.299f * p[i] + 0.587f * p[n + i] + 0.114f * p[2 * n + i];
  return grey;
}

void write_cam_grids(LaDnn& model, const std::vector<std::string>& image_paths,
                     const std::vector<std::string>& out_paths, int size, const ExplainConfig& config,
                     int batch) {
  check(image_paths.size() == out_paths.size(), "write_cam_grids: " + std::to_string(image_paths.size()) +
                                                     " images but " + std::to_string(out_paths.size()) +
                                                     " output paths");
  check(batch >= 1, "write_cam_grids: batch must be positive");
  const std::vector<LadnnTarget> targets = ladnn_grid_targets();
  for (size_t start = 0; start < image_paths.size(); start += static_cast<size_t>(batch)) {
    const size_t end = std::min(image_paths.size(), start + static_cast<size_t>(batch));
    std::vector<Tensor> inputs;
    std::vector<std::vector<float>> greys;
    for (size_t i = start; i < end; ++i) {
      data::Image image = data::read_image(image_paths[i]);
      inputs.push_back(data::transform(image, size).unsqueeze(0));  // ImageNet-normalised, as trained
      greys.push_back(grey_slice(image, size));
    }
    Explanation e = explain(model, ops::cat(inputs, 0), targets, config);
    const int64_t n = static_cast<int64_t>(end - start);
    const Tensor maps_t = e.maps.contiguous(), raw_t = e.raw.contiguous();
    const float* maps = maps_t.data<float>();  // (T, N, S, S)
    const float* raw = raw_t.data<float>();    // (T, N, h, w)
    const int64_t plane = static_cast<int64_t>(size) * size, raw_plane = e.raw.size(2) * e.raw.size(3);
    for (int64_t i = 0; i < n; ++i) {
      viz::Legend legend;
      legend.image_name = image_paths[start + static_cast<size_t>(i)];
      legend.method = cam_method_title(config.cam.method);
      legend.layer = cam_layer_name(config.layer);
      legend.covid_prob = e.covid_prob.at({i});
      for (int k = 0; k < 5; ++k) legend.lesion_prob[static_cast<size_t>(k)] = e.lesion_prob.at({i, k});
      std::vector<viz::MapPanel> grid;
      for (size_t t = 0; t < targets.size(); ++t) {
        const float* r = raw + (static_cast<int64_t>(t) * n + i) * raw_plane;
        viz::MapPanel p;
        p.title = ladnn_target_title(targets[t]);
        p.map = maps + (static_cast<int64_t>(t) * n + i) * plane;
        p.no_evidence = *std::max_element(r, r + raw_plane) <= 0;
        grid.push_back(p);
      }
      data::write_png(out_paths[start + static_cast<size_t>(i)],
                      viz::grid_figure(greys[static_cast<size_t>(i)].data(), size, grid, legend));
    }
  }
}

std::vector<CamPick> pick_best_and_worst(const std::vector<int>& labels, const std::vector<double>& prob, int n) {
  check(labels.size() == prob.size(), "pick_best_and_worst: " + std::to_string(labels.size()) + " labels but " +
                                          std::to_string(prob.size()) + " probabilities");
  check(n >= 0, "--cams must be >= 0, got " + std::to_string(n));
  std::vector<size_t> order(labels.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  auto err = [&](size_t i) { return std::fabs(prob[i] - labels[i]); };
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return err(a) < err(b); });
  const size_t total = std::min(order.size(), static_cast<size_t>(n));
  const size_t best = (total + 1) / 2, worst = total - best;
  std::vector<CamPick> picks;
  for (size_t k = 0; k < best; ++k) picks.push_back({order[k], "best", err(order[k])});
  for (size_t k = 0; k < worst; ++k) {
    size_t i = order[order.size() - 1 - k];
    picks.push_back({i, "worst", err(i)});
  }
  return picks;
}

}  // namespace ladnn
