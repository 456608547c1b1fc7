// models/trainer.cpp — the training loop, validation and the run folder (see trainer.h).
#include "models/trainer.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <sstream>
#include <thread>

#include "autograd/functions.h"
#include "cuda/runtime.h"
#include "models/checkpoint.h"
#include "models/graphed_step.h"
#include "models/metrics.h"
#include "optim/adam.h"
#include "optim/lr_schedule.h"
#include "optim/sgd.h"

namespace fs = std::filesystem;

namespace ladnn {

// ---- configuration ----------------------------------------------------------------------------------------

nlohmann::json TrainConfig::to_json() const {
  return {{"data_dir", data_dir}, {"out", out},         {"arch", arch},           {"loss", loss},
          {"w_main", w_main},     {"epochs", epochs},   {"batch", batch},         {"lr", lr},
          {"wd", wd},             {"optimizer", optimizer}, {"schedule", schedule}, {"step_size", step_size},
          {"gamma", gamma},       {"seed", seed},       {"device", device},       {"image_size", image_size},
          {"workers", workers},   {"cache_mb", cache_mb}, {"augment", augment}, {"skip_bad", skip_bad},   {"init", init},
          {"max_batches", max_batches}, {"memory_efficient", memory_efficient}, {"cuda_graph", cuda_graph}};
}

TrainConfig TrainConfig::from_json(const nlohmann::json& j) {
  check(j.is_object(), "train config: expected a JSON object");
  TrainConfig c;
  nlohmann::json merged = c.to_json();
  for (const auto& [key, value] : j.items()) {
    check(merged.contains(key), "train config: unknown field '" + key + "'");
    check(std::string(merged[key].type_name()) == value.type_name() ||
              (merged[key].is_number() && value.is_number()),
          "train config: field '" + key + "' should be a " + merged[key].type_name() + ", got " +
              value.type_name());
    merged[key] = value;
  }
  c.data_dir = merged["data_dir"];
  c.out = merged["out"];
  c.arch = merged["arch"];
  c.loss = merged["loss"];
  c.w_main = merged["w_main"];
  c.epochs = merged["epochs"];
  c.batch = merged["batch"];
  c.lr = merged["lr"];
  c.wd = merged["wd"];
  c.optimizer = merged["optimizer"];
  c.schedule = merged["schedule"];
  c.step_size = merged["step_size"];
  c.gamma = merged["gamma"];
  c.seed = merged["seed"];
  c.device = merged["device"];
  c.image_size = merged["image_size"];
  c.workers = merged["workers"];
  c.cache_mb = merged["cache_mb"];
  c.augment = merged["augment"];
  c.skip_bad = merged["skip_bad"];
  c.init = merged["init"];
  c.max_batches = merged["max_batches"];
  c.memory_efficient = merged["memory_efficient"];
  c.cuda_graph = merged["cuda_graph"];
  return c;
}

void TrainConfig::validate() const {
  DenseNetConfig::by_name(arch);  // throws naming the choices
  loss_mode_by_name(loss);
  check(epochs >= 1, "--epochs must be at least 1, got " + std::to_string(epochs));
  check(batch >= 2, "--batch must be at least 2 (train-mode BatchNorm needs 2 values), got " +
                        std::to_string(batch));
  check(lr > 0 && std::isfinite(lr), "--lr must be positive");
  check(wd >= 0, "--wd must be >= 0");
  check(w_main > 0, "--w-main must be positive");
  check(optimizer == "adam" || optimizer == "adamw" || optimizer == "sgd",
        "--optimizer must be adam, adamw or sgd, got '" + optimizer + "'");
  check(schedule == "none" || schedule == "cosine" || schedule == "step",
        "--schedule must be none, cosine or step, got '" + schedule + "'");
  check(image_size >= 32, "--size must be at least 32 (DenseNet downsamples 32x), got " +
                              std::to_string(image_size));
  check(workers >= -1 && workers <= 256,
        "--workers must be -1 (automatic) or 0 to 256, got " + std::to_string(workers));
  check(cache_mb >= 0 && cache_mb <= (int64_t{1} << 30),
        "--cache-mb must be 0 (off) or a positive number of MiB, got " + std::to_string(cache_mb));
  check(device == "cpu" || device == "cuda", "--device must be cpu or cuda, got '" + device + "'");
  check(!cuda_graph || device == "cuda", "--cuda-graph needs --device cuda (CUDA graphs are a GPU feature)");
  check(!data_dir.empty(), "--data is required (a folder with data_split/ and CT_COVID/, CT_NonCOVID/)");
  check(!out.empty(), "--out is required (the run folder)");
}

// ---- prediction ----------------------------------------------------------------------------------------------

double accuracy_at_half(const std::vector<int>& y, const std::vector<double>& prob) {
  if (y.empty()) return NAN;
  int64_t right = 0;
  for (size_t i = 0; i < y.size(); ++i) right += (prob[i] >= 0.5) == (y[i] == 1);
  return static_cast<double>(right) / static_cast<double>(y.size());
}

Predictions predict(LaDnn& model, data::Loader& loader, const LossConfig& loss) {
  model.eval();
  NoGradGuard no_grad;
  Predictions p;
  double loss_sum = 0;
  const Device device = model.parameters().front().tensor().device();
  loader.start_epoch(0);
  data::Batch b;
  while (loader.next(b)) {
    LaDnn::Output out = model.forward_heads(Variable(b.images.to(device)));
    double l = lesion_attention_loss(out, b.covid.to(device), b.lesions.to(device), b.lesion_mask.to(device), loss)
                   .tensor()
                   .item();
    loss_sum += l * static_cast<double>(b.size());
    std::vector<double> c = ops::sigmoid(out.covid.tensor()).to(Device::cpu()).to_vector();
    std::vector<double> les = ops::sigmoid(out.lesions.tensor()).to(Device::cpu()).to_vector();
    std::vector<double> cy = b.covid.to_vector(), ly = b.lesions.to_vector(), m = b.lesion_mask.to_vector();
    for (int64_t i = 0; i < b.size(); ++i) {
      p.names.push_back(b.names[i]);
      p.covid.push_back(cy[i] > 0.5 ? 1 : 0);
      p.covid_prob.push_back(c[i]);
      std::array<int, 5> labels{};
      std::array<double, 5> probs{};
      for (int k = 0; k < 5; ++k) {
        labels[k] = ly[i * 5 + k] > 0.5 ? 1 : 0;
        probs[k] = les[i * 5 + k];
      }
      p.lesions.push_back(labels);
      p.lesion_prob.push_back(probs);
      p.has_lesion_labels.push_back(m[i] > 0.5);
    }
  }
  p.loss = p.names.empty() ? NAN : loss_sum / static_cast<double>(p.names.size());
  return p;
}

// ---- the training loop --------------------------------------------------------------------------------------

namespace {

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "--:--";
  auto s = static_cast<int64_t>(seconds + 0.5);
  char buf[32];
  if (s >= 3600) std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", (long long)(s / 3600), (long long)(s / 60 % 60), (long long)(s % 60));
  else std::snprintf(buf, sizeof buf, "%02lld:%02lld", (long long)(s / 60), (long long)(s % 60));
  return buf;
}

/// A one-line progress bar on stderr: redrawn in place on a terminal, a line every ~10% otherwise.
class ProgressBar {
 public:
  ProgressBar(bool enabled, int epoch, int epochs, int64_t total)
      : enabled_(enabled), tty_(isatty(2)), epoch_(epoch), epochs_(epochs), total_(total),
        start_(std::chrono::steady_clock::now()) {}
  void update(int64_t done, int64_t images, double loss) {
    if (!enabled_) return;
    double elapsed = seconds();
    if (!tty_ && done != total_ && done * 10 / total_ == (done - 1) * 10 / total_) return;
    const int width = 24;
    int filled = total_ > 0 ? static_cast<int>(width * done / total_) : width;
    double rate = elapsed > 0 ? images / elapsed : 0;
    double eta = done > 0 ? elapsed / done * (total_ - done) : NAN;
    std::ostringstream line;
    line << "epoch " << epoch_ << "/" << epochs_ << " [" << std::string(filled, '#')
         << std::string(width - filled, '.') << "] " << done << "/" << total_ << "  loss " << std::fixed
         << std::setprecision(4) << loss << "  " << std::setprecision(1) << rate << " img/s  ETA "
         << format_duration(eta);
    std::cerr << (tty_ ? "\r" : "") << line.str() << (tty_ ? "\033[K" : "\n") << std::flush;
  }
  void finish() {
    if (enabled_ && tty_) std::cerr << "\n";
  }
  double seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }

