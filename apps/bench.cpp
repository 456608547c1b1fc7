// apps/bench.cpp — `ladnn bench`: the LA-DNN training step and inference, timed, beside PyTorch (issue 6).
//
//   ladnn bench [--arch densenet169] [--batches 1,32,64] [--work train,infer] [--steps 20] [--warmup 5]
//               [--device cuda] [--tf32 on|off] [--torch auto|off] [--graph both|on|off]
//               [--memory-efficient] [--profile] [--loss-curve N] [--graph-kernels N]
//               [--variants "LADNN_PDL=1;LADNN_BN_KERNEL=cluster"]
//
// For each batch size and each work:
//   train  one step = forward of both heads, lesion-attention loss, zero_grad, backward, Adam step
//   infer  one forward of both heads in eval mode without autograd
//   loop   (GPU) the trainer's graphed loop, models/graphed_step.h, over host batches as the loader hands
//          them (4 batches cycled): two rows, "loop sync" (step(): wait for each step, then copy the
//          next batch in) and "loop ahead" (submit(), results read one step late, the way `ladnn train
//          --cuda-graph` runs); wall clock over the timed steps, per step. Not part of the default --work.
// on random 224x224 images and labels made once (data loading is not part of the step). Timing: the
// warm-up steps, then a pair of CUDA events around each step (wall clock on the CPU), the median.
// Peak memory: eager rows, the caching allocator's peak of allocated bytes over the timed steps, what
// torch.cuda.max_memory_allocated() reports on the PyTorch side (size classes, so up to 25% above
// the bytes asked for); graph rows, everything the allocator holds from the device while the graph
// replays (its reserved bytes, after the warm-up's cache is released): live tensors, the graph's
// private pool, and any free rest of a segment in use; on the CPU, the peak of live tensor storage.
// Graph rows (--graph): the step is captured once as a CUDA graph (cuda/graph.h) after the warm-up
// and each timed step is one replay.
//
// When --torch auto and tools/bench_torch.py runs under `python3` with a CUDA torch, the same work is
// timed there in the same call and the table shows ours, PyTorch's and the ratio (PyTorch / ours:
// above 1 means ladnn is faster).
//
// --loss-curve N: from the same initial weights and the same 4 batches of 32 (cycled), N Adam steps in
// ladnn and in PyTorch; prints both loss curves and their largest difference.
// --profile: the per-op timer (cuda/profiler.h) over the timed steps of each row, printed after the table;
// for graph rows, over as many replays of a second capture whose ops' events are graph nodes (GPU time
// per op without host gaps; the row's own figure is timed without them).
// --variants SETS: after each train/infer row, the same row again under each set of GPU switches
// (cuda::set_switch by their environment names; ';' between sets, ',' within one), in this process: each
// choice made by timing (cuDNN's algorithm search, LADNN_CONV1X1 and LADNN_FUSED_CONV auto) is already
// made and is the same in every variant, so a variant costs its steps, not a second search, and rows of
// one call on one GPU compare directly. Rows "+k" in the table; the sets are listed under it.
// --graph-kernels N: what each graph row's replay launches, counted by kernel name (cuda::Graph's
// kernel_summary), the N most frequent — where the nodes of a latency-bound replay go.
#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "apps/apps.h"
#include "cuda/allocator.h"
#include "cuda/context.h"
#include "cuda/graph.h"
#include "cuda/ops.h"
#include "cuda/profiler.h"
#include "cuda/runtime.h"
#include "models/graphed_step.h"
#include "models/ladnn.h"
#include "optim/adam.h"
#include "tensor/safetensors.h"

