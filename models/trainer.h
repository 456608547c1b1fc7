// models/trainer.h — training and evaluating LA-DNN on a COVID-CT style data folder.
//
// The apps (`ladnn train`, `ladnn eval`, `ladnn predict`) are thin: they parse flags into these
// structs and call in here, so a test can run exactly what a user runs.
//
// A run folder (--out) holds:
//   last.safetensors   after every epoch: model, optimizer, schedule, epoch, RNG, config
//   best.safetensors   the epoch with the lowest validation loss so far
//   metrics.csv        one row per epoch (see EpochMetrics)
//   config.json        the run's configuration
// `resume` continues from last.safetensors as if the run had never stopped: the data order and
// augmentation of epoch e depend only on (seed, e), and everything else is in the checkpoint.
#pragma once

#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "data/loader.h"
#include "models/ladnn.h"

namespace ladnn {

struct TrainConfig {
  std::string data_dir;            // a folder laid out as ../shared/data/covid-ct
  std::string out;                 // the run folder
  std::string arch = "densenet169";
  bool memory_efficient = false;   // dense layers recompute concat-BN-ReLU in backward (less memory)
  bool cuda_graph = false;         // GPU: replay each step as a captured CUDA graph (models/graphed_step.h)
  std::string loss = "ladnn";      // ladnn | baseline
  double w_main = 5.0;
  int epochs = 40;
  int batch = 32;
  double lr = 5e-5;                // the paper's Adam learning rate
  double wd = 5e-4;                // L2 weight decay (torch.optim.Adam's)
  std::string optimizer = "adam";  // adam | adamw | sgd
  std::string schedule = "none";   // none | cosine | step
  int step_size = 10;              // step schedule: epochs between decays
  double gamma = 0.1;              // step schedule: decay factor
  uint64_t seed = 0;
  std::string device = "cpu";
  int image_size = 224;
  int workers = -1;                // data threads; -1: one per core beyond the first, 2 to 8
  int64_t cache_mb = 2048;         // keep decoded images in memory, up to this many MiB per split
  bool augment = true;
  bool skip_bad = false;
  std::string init;                // safetensors with torchvision DenseNet names, or ""
  bool resume = false;
  bool progress = true;            // progress bar on stderr
  int64_t max_batches = 0;         // > 0: stop each epoch after this many batches (smoke tests)
  int stop_after = 0;              // > 0: end this session after that many epochs (resume later);
                                   // the schedule still spans `epochs`. Not saved in the run.

  nlohmann::json to_json() const;
  /// Reads the fields present in `j` over the defaults; throws naming an unknown or mistyped field.
  static TrainConfig from_json(const nlohmann::json& j);
  /// Throws a sentence naming the first bad value.
  void validate() const;
};

/// One row of metrics.csv.
struct EpochMetrics {
  int epoch = 0;  // 1-based
  double lr = 0;
  double train_loss = 0, train_acc = 0;
  double val_loss = 0, val_acc = 0, val_auc = 0;
  double seconds = 0, images_per_second = 0;
  bool best = false;
};

/// What a model says about a set of images: per image the COVID probability and the lesion
/// probabilities, with the labels when the images came from a split.
struct Predictions {
  std::vector<std::string> names;
  std::vector<int> covid;                       // labels (0/1)
  std::vector<double> covid_prob;
  std::vector<std::array<int, 5>> lesions;      // labels (0/1)
  std::vector<bool> has_lesion_labels;
  std::vector<std::array<double, 5>> lesion_prob;
  double loss = 0;                              // mean loss over the images (the training loss)
};

/// Runs `model` in eval mode, without a graph, over every batch of `loader` (epoch 0).
Predictions predict(LaDnn& model, data::Loader& loader, const LossConfig& loss);

class Trainer {
 public:
  explicit Trainer(TrainConfig config);
  /// Trains (or resumes) to config.epochs, writing the run folder. Returns every epoch's metrics
  /// (for a resumed run, the earlier epochs' rows read back from metrics.csv).
  std::vector<EpochMetrics> run();
  /// Called after each epoch (the app prints a line).
  std::function<void(const EpochMetrics&)> on_epoch;

 private:
  TrainConfig config_;
};

/// The accuracy of thresholding probabilities at 0.5.
double accuracy_at_half(const std::vector<int>& y, const std::vector<double>& prob);

}  // namespace ladnn