 private:
  bool enabled_, tty_;
  int epoch_, epochs_;
  int64_t total_;
  std::chrono::steady_clock::time_point start_;
};

const char* kCsvHeader = "epoch,lr,train_loss,train_acc,val_loss,val_acc,val_auc,seconds,images_per_second,best";

std::string csv_row(const EpochMetrics& m) {
  std::ostringstream os;
  os << std::setprecision(9) << m.epoch << "," << m.lr << "," << m.train_loss << "," << m.train_acc << ","
     << m.val_loss << "," << m.val_acc << "," << m.val_auc << "," << m.seconds << "," << m.images_per_second
     << "," << (m.best ? 1 : 0);
  return os.str();
}

/// Rows of metrics.csv with epoch <= up_to (a resumed run drops rows written after its checkpoint).
std::vector<EpochMetrics> read_metrics(const std::string& path, int up_to) {
  std::vector<EpochMetrics> rows;
  std::ifstream in(path);
  if (!in) return rows;
  std::string line;
  std::getline(in, line);  // header
  while (std::getline(in, line)) {
    std::vector<double> v;
    std::stringstream ss(line);
    std::string cell;
    while (std::getline(ss, cell, ',')) v.push_back(std::strtod(cell.c_str(), nullptr));
    if (v.size() != 10) throw std::runtime_error(path + ": malformed row '" + line + "'");
    EpochMetrics m;
    m.epoch = static_cast<int>(v[0]);
    m.lr = v[1];
    m.train_loss = v[2];
    m.train_acc = v[3];
    m.val_loss = v[4];
    m.val_acc = v[5];
    m.val_auc = v[6];
    m.seconds = v[7];
    m.images_per_second = v[8];
    m.best = v[9] != 0;
    if (m.epoch <= up_to) rows.push_back(m);
  }
  return rows;
}

