// apps/predict.cpp — `ladnn predict`: COVID and lesion probabilities for CT images.
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "apps/apps.h"
#include "autograd/functions.h"
#include "data/image.h"
#include "data/transforms.h"
#include "models/checkpoint.h"

namespace ladnn::apps {

namespace {
struct PredictOptions {
  std::string model;
  std::vector<std::string> images;
  bool json = false;
  bool skip_bad = false;
  int batch = 16;
};

void run_predict(const PredictOptions& o) {
  Checkpoint ckpt = load_checkpoint(o.model);
  auto model = model_from_checkpoint(ckpt);
  const int size = ckpt.state.config.value("image_size", 224);
  nlohmann::json out = nlohmann::json::array();
  if (!o.json) {
    std::printf("%-48s %7s", "image", "COVID");
    for (const char* l : kLesionNames) std::printf(" %8s", l);
    std::printf("\n");
  }
  NoGradGuard no_grad;
  for (size_t start = 0; start < o.images.size(); start += o.batch) {
    std::vector<Tensor> batch;
    std::vector<std::string> names;
    for (size_t i = start; i < std::min(o.images.size(), start + o.batch); ++i) {
      try {
        batch.push_back(data::transform(data::read_image(o.images[i]), size).unsqueeze(0));
        names.push_back(o.images[i]);
      } catch (const std::exception& e) {
        if (!o.skip_bad) throw;
        std::cerr << "ladnn predict: warning: skipping " << o.images[i] << ": " << e.what() << "\n";
      }
    }
    if (batch.empty()) continue;
    LaDnn::Output y = model->forward_heads(Variable(ops::cat(batch, 0)));
    std::vector<double> covid = ops::sigmoid(y.covid.tensor()).to_vector();
    std::vector<double> lesions = ops::sigmoid(y.lesions.tensor()).to_vector();
    for (size_t i = 0; i < names.size(); ++i) {
      if (o.json) {
        nlohmann::json r = {{"image", names[i]}, {"covid", covid[i]}};
        for (int k = 0; k < 5; ++k) r["lesions"][kLesionNames[k]] = lesions[i * 5 + k];
        out.push_back(r);
      } else {
        std::string n = names[i].size() > 48 ? "..." + names[i].substr(names[i].size() - 45) : names[i];
        std::printf("%-48s %7.4f", n.c_str(), covid[i]);
        for (int k = 0; k < 5; ++k) std::printf(" %8.4f", lesions[i * 5 + k]);
        std::printf("\n");
      }
    }
  }
  if (o.json) std::cout << out.dump(2) << "\n";
}

void add_predict(CLI::App& app) {
  auto o = std::make_shared<PredictOptions>();
  CLI::App* cmd = app.add_subcommand("predict", "COVID-19 probability and the 5 lesion probabilities per image");
  cmd->add_option("--model", o->model, "A checkpoint written by ladnn train (best.safetensors, last.safetensors)")
      ->required();
  cmd->add_option("images", o->images, "PNG or JPEG CT slices")->required();
  cmd->add_flag("--json", o->json, "Print JSON instead of a table");
  cmd->add_flag("--skip-bad", o->skip_bad, "Skip unreadable images with a warning instead of stopping");
  cmd->add_option("--batch", o->batch, "Images per forward pass")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->callback([o] { run_predict(*o); });
}
}  // namespace

static const Registration kPredict{"predict", 30, add_predict};

}  // namespace ladnn::apps
