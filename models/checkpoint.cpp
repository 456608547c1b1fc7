// models/checkpoint.cpp — checkpoints and pretrained initialisation (see checkpoint.h).
#include "models/checkpoint.h"

#include <cmath>
#include <regex>
#include <stdexcept>

#include "tensor/safetensors.h"

namespace ladnn {

namespace {
constexpr const char* kFormat = "ladnn-checkpoint-1";
constexpr const char* kModelPrefix = "model.";
constexpr const char* kOptimPrefix = "optim.";

bool starts_with(const std::string& s, const std::string& prefix) { return s.rfind(prefix, 0) == 0; }

[[noreturn]] void bad(const std::string& path, const std::string& what) {
  throw std::runtime_error("checkpoint " + path + ": " + what);
}

nlohmann::json parse_json_field(const SafetensorsFile& f, const std::string& key) {
  auto it = f.metadata.find(key);
  if (it == f.metadata.end()) bad(f.path, "metadata field '" + key + "' is missing");
  try {
    return nlohmann::json::parse(it->second);
  } catch (const std::exception& e) {
    bad(f.path, "metadata field '" + key + "' is not valid JSON (" + e.what() + ")");
  }
}
}  // namespace

void save_checkpoint(const std::string& path, const Module& model, const Optimizer* optimizer,
                     const TrainingState& state) {
  std::vector<std::pair<std::string, Tensor>> tensors;
  // Checkpoints hold CPU tensors whatever device the run is on.
  for (const auto& [name, t] : model.state_dict()) tensors.emplace_back(kModelPrefix + name, t.to(Device::cpu()));
  nlohmann::json scalars = nlohmann::json::object();
  if (optimizer) {
    OptimizerState os = optimizer->state_dict();
    for (const auto& [key, t] : os.tensors) tensors.emplace_back(kOptimPrefix + key, t.to(Device::cpu()));
    for (const auto& [key, v] : os.scalars) scalars[key] = v;
  }
  std::map<std::string, std::string> meta;
  meta["format"] = kFormat;
  meta["config"] = state.config.dump();
  meta["epoch"] = std::to_string(state.epoch);
  meta["optim_scalars"] = scalars.dump();
  meta["has_optimizer"] = optimizer ? "1" : "0";
  meta["schedule"] = state.schedule.dump();
  meta["rng"] = state.rng_state;
  // JSON has no infinity: "inf" before any validation has run.
  meta["best_val_loss"] = std::isfinite(state.best_val_loss) ? nlohmann::json(state.best_val_loss).dump() : "inf";
  meta["extra"] = state.extra.dump();
  save_safetensors(path, tensors, meta);
}

Checkpoint load_checkpoint(const std::string& path) {
  SafetensorsFile f = load_safetensors(path);  // validates the container: offsets, dtypes, sizes
  auto format = f.metadata.find("format");
  if (format == f.metadata.end() || format->second != kFormat)
    bad(path, "not a ladnn checkpoint (metadata 'format' is " +
                  (format == f.metadata.end() ? std::string("missing") : "'" + format->second + "'") +
                  ", expected '" + kFormat + "'); to start from torchvision weights use --init");
  Checkpoint c;
  c.path = path;
  for (const auto& [name, t] : f.tensors) {
    if (starts_with(name, kModelPrefix)) c.model.insert(name.substr(6), t);
    else if (starts_with(name, kOptimPrefix)) c.optimizer.tensors[name.substr(6)] = t;
    else bad(path, "tensor '" + name + "' belongs to neither the model nor the optimizer");
  }
  if (c.model.empty()) bad(path, "holds no model tensors");
  c.state.config = parse_json_field(f, "config");
  if (!c.state.config.is_object()) bad(path, "metadata 'config' is not a JSON object");
  try {
    c.state.epoch = std::stoll(f.metadata.at("epoch"));
  } catch (const std::exception&) {
    bad(path, "metadata 'epoch' is missing or not an integer");
  }
  nlohmann::json scalars = parse_json_field(f, "optim_scalars");
  if (!scalars.is_object()) bad(path, "metadata 'optim_scalars' is not a JSON object");
  for (const auto& [k, v] : scalars.items()) {
    if (!v.is_number()) bad(path, "optimizer scalar '" + k + "' is not a number");
    c.optimizer.scalars[k] = v.get<double>();
  }
  c.state.schedule = parse_json_field(f, "schedule");
  c.state.extra = parse_json_field(f, "extra");
  auto rng = f.metadata.find("rng");
  c.state.rng_state = rng == f.metadata.end() ? "" : rng->second;
  auto best = f.metadata.find("best_val_loss");
  if (best == f.metadata.end() || best->second == "inf") {
    c.state.best_val_loss = INFINITY;
  } else {
    nlohmann::json b = parse_json_field(f, "best_val_loss");
    if (!b.is_number()) bad(path, "metadata 'best_val_loss' is not a number");
    c.state.best_val_loss = b.get<double>();
  }
  return c;
}

std::shared_ptr<LaDnn> model_from_checkpoint(const Checkpoint& checkpoint) {
  auto arch = checkpoint.state.config.find("arch");
  if (arch == checkpoint.state.config.end() || !arch->is_string())
    bad(checkpoint.path, "its config names no 'arch'");
  auto model = std::make_shared<LaDnn>(DenseNetConfig::by_name(arch->get<std::string>()));
  try {
    model->load_state_dict(checkpoint.model);
  } catch (const std::exception& e) {
    bad(checkpoint.path, std::string("model weights do not fit ") + arch->get<std::string>() + ": " + e.what());
  }
  model->eval();
  return model;
}

std::string rename_legacy_densenet_key(const std::string& key) {
  // Old torchvision checkpoints named "norm1" as "norm.1" (and so on); torchvision renames them the
  // same way when loading.
  static const std::regex legacy(
      R"(^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$)");
  std::smatch m;
  if (std::regex_match(key, m, legacy)) return m[1].str() + m[2].str();
  return key;
}

size_t init_from_pretrained(LaDnn& model, const std::string& path) {
  SafetensorsFile f = load_safetensors(path);
  StateDict own = model.state_dict();
  StateDict incoming;
  std::vector<std::string> unexpected;
  for (const auto& [raw, t] : f.tensors) {
    std::string name = rename_legacy_densenet_key(raw);
    if (starts_with(name, "classifier.")) continue;  // ImageNet's 1000-way head: LA-DNN has its own
    if (!own.contains(name)) {
      unexpected.push_back(name);
      continue;
    }
    incoming.insert(name, t);
  }
  // The backbone must be complete; the heads may be absent (a plain torchvision file has none), and
  // so may BN's num_batches_tracked (files older than PyTorch 0.4.1 lack it; PyTorch keeps 0 too).
  auto optional = [](const std::string& name) {
    return starts_with(name, "covid_head.") || starts_with(name, "lesion_head.") ||
           (name.size() > 20 && name.compare(name.size() - 20, 20, ".num_batches_tracked") == 0);
  };
  std::string missing;
  for (const auto& [name, t] : own)
    if (!incoming.contains(name) && !optional(name)) missing += (missing.empty() ? "" : ", ") + name;
  if (!missing.empty() || !unexpected.empty()) {
    std::string msg = "--init " + path + " does not fit the " + std::to_string(own.size()) + "-tensor model:";
    if (!missing.empty()) msg += " missing: " + missing + ";";
    if (!unexpected.empty()) {
      msg += " unexpected:";
      for (const auto& u : unexpected) msg += " " + u;
    }
    throw std::invalid_argument(msg);
  }
  try {
    model.load_state_dict(incoming, /*strict=*/false);  // shape mismatches are still errors
  } catch (const std::exception& e) {
    throw std::invalid_argument("--init " + path + ": " + e.what());
  }
  return incoming.size();
}

}  // namespace ladnn