void write_metrics(const std::string& path, const std::vector<EpochMetrics>& rows) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    if (!out) throw std::runtime_error("cannot write " + tmp);
    out << kCsvHeader << "\n";
    for (const auto& m : rows) out << csv_row(m) << "\n";
    if (!out) throw std::runtime_error("error writing " + tmp);
  }
  fs::rename(tmp, path);
}

std::unique_ptr<Optimizer> make_optimizer(const TrainConfig& c, std::vector<Variable> params) {
  if (c.optimizer == "adamw") return std::make_unique<AdamW>(std::move(params), c.lr, 0.9, 0.999, 1e-8, c.wd);
  if (c.optimizer == "sgd") return std::make_unique<SGD>(std::move(params), c.lr, 0.9, 0.0, c.wd, false);
  return std::make_unique<Adam>(std::move(params), c.lr, 0.9, 0.999, 1e-8, c.wd);
}

std::unique_ptr<LRScheduler> make_schedule(const TrainConfig& c, Optimizer& opt) {
  if (c.schedule == "cosine") return std::make_unique<CosineAnnealingLR>(opt, c.epochs);
  if (c.schedule == "step") return std::make_unique<StepLR>(opt, c.step_size, c.gamma);
  return nullptr;
}

/// -1 (automatic): one thread per core beyond the one driving the GPU, at least 2 and at most 8 — a
/// worker builds ~500 images/s (bench/data_bench.cpp), and the H200's replayed batch-64 step takes
/// ~1,200/s.
int resolve_workers(int workers) {
  if (workers >= 0) return workers;
  const int cores = static_cast<int>(std::thread::hardware_concurrency());
  return std::clamp(cores - 1, 2, 8);
}

