// models/checkpoint.h — training checkpoints as safetensors, and starting from torchvision weights.
//
// A checkpoint is one safetensors file:
//   model.<name>          every parameter and buffer, torchvision names plus covid_head/lesion_head
//   optim.<key>           the optimizer's tensors ("optim.0.exp_avg", …)
//   __metadata__          "format": "ladnn-checkpoint-1", "config": the run's configuration (JSON),
//                         "epoch", "optim_scalars" (JSON), "schedule" (JSON), "rng" (generator
//                         state), "best_val_loss", free-form "extra" (JSON)
// It is written to a temporary file, synced and renamed (tensor/safetensors.h), so a crash never
// leaves half a checkpoint; loading validates every entry and names what is wrong.
#pragma once

#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "models/ladnn.h"
#include "optim/optimizer.h"

namespace ladnn {

/// What a checkpoint holds besides the model.
struct TrainingState {
  nlohmann::json config = nlohmann::json::object();  // the run's configuration (arch, loss, lr, …)
  int64_t epoch = 0;             // epochs completed
  std::string rng_state;         // Generator::state() of the run's generator
  double best_val_loss = INFINITY;
  nlohmann::json schedule = nlohmann::json::object();  // LR schedule state
  nlohmann::json extra = nlohmann::json::object();
};

/// Writes model (+ optimizer when given) and state to `path` atomically.
void save_checkpoint(const std::string& path, const Module& model, const Optimizer* optimizer,
                     const TrainingState& state);

/// A checkpoint read back: the model's tensors, the optimizer's state and the training state.
struct Checkpoint {
  std::string path;
  StateDict model;
  OptimizerState optimizer;  // empty when saved without one
  TrainingState state;
};

/// Reads and validates `path` (format tag, every tensor, every metadata field). Throws naming the file
/// and the bad entry.
Checkpoint load_checkpoint(const std::string& path);

/// Builds the LA-DNN that `checkpoint` was trained as (architecture from its config) and loads its
/// weights, strict. The model is in eval mode.
std::shared_ptr<LaDnn> model_from_checkpoint(const Checkpoint& checkpoint);

/// Initialises `model` from any safetensors file with torchvision DenseNet names (timm's
/// densenet169.tv_in1k model.safetensors works as is): the backbone must match exactly; legacy
/// "norm.1"/"conv.2" names are renamed to "norm1"/"conv2"; "classifier.*" is ignored (LA-DNN has its
/// own heads); heads present in the file are loaded. Throws one error listing missing, unexpected and
/// mis-shaped keys. Returns how many tensors were loaded.
size_t init_from_pretrained(LaDnn& model, const std::string& path);

/// torchvision's rename of legacy DenseNet keys: "…denselayer1.norm.1.weight" -> "…denselayer1.norm1.weight".
std::string rename_legacy_densenet_key(const std::string& key);

}  // namespace ladnn