namespace ladnn::apps {
namespace {

struct BenchOptions {
  std::string arch = "densenet169";
  std::string batches = "1,32,64";
  std::string work = "train,infer";
  int steps = 20;
  int warmup = 5;
  std::string device = "cuda";
  std::string tf32 = "on";
  std::string torch = "auto";
  std::string torch_script = "tools/bench_torch.py";
  bool profile = false;
  int loss_curve = 0;
  int image_size = 224;
  std::string graph = "both";  // eager rows, CUDA-graph rows, or both
  bool memory_efficient = false;
  int graph_kernels = 0;  // > 0: each graph row's most frequent kernels, this many
  std::string variants;   // "NAME=VALUE,...;...": each row timed again under each set of GPU switches
};

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ','))
    if (!item.empty()) out.push_back(item);
  return out;
}

/// Random images and labels for one batch (CPU tensors), from `gen`.
struct RandomBatch {
  Tensor images, covid, lesions, mask;
};

RandomBatch random_batch(int64_t n, int size, Generator& gen) {
  RandomBatch b;
  b.images = Tensor::normal({n, 3, size, size}, 0.0, 1.0, gen);
  auto bernoulli = [&](Shape shape, double p) {
    Tensor u = Tensor::uniform(shape, 0.0, 1.0, gen);
    std::vector<double> v = u.to_vector();
    for (double& x : v) x = x < p ? 1.0 : 0.0;
    return Tensor::from_vector(v, shape);
  };
  b.covid = bernoulli({n, 1}, 0.5);
  b.lesions = bernoulli({n, 5}, 0.3);
  b.mask = bernoulli({n, 1}, 0.5);
  return b;
}

RandomBatch to_device(const RandomBatch& b, Device d) {
  return {b.images.to(d), b.covid.to(d), b.lesions.to(d), b.mask.to(d)};
}