data::LoaderOptions loader_options(const TrainConfig& c, bool train) {
  data::LoaderOptions o;
  o.batch_size = c.batch;
  o.shuffle = train;
  o.augment = train && c.augment;
  o.image_size = c.image_size;
  o.workers = resolve_workers(c.workers);
  o.cache_bytes = c.cache_mb << 20;
  // A last batch of 1 cannot be normalised by train-mode BN; PyTorch users drop it the same way.
  o.drop_last = train;
  o.skip_bad = c.skip_bad;
  o.seed = c.seed;
  return o;
}

}  // namespace

Trainer::Trainer(TrainConfig config) : config_(std::move(config)) {}

std::vector<EpochMetrics> Trainer::run() {
  const std::string last_path = config_.out + "/last.safetensors";
  const std::string best_path = config_.out + "/best.safetensors";
  const std::string csv_path = config_.out + "/metrics.csv";

  // Resuming: the checkpoint's configuration wins, except what may change between sessions.
  Checkpoint resumed;
  const bool resuming = config_.resume && fs::exists(last_path);
  if (config_.resume && !resuming)
    throw std::runtime_error("--resume: no " + last_path + " to resume from");
  if (resuming) {
    resumed = load_checkpoint(last_path);
    TrainConfig saved = TrainConfig::from_json(resumed.state.config);
    saved.epochs = config_.epochs;
    saved.data_dir = config_.data_dir;
    saved.out = config_.out;
    saved.workers = config_.workers;
    saved.cache_mb = config_.cache_mb;
    saved.progress = config_.progress;
    saved.device = config_.device;
    saved.cuda_graph = config_.cuda_graph;
    saved.max_batches = config_.max_batches;
    saved.stop_after = config_.stop_after;
    config_ = saved;
  }
  config_.validate();
  if (config_.device == "cuda" && !cuda::available())
    throw std::runtime_error("--device cuda: " + cuda::unavailable_reason() + "; train with --device cpu");
  const Device device = config_.device == "cuda" ? Device::cuda() : Device::cpu();
  fs::create_directories(config_.out);
  {
    std::ofstream cfg(config_.out + "/config.json");
    cfg << config_.to_json().dump(2) << "\n";
  }

  Generator gen(config_.seed);
  DenseNetConfig arch = DenseNetConfig::by_name(config_.arch);
  arch.memory_efficient = config_.memory_efficient;
  auto model = std::make_shared<LaDnn>(arch, gen);
  if (!config_.init.empty() && !resuming) init_from_pretrained(*model, config_.init);
  if (resuming) model->load_state_dict(resumed.model);  // before the move: checkpoints live on the CPU
  model->to(device);
  auto optimizer = make_optimizer(config_, model->parameters());
  auto schedule = make_schedule(config_, *optimizer);
  std::unique_ptr<GraphedTrainStep> graphed;  // made after a resume has loaded the optimizer state
  TrainingState state;
  state.config = config_.to_json();
  std::vector<EpochMetrics> history;
  if (resuming) {
    if (!resumed.optimizer.tensors.empty() || !resumed.optimizer.scalars.empty())
      optimizer->load_state_dict(resumed.optimizer);
    if (schedule) {
      std::map<std::string, double> s;
      for (const auto& [k, v] : resumed.state.schedule.items()) s[k] = v.get<double>();
      schedule->load_state_dict(s);
    }
    if (!resumed.state.rng_state.empty()) gen.set_state(resumed.state.rng_state);
    state.epoch = resumed.state.epoch;
    state.best_val_loss = resumed.state.best_val_loss;
    history = read_metrics(csv_path, static_cast<int>(state.epoch));
  }
  write_metrics(csv_path, history);

  LossConfig loss{loss_mode_by_name(config_.loss), config_.w_main};
  if (config_.cuda_graph) graphed = std::make_unique<GraphedTrainStep>(*model, *optimizer, loss);
  data::Loader train(data::read_split(config_.data_dir, "train"), loader_options(config_, true));
  data::Loader val(data::read_split(config_.data_dir, "val"), loader_options(config_, false));

  const int first_epoch = static_cast<int>(state.epoch) + 1;
  int last_epoch = config_.epochs;
  if (config_.stop_after > 0) last_epoch = std::min(last_epoch, first_epoch - 1 + config_.stop_after);
  for (int epoch = first_epoch; epoch <= last_epoch; ++epoch) {
    EpochMetrics m;
    m.epoch = epoch;
    m.lr = optimizer->lr();
    model->train();
    train.start_epoch(epoch);
    int64_t total = train.num_batches();
    if (config_.max_batches > 0) total = std::min(total, config_.max_batches);
    ProgressBar bar(config_.progress, epoch, config_.epochs, total);
    double loss_sum = 0;
    int64_t images = 0, correct = 0, done = 0, counted = 0;
    // One finished step into the epoch's figures, in order (graphed steps arrive one step late).
    auto count = [&](double lv, const std::vector<double>& logits, const std::vector<double>& y) {
      ++counted;
      check(std::isfinite(lv), "training diverged: the loss is " + std::to_string(lv) + " at epoch " +
                                   std::to_string(epoch) + ", batch " + std::to_string(counted) + "; lower --lr");
      for (size_t i = 0; i < y.size(); ++i) correct += (logits[i] >= 0) == (y[i] > 0.5);
      loss_sum += lv * static_cast<double>(y.size());
      images += static_cast<int64_t>(y.size());
      bar.update(counted, images, loss_sum / static_cast<double>(images));
    };
    auto count_graphed = [&](bool wait) {
      GraphedTrainStep::Result r;
      while (graphed->next_result(r, wait)) count(r.loss, r.covid_logit.to_vector(), r.covid.to_vector());
    };
    data::Batch b;
    while (done < total && train.next(b)) {
      ++done;
      if (graphed) {
        // Queued: the host fetches the next batch while the GPU runs this one.
        graphed->submit(b.images, b.covid, b.lesions, b.lesion_mask);
        count_graphed(false);
        continue;
      }
      LaDnn::Output out = model->forward_heads(Variable(b.images.to(device)));
      Variable l = lesion_attention_loss(out, b.covid.to(device), b.lesions.to(device), b.lesion_mask.to(device), loss);
      optimizer->zero_grad();
      l.backward();
      optimizer->step();
      count(l.tensor().item(), out.covid.tensor().to(Device::cpu()).to_vector(), b.covid.to_vector());
    }
    if (graphed) count_graphed(true);
    bar.finish();
    m.seconds = bar.seconds();
    m.train_loss = images ? loss_sum / static_cast<double>(images) : NAN;
    m.train_acc = images ? static_cast<double>(correct) / static_cast<double>(images) : NAN;
    m.images_per_second = m.seconds > 0 ? images / m.seconds : 0;

    Predictions pv = predict(*model, val, loss);
    m.val_loss = pv.loss;
    m.val_acc = accuracy_at_half(pv.covid, pv.covid_prob);
    m.val_auc = metrics::roc_auc(pv.covid, pv.covid_prob);
    if (schedule) schedule->step();

    state.epoch = epoch;
    state.rng_state = gen.state();
    if (schedule) {
      state.schedule = nlohmann::json::object();
      for (const auto& [k, v] : schedule->state_dict()) state.schedule[k] = v;
    }
    m.best = m.val_loss < state.best_val_loss;
    if (m.best) state.best_val_loss = m.val_loss;
    // Checkpoint first, then the CSV: a crash in between leaves a row that a resume rewrites.
    save_checkpoint(last_path, *model, optimizer.get(), state);
    if (m.best) save_checkpoint(best_path, *model, nullptr, state);
    history.push_back(m);
    write_metrics(csv_path, history);
    if (on_epoch) on_epoch(m);
  }
  if (graphed && config_.progress)
    std::cerr << "cuda-graph: " << graphed->replays() << " replayed steps, " << graphed->captures() << " captures, "
              << graphed->eager_steps() << " eager steps (the first, and short batches)\n";
  return history;
}

}  // namespace ladnn
