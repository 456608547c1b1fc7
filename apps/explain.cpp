// apps/explain.cpp — `ladnn explain`: Grad-CAM++ (or Grad-CAM) maps of a trained LA-DNN as PNGs.
//
//   ladnn explain --model CKPT [--target covid|GGO|Csld|CrPa|AirBr|InSepThi|not-covid|all]
//                 [--method gradcampp|gradcam] [--layer features|norm5] [--size S] IMAGE... --out DIR
//
// For every image it writes, in DIR:
//   <stem>_<target>.png  per requested target: the map blended over the slice, beside a legend of the
//                        COVID and lesion probabilities (models/cam_image.h)
//   <stem>_grid.png      the slice, the COVID map and the five lesion maps side by side
// Images are processed in batches; one forward per batch serves every target (models/gradcam.h).
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>
#include <set>

#include "apps/apps.h"
#include "cuda/runtime.h"
#include "data/image.h"
#include "data/transforms.h"
#include "models/cam_image.h"
#include "models/checkpoint.h"
#include "models/cam_report.h"
#include "models/gradcam.h"

namespace ladnn::apps {

namespace {
struct ExplainOptions {
  std::string model;
  std::vector<std::string> images;
  std::string out;
  std::vector<std::string> targets{"all"};
  std::string method = "gradcampp";
  std::string layer = "features";
  std::string device = "cpu";
  int size = 0;  // 0: the checkpoint's training size
  int batch = 8;
};

Device parse_device(const std::string& name) {
  if (name == "cpu") return Device::cpu();
  if (name == "cuda" || name.rfind("cuda:", 0) == 0) {
    check(cuda::available(),
          "explain: --device " + name + " asked for, but CUDA is unavailable: " + cuda::unavailable_reason());
    return Device::cuda(name == "cuda" ? 0 : std::stoi(name.substr(5)));
  }
  throw std::invalid_argument("explain: unknown --device '" + name + "' (choose cpu or cuda)");
}

/// A file name part from a path's stem, unique among `used` (a second "a.png" becomes "a_2").
std::string unique_stem(const std::string& path, std::set<std::string>& used) {
  const std::string stem = std::filesystem::path(path).stem().string();
  std::string name = stem.empty() ? "image" : stem;
  for (int k = 2; used.count(name); ++k) name = stem + "_" + std::to_string(k);
  used.insert(name);
  return name;
}

/// The slice as the figures show it: the network's (size, size) resize, unnormalised, as luminance.

void run_explain(const ExplainOptions& o) {
  // What to explain: the requested targets, and always the grid's six.
  std::vector<LadnnTarget> requested;
  for (const std::string& t : o.targets) {
    if (t == "all") {
      for (LadnnTarget g : ladnn_grid_targets()) requested.push_back(g);
    } else {
      requested.push_back(ladnn_target_by_name(t));
    }
  }
  std::vector<LadnnTarget> targets = ladnn_grid_targets();
  for (LadnnTarget t : requested)
    if (std::find(targets.begin(), targets.end(), t) == targets.end()) targets.push_back(t);
  std::vector<LadnnTarget> files;  // the requested ones, once each, in order
  for (LadnnTarget t : requested)
    if (std::find(files.begin(), files.end(), t) == files.end()) files.push_back(t);

  ExplainConfig cfg;
  cfg.cam.method = cam_method_by_name(o.method);
  cfg.layer = cam_layer_by_name(o.layer);
  const Device device = parse_device(o.device);

  Checkpoint ckpt = load_checkpoint(o.model);
  std::shared_ptr<LaDnn> model = model_from_checkpoint(ckpt);
  model->to(device);
  const int size = o.size > 0 ? o.size : ckpt.state.config.value("image_size", 224);
  check(size >= 32,
        "explain: --size must be at least 32 (DenseNet downsamples 32x), got " + std::to_string(size));
  std::filesystem::create_directories(o.out);

  std::set<std::string> used;
  for (size_t start = 0; start < o.images.size(); start += static_cast<size_t>(o.batch)) {
    const size_t end = std::min(o.images.size(), start + static_cast<size_t>(o.batch));
    std::vector<Tensor> inputs;
    std::vector<std::vector<float>> greys;
    for (size_t i = start; i < end; ++i) {
      data::Image image = data::read_image(o.images[i]);
      inputs.push_back(data::transform(image, size).unsqueeze(0));  // ImageNet-normalised, as trained
      greys.push_back(grey_slice(image, size));
    }
    Explanation e = explain(*model, ops::cat(inputs, 0), targets, cfg);
    const int64_t n = static_cast<int64_t>(end - start);
    const float* maps = e.maps.data<float>();    // (T, N, S, S)
    const Tensor raw_maps = e.raw.contiguous();  // (T, N, h, w)
    const float* raw = raw_maps.data<float>();
    const int64_t plane = static_cast<int64_t>(size) * size, raw_plane = e.raw.size(2) * e.raw.size(3);

    for (int64_t i = 0; i < n; ++i) {
      const std::string& path = o.images[start + static_cast<size_t>(i)];
      viz::Legend legend;
      legend.image_name = path;
      legend.method = cam_method_title(cfg.cam.method);
      legend.layer = cam_layer_name(cfg.layer);
      legend.covid_prob = e.covid_prob.at({i});
      for (int k = 0; k < 5; ++k) legend.lesion_prob[static_cast<size_t>(k)] = e.lesion_prob.at({i, k});
      auto panel = [&](size_t t) {
        const float* r = raw + (static_cast<int64_t>(t) * n + i) * raw_plane;
        viz::MapPanel p;
        p.title = ladnn_target_title(targets[t]);
        p.map = maps + (static_cast<int64_t>(t) * n + i) * plane;
        p.no_evidence = *std::max_element(r, r + raw_plane) <= 0;
        return p;
      };
      const std::string stem = unique_stem(path, used);
      const std::vector<float>& grey = greys[static_cast<size_t>(i)];
      std::vector<std::string> written;
      for (LadnnTarget t : files) {
        const size_t ti = static_cast<size_t>(std::find(targets.begin(), targets.end(), t) - targets.begin());
        const std::string file =
            (std::filesystem::path(o.out) / (stem + "_" + ladnn_target_name(t) + ".png")).string();
        data::write_png(file, viz::overlay_figure(grey.data(), size, panel(ti), legend));
        written.push_back(file);
      }
      std::vector<viz::MapPanel> grid;
      for (size_t t = 0; t < 6; ++t) grid.push_back(panel(t));  // the grid's six come first in `targets`
      const std::string grid_file = (std::filesystem::path(o.out) / (stem + "_grid.png")).string();
      data::write_png(grid_file, viz::grid_figure(grey.data(), size, grid, legend));
      written.push_back(grid_file);

      std::printf("%s  COVID %.3f", path.c_str(), legend.covid_prob);
      for (int k = 0; k < 5; ++k)
        std::printf("  %s %.3f", kLesionNames[static_cast<size_t>(k)],
                    legend.lesion_prob[static_cast<size_t>(k)]);
      std::printf("\n");
      for (const std::string& f : written) std::printf("  wrote %s\n", f.c_str());
    }
  }
}

void add_explain(CLI::App& app) {
  auto o = std::make_shared<ExplainOptions>();
  CLI::App* cmd = app.add_subcommand(
      "explain",
      "Grad-CAM++ heat maps of the COVID and lesion outputs over CT slices (PNG overlays and a grid)");
  cmd->add_option("--model", o->model,
                  "A checkpoint written by ladnn train (best.safetensors, last.safetensors)")
      ->required();
  cmd->add_option("images", o->images, "PNG or JPEG CT slices")->required();
  cmd->add_option("--out", o->out, "Folder for the PNGs (created if missing)")->required();
  cmd->add_option("--target", o->targets,
                  "What to explain, one or more of: covid, GGO, Csld, CrPa, AirBr, InSepThi, not-covid (the "
                  "negated COVID logit: why not COVID), all (COVID and the five lesions); repeat the flag or "
                  "separate with commas. The grid is always made")
      ->expected(1)
      ->delimiter(',')
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)
      ->capture_default_str();
  cmd->add_option("--method", o->method, "gradcampp (Grad-CAM++) | gradcam (Grad-CAM)")
      ->capture_default_str();
  cmd->add_option("--layer", o->layer,
                  "features (the final map after norm5's ReLU) | norm5 (before it, what pytorch-grad-cam "
                  "users hook)")
      ->capture_default_str();
  cmd->add_option("--size", o->size, "Input size S (S x S); 0 = the size the checkpoint was trained at")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--device", o->device, "cpu | cuda (the model's device; the maps are the same)")
      ->capture_default_str();
  cmd->add_option("--batch", o->batch, "Images per forward pass")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->callback([o] { run_explain(*o); });
}
}  // namespace

static const Registration kExplain{"explain", 40, add_explain};

}  // namespace ladnn::apps