/// Milliseconds of each of `steps` calls of `fn` (warmed up by the caller); the memory peaks restart here.
template <typename Fn>
std::vector<double> time_steps(Fn&& fn, int steps, bool on_gpu) {
  if (on_gpu) cuda::synchronize();
  std::vector<double> ms;
  if (on_gpu) {
    cuda::reset_peak_stats();
    cuda::EventTimer timer;
    for (int i = 0; i < steps; ++i) {
      timer.start();
      fn();
      timer.stop();
      ms.push_back(timer.elapsed_ms());
    }
  } else {
    reset_cpu_memory_peak();
    for (int i = 0; i < steps; ++i) {
      auto t0 = std::chrono::steady_clock::now();
      fn();
      ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
  }
  return ms;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

struct Row {
  std::string work;
  bool graph = false;
  int variant = 0;    // 0: the switches as the process started; k: --variants' k-th set
  std::string error;  // the capture failed: why
  int64_t batch = 0;
  double ms = 0;
  std::size_t peak_bytes = 0;
  std::size_t graph_nodes = 0;  // graph rows: what one replay launches
  std::size_t arena_bytes = 0;  // graph rows with LADNN_GRAPH_PLAN=1: the planned arena
  std::string plan_failure;     // ... or why the plan fell back to a pool
  double torch_ms = 0;  // 0 = not measured
  std::size_t torch_peak = 0;
};

/// The benched model: o.arch (memory-efficient when asked), initialised from `gen`, on `device`.
std::shared_ptr<LaDnn> make_model(const BenchOptions& o, Device device, Generator& gen) {
  DenseNetConfig config = DenseNetConfig::by_name(o.arch);
  config.memory_efficient = o.memory_efficient;
  auto model = std::make_shared<LaDnn>(config, gen);
  model->to(device);
  return model;
}

Row run_one(const BenchOptions& o, const std::string& work, int64_t batch, Device device, bool graph) {
  const bool gpu = device.is_cuda();
  Generator gen(0);
  auto model = make_model(o, device, gen);
  RandomBatch b = to_device(random_batch(batch, o.image_size, gen), device);
  std::unique_ptr<Adam> opt;
  std::function<void()> step;
  Variable x(b.images);
  if (work == "train") {
    model->train();
    opt = std::make_unique<Adam>(model->parameters(), 1e-4);
    step = [&] {
      LaDnn::Output out = model->forward_heads(x);
      Variable l = lesion_attention_loss(out, b.covid, b.lesions, b.mask);
      opt->zero_grad();
      l.backward();
      opt->step();
    };
  } else if (work == "infer") {
    model->eval();
    step = [&] {
      NoGradGuard ng;
      model->forward_heads(x);
    };
  } else {
    throw std::invalid_argument("--work: unknown work '" + work + "' (train or infer)");
  }
  if (o.profile && gpu) cuda::profiler::set_enabled(false);
  for (int i = 0; i < std::max(o.warmup, graph ? 1 : 0); ++i) step();
  Row r;
  r.work = work;
  r.batch = batch;
  r.graph = graph;
  cuda::Graph cuda_graph;
  std::function<void()> body;  // graph rows: the step the graph replays
  if (graph) {
    cuda_graph.set_kernel_summary(o.graph_kernels > 0);
    try {
      cuda_graph.capture(step);
    } catch (const std::exception& e) {
      r.error = e.what();
      std::cerr << "bench: " << work << " batch " << batch << ": " << r.error << "\n";
      return r;
    }
    r.graph_nodes = cuda_graph.nodes();
    r.arena_bytes = cuda_graph.arena_bytes();
    r.plan_failure = cuda_graph.plan_failure();
    if (o.graph_kernels > 0) {
      std::cerr << "graph of " << work << " batch " << batch << ": " << r.graph_nodes << " nodes, by kernel:\n";
      const auto& kernels = cuda_graph.kernel_summary();
      std::size_t shown = 0, rest = 0;
      for (const auto& [name, n] : kernels) {
        if (shown++ < static_cast<std::size_t>(o.graph_kernels))
          std::cerr << "  " << std::to_string(n) << std::string(n < 10 ? 5 : n < 100 ? 4 : n < 1000 ? 3 : 2, ' ')
                    << name.substr(0, 110) << "\n";
        else
          rest += n;
      }
      if (rest) std::cerr << "  " << rest << " more in " << (kernels.size() - o.graph_kernels) << " other kernels\n";
    }
    if (gpu) cuda::release_cached();  // the eager warm-up's cache: a graph user would not keep it
    body = step;
    step = [&] { cuda_graph.replay(); };
    for (int i = 0; i < o.warmup; ++i) step();
  }
  if (o.profile && gpu && !graph) {
    cuda::synchronize();
    cuda::profiler::reset();
    cuda::profiler::set_enabled(true);
  }
  r.ms = median(time_steps(step, o.steps, gpu));
  if (gpu) {
    // Eager: the peak of live tensors. Graph: the replays allocate nothing, so the step's footprint is
    // all the device memory the allocator holds (live tensors, the graph's pool, free rests).
    const cuda::AllocatorStats st = cuda::allocator_stats();
    r.peak_bytes = graph ? st.peak_reserved_bytes : st.peak_allocated_bytes;
  } else {
    r.peak_bytes = cpu_memory_stats().peak_bytes;  // tensor storage on the host, the same measure
  }
  if (o.profile && gpu && graph) {
    // The per-op profile of the replay: the same step captured again with every op's events as nodes
    // of the graph (cuda/profiler.h capture timing), replayed and read after each replay. Timed apart
    // from the row's figure (the event nodes cost a little).
    cuda::synchronize();
    cuda::profiler::reset();
    cuda::profiler::set_enabled(true);
    cuda::profiler::set_capture_timing(true);
    try {
      cuda::Graph profiled;
      profiled.capture(body);
      for (int i = 0; i < o.steps; ++i) {
        profiled.replay();
        cuda::profiler::collect_captured();
      }
    } catch (const std::exception& e) {
      std::cerr << "bench: the profiled capture failed: " << e.what() << "\n";
    }
    cuda::profiler::set_capture_timing(false);
  }
  if (o.profile && gpu) {
    cuda::profiler::set_enabled(false);
    std::cerr << "\nper-op profile: " << work << (graph ? " (graph replays, GPU time per op)" : " (eager)")
              << ", batch " << batch << ", " << o.steps << " steps\n"
              << cuda::profiler::table();
    cuda::profiler::reset();
  }
  return r;
}

/// The "loop" rows: GraphedTrainStep over pageable host batches, synchronous or one step ahead.
Row run_loop(const BenchOptions& o, int64_t batch, Device device, bool ahead) {
  Row r;
  r.work = ahead ? "loop ahead" : "loop sync";
  r.batch = batch;
  if (!device.is_cuda()) {
    r.error = "the graphed loop needs --device cuda";
    return r;
  }
  Generator gen(0);
  auto model = make_model(o, device, gen);
  model->train();
  Adam opt(model->parameters(), 1e-4);
  GraphedTrainStep g(*model, opt, LossConfig{});
  std::vector<RandomBatch> batches;
  for (int i = 0; i < 4; ++i) batches.push_back(random_batch(batch, o.image_size, gen));
  double sink = 0;
  GraphedTrainStep::Result res;
  auto run = [&](int steps, int first) {
    for (int i = 0; i < steps; ++i) {
      const RandomBatch& b = batches[(first + i) % batches.size()];
      if (ahead) {
        g.submit(b.images, b.covid, b.lesions, b.mask);
        while (g.next_result(res, false)) sink += res.loss;
      } else {
        sink += g.step(b.images, b.covid, b.lesions, b.mask).loss;
      }
    }
    while (g.next_result(res, true)) sink += res.loss;
  };
  run(std::max(o.warmup, 2), 0);  // the eager first step and the capture
  cuda::synchronize();
  cuda::reset_peak_stats();
  const auto t0 = std::chrono::steady_clock::now();
  run(o.steps, 0);
  r.ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / o.steps;
  r.peak_bytes = cuda::allocator_stats().peak_reserved_bytes;
  if (!std::isfinite(sink)) std::cerr << "bench: the loop's loss is not finite\n";
  return r;
}

/// Runs `cmd` through the shell and returns its standard output; *ok says whether it exited with 0.
std::string command_output(const std::string& cmd, bool* ok) {
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) {
    *ok = false;
    return out;
  }
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
  *ok = pclose(p) == 0;
  return out;
}

std::string fmt(const char* f, double v) {
  char s[64];
  std::snprintf(s, sizeof s, f, v);
  return s;
}

void loss_curve(const BenchOptions& o, Device device) {
  const int64_t batch = 32;
  const int nbatches = 4;
  Generator gen(0);
  auto model = std::make_shared<LaDnn>(DenseNetConfig::by_name(o.arch), gen);
  std::vector<std::pair<std::string, Tensor>> file;
  for (const auto& [k, t] : model->state_dict()) file.emplace_back("model." + k, t);
  std::vector<RandomBatch> batches;
  for (int i = 0; i < nbatches; ++i) {
    batches.push_back(random_batch(batch, o.image_size, gen));
    const std::string p = "batch" + std::to_string(i) + ".";
    file.emplace_back(p + "images", batches.back().images);
    file.emplace_back(p + "covid", batches.back().covid);
    file.emplace_back(p + "lesions", batches.back().lesions);
    file.emplace_back(p + "mask", batches.back().mask);
  }
  file.emplace_back("steps", Tensor::full({1}, o.loss_curve, DType::Int64));
  const std::string path = "/tmp/ladnn-loss-curve.safetensors";
  save_safetensors(path, file);

  model->to(device);
  model->train();
  for (auto& b : batches) b = to_device(b, device);
  Adam opt(model->parameters(), 1e-4);
  std::vector<double> ours;
  for (int i = 0; i < o.loss_curve; ++i) {
    const RandomBatch& b = batches[i % nbatches];
    LaDnn::Output out = model->forward_heads(Variable(b.images));
    Variable l = lesion_attention_loss(out, b.covid, b.lesions, b.mask);
    opt.zero_grad();
    l.backward();
    opt.step();
    ours.push_back(l.tensor().item());
  }
  std::vector<double> theirs;
  if (o.torch != "off") {
    bool ok = true;
    std::string out = command_output("python3 " + o.torch_script + " --tf32 " + (o.tf32 == "on" ? "1" : "0") +
                                  " --arch " + o.arch + " --loss-curve " + path, &ok);
    try {
      if (ok) theirs = nlohmann::json::parse(out.substr(out.rfind("{\"work\"")))["losses"].get<std::vector<double>>();
    } catch (const std::exception& e) {
      std::cerr << "bench: could not read PyTorch's loss curve: " << e.what() << "\n";
    }
  }
  std::cout << "\nloss curve, " << o.arch << ", batch 32, Adam 1e-4, same weights and batches\n";
  std::cout << "step      ladnn    pytorch       diff\n";
  double worst = 0;
  for (size_t i = 0; i < ours.size(); ++i) {
    std::cout << fmt("%4.0f", double(i + 1)) << fmt(" %10.6f", ours[i]);
    if (i < theirs.size()) {
      const double d = ours[i] - theirs[i];
      worst = std::max(worst, std::abs(d));
      std::cout << fmt(" %10.6f", theirs[i]) << fmt(" %+10.2e", d);
    }
    std::cout << "\n";
  }
  if (!theirs.empty()) std::cout << "largest |difference|: " << fmt("%.3e", worst) << "\n";
  std::remove(path.c_str());
}

void run_bench(const BenchOptions& o) {
  const Device device = o.device == "cpu" ? Device::cpu() : Device::cuda(0);
  if (device.is_cuda()) {
    if (!cuda::available()) throw std::runtime_error("bench: --device cuda but " + cuda::unavailable_reason());
    cuda::set_tf32(o.tf32 == "on");
  }
  if (o.loss_curve > 0) {
    loss_curve(o, device);
    return;
  }
  // PyTorch first, so that a run cut short by a time limit still has both sides of what it finished
  // (each row is also reported on stderr as soon as it is measured).
  struct TorchRow {
    std::string work;
    int64_t batch;
    double ms;
    std::size_t peak;
  };
  std::vector<TorchRow> torch_rows;
  if (o.torch != "off" && device.is_cuda()) {
    bool ok = true;
    std::string cmd = "python3 " + o.torch_script + " --arch " + o.arch + " --batches " + o.batches + " --work " + o.work +
                      " --steps " + std::to_string(o.steps) + " --warmup " + std::to_string(o.warmup) +
                      " --tf32 " + (o.tf32 == "on" ? "1" : "0") + " 2>/dev/null";
    std::string out = command_output(cmd, &ok);
    std::istringstream lines(out);
    std::string line;
    while (std::getline(lines, line)) {
      if (line.rfind("{", 0) != 0) continue;
      nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
      if (j.is_discarded()) continue;
      torch_rows.push_back({j.value("work", ""), j.value("batch", int64_t{0}), j.value("ms", 0.0),
                            j.value("peak_bytes", std::size_t{0})});
      std::cerr << "torch " << torch_rows.back().work << " batch " << torch_rows.back().batch << ": "
                << fmt("%.2f", torch_rows.back().ms) << " ms\n";
    }
    if (torch_rows.empty()) std::cerr << "bench: no PyTorch figures (" << cmd << " gave none)\n";
  }
  // (on the CPU they change nothing)
  const std::vector<cuda::SwitchSet> variants = cuda::parse_switch_sets(o.variants, "--variants");
  std::vector<Row> rows;
  for (const std::string& w : split_list(o.work))
    for (const std::string& bs : split_list(o.batches)) {
      const int64_t batch = std::stoll(bs);
      if (batch < 1) throw std::invalid_argument("--batches: batch sizes must be >= 1, got " + bs);
      for (bool graph : {false, true})
        for (int variant = 0; variant <= (w == "loop" ? 0 : static_cast<int>(variants.size())); ++variant) {
          if (w == "loop") {
            rows.push_back(run_loop(o, batch, device, graph));
          } else {
            if (graph ? (o.graph == "off" || !device.is_cuda()) : o.graph == "on") continue;
            // A variant's row: the same work with its switches, in this process, so that every choice made
            // by timing (cuDNN's search, LADNN_CONV1X1 and LADNN_FUSED_CONV auto) is the default row's.
            const cuda::SwitchSnapshot saved = cuda::save_switches();
            if (variant > 0) cuda::apply_switch_set(variants[variant - 1]);
            try {
              rows.push_back(run_one(o, w, batch, device, graph));
            } catch (const std::exception& e) {
              cuda::restore_switches(saved);
              if (variant == 0) throw;
              // A variant that fails (a switch a device refuses) is reported in its row; the rest still run.
              try {
                if (device.is_cuda()) cuda::synchronize();
              } catch (const std::exception&) {  // a sticky error: the rows after this one will say so
              }
              Row failed;
              failed.work = w;
              failed.graph = graph;
              failed.batch = batch;
              failed.error = std::string("variant failed: ") + e.what();
              rows.push_back(failed);
            }
            cuda::restore_switches(saved);
            rows.back().variant = variant;
          }
          Row& r = rows.back();
          for (const TorchRow& t : torch_rows)
            if (t.work == r.work && t.batch == r.batch) {
              r.torch_ms = t.ms;
              r.torch_peak = t.peak;
            }
          const std::string what = (w == "loop" ? r.work : w + (graph ? " (graph)" : "")) +
                                   (r.variant > 0 ? " [" + variants[r.variant - 1].label + "]" : "");
          if (!r.error.empty()) {
            std::cerr << "ladnn " << what << " batch " << batch << ": " << r.error << "\n";
            continue;
          }
          std::cerr << "ladnn " << what << " batch " << batch << ": " << fmt("%.2f", r.ms) << " ms, "
                    << fmt("%.2f", r.peak_bytes / 1073741824.0) << " GiB"
                    << (r.graph_nodes ? ", " + std::to_string(r.graph_nodes) + " graph nodes" : std::string())
                    << (r.arena_bytes
                            ? ", planned arena " + fmt("%.2f", r.arena_bytes / 1073741824.0) + " GiB"
                            : std::string())
                    << (r.plan_failure.empty() ? std::string() : ", memory plan not used: " + r.plan_failure)
                    << "\n";
          if (device.is_cuda()) cuda::release_cached();
        }
    }
  const double gib = 1024.0 * 1024.0 * 1024.0;
  std::cout << "\n" << o.arch << (o.memory_efficient ? " (memory-efficient)" : "") << ", float32"
            << (device.is_cuda() ? ", TF32 " + o.tf32 : std::string()) << ", " << o.device;
  if (device.is_cuda()) std::cout << " (" << cuda::device_info(0).name << ")";
  std::cout << ", median of " << o.steps << " steps after " << o.warmup << " warm-up\n";
  std::cout << "(graph: the step captured once as a CUDA graph and replayed; torch: PyTorch eager)\n";
  std::cout << "(nodes: kernels and copies one graph replay launches)\n";
  if (!variants.empty())
    std::cout << "(+k: the row above it again with --variants' k-th set of GPU switches, listed below)\n";
  std::cout << "work              batch   ladnn ms    img/s  torch ms    img/s  torch/ladnn  ladnn GiB  "
               "torch GiB    nodes\n";
  for (const Row& r : rows) {
    const std::string name = r.work + (r.graph ? " graph" : "") +
                             (r.variant > 0 ? " +" + std::to_string(r.variant) : std::string());
    std::cout << name << std::string(name.size() < 15 ? 15 - name.size() : 0, ' ')
              << fmt(" %7.0f", double(r.batch));
    if (!r.error.empty()) {
      const bool plain = r.work.rfind("loop", 0) == 0 || r.error.rfind("variant failed", 0) == 0;
      std::cout << "   " << (plain ? "" : "capture failed: ") << r.error.substr(0, 100) << "\n";
      continue;
    }
    std::cout << fmt(" %10.2f", r.ms) << fmt(" %8.0f", r.batch * 1000.0 / r.ms);
    if (r.torch_ms > 0)
      std::cout << fmt(" %9.2f", r.torch_ms) << fmt(" %8.0f", r.batch * 1000.0 / r.torch_ms)
                << fmt(" %12.2fx", r.torch_ms / r.ms);
    else
      std::cout << std::string(9 + 9 + 14, ' ');
    std::cout << fmt(" %10.2f", r.peak_bytes / gib);
    if (r.torch_peak)
      std::cout << fmt(" %10.2f", r.torch_peak / gib);
    else if (r.graph_nodes)
      std::cout << std::string(11, ' ');
    if (r.graph_nodes) std::cout << fmt(" %8.0f", double(r.graph_nodes));
    std::cout << "\n";
  }
  for (std::size_t k = 0; k < variants.size(); ++k)
    std::cout << "  +" << k + 1 << "  " << variants[k].label << "\n";
  // Which kernels ran: the first question when comparing two tables.
  if (device.is_cuda())
    std::cout << "GPU switches (as `ladnn info` prints them):\n"
              << cuda::describe_switches() << cuda::describe_fused_conv_choices();
}

void add_bench(CLI::App& app) {
  auto o = std::make_shared<BenchOptions>();
  CLI::App* cmd = app.add_subcommand("bench", "Time the LA-DNN training step and inference (beside PyTorch)");
  cmd->add_option("--arch", o->arch, "densenet121|densenet169|densenet201|tiny")->capture_default_str();
  cmd->add_option("--batches", o->batches, "Comma-separated batch sizes")->capture_default_str();
  cmd->add_option("--work", o->work, "train,infer (and loop: the trainer's graphed loop, GPU)")->capture_default_str();
  cmd->add_option("--steps", o->steps, "Timed steps per row (the median is reported)")
      ->check(CLI::Range(1, 100000))->capture_default_str();
  cmd->add_option("--warmup", o->warmup, "Untimed steps first")->check(CLI::Range(0, 100000))->capture_default_str();
  cmd->add_option("--device", o->device, "cuda or cpu")->check(CLI::IsMember({"cuda", "cpu"}))->capture_default_str();
  cmd->add_option("--tf32", o->tf32, "TF32 tensor-core math for convolutions and GEMMs")
      ->check(CLI::IsMember({"on", "off"}))->capture_default_str();
  cmd->add_option("--torch", o->torch, "auto: also time PyTorch eager when python3 has CUDA torch")
      ->check(CLI::IsMember({"auto", "off"}))->capture_default_str();
  cmd->add_option("--torch-script", o->torch_script, "The PyTorch twin")->capture_default_str();
  cmd->add_option("--image-size", o->image_size, "Input height and width")->check(CLI::Range(32, 1024))->capture_default_str();
  cmd->add_option("--graph", o->graph, "Rows for eager steps (off), CUDA-graph replays (on) or both")
      ->check(CLI::IsMember({"both", "on", "off"}))->capture_default_str();
  cmd->add_flag("--memory-efficient", o->memory_efficient,
                "Dense layers recompute their concatenation-BN-ReLU in backward (autograd/checkpoint.h)");
  cmd->add_flag("--profile", o->profile, "Per-op CUDA-event profile of each row's timed steps");
  cmd->add_option("--graph-kernels", o->graph_kernels,
                  "For each graph row, list the N kernels it launches most often (name and count)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--loss-curve", o->loss_curve, "N: compare N training steps' losses with PyTorch")
      ->check(CLI::Range(0, 10000));
  cmd->add_option(
      "--variants", o->variants,
      "Sets of GPU switches, ';' between sets, ',' within one (LADNN_PDL=1;LADNN_BN_KERNEL=cluster): "
      "each train/infer row is timed again under each set, in this process, with the default "
      "row's timed choices");
  cmd->callback([o] { run_bench(*o); });
}

const Registration kBench{"bench", 60, add_bench};

}  // namespace
}  // namespace ladnn::apps
