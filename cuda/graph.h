// cuda/graph.h — capture the GPU work of a function once as a CUDA graph, then replay it.
//
// Why: a DenseNet-169 step is ~2,000 small kernels; launched one by one from the host, the GPU waits
// on the launches (the first H200 runs measured the eager step host-bound). A replay submits the whole
// recorded graph in one call.
//
//   cuda::Graph g;
//   step();                          // eager warm-up first: cuDNN algorithm search, optimizer state,
//                                    // cuBLAS/cuDNN handles, the allocator's cache
//   g.capture([&] { step(); });      // records the kernels; runs nothing
//   for (...) { input.copy_(next); g.replay(); }
//
// What a captured function may do: queue work on cuda::stream() (every ladnn op does) and allocate
// device memory. Allocations during the capture come from a private pool of the caching allocator
// (cuda/allocator.h): the graph owns those addresses and reuses them at every replay, so tensors made
// during the capture and kept afterwards (a step's outputs, gradients) are overwritten by each replay,
// and their memory is never handed to anyone else while the graph lives. What it must not do, and what
// fails the capture with an error that names the capture: read a value back to the host (item(),
// to(cpu)), copy host memory to the device (a CPU tensor's .to(cuda)), synchronise.
// What a replay does not do: run host code. Host-side state is frozen at its captured value — Adam's
// learning rate, BatchNorm's momentum, dropout's mask seed; Adam's step count t is kept on the device
// (AdamStep::device_step) so bias corrections advance, and the host's copy (state_dict) advances when
// the caller reports each replay with Optimizer::replayed_step() (models/graphed_step.h does).
// Inputs are read from the addresses used at capture: feed new data by copying into the same tensors.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "cuda/memory_plan.h"

namespace ladnn::cuda {

/// True while the framework stream is being captured (ops use this to pick graph-safe paths).
bool capturing();

class Graph {
 public:
  Graph() = default;
  ~Graph();  // waits for replays in flight, frees the graph, returns its pool to the common cache
  Graph(const Graph&) = delete;
  Graph& operator=(const Graph&) = delete;

  /// Records everything `fn` queues on cuda::stream() (nothing runs). Throws cuda::Error naming what
  /// broke the capture; the stream is usable afterwards and this Graph stays empty. A second capture
  /// replaces the first. With graph_memory_plan() on, capture(fn, true).
  void capture(const std::function<void()>& fn);
  /// With `plan_memory`, the graph's intermediates get one planned arena instead of a pool
  /// (cuda/memory_plan.h): `fn` is captured once to record its allocations, then again with every
  /// allocation at a planned offset — fn runs twice, so it must queue the same work both times (host
  /// side effects happen twice). Should the second run allocate differently, it is captured a third
  /// time into an ordinary pool, and plan_failure() says why.
  void capture(const std::function<void()>& fn, bool plan_memory);
  /// Queues one run of the captured work on cuda::stream(). Throws when nothing was captured.
  void replay();
  bool captured() const { return exec_ != nullptr; }
  /// Nodes of the captured graph (kernels, memsets, copies): what one replay launches. 0 when empty.
  std::size_t nodes() const { return nodes_; }
  /// The planned arena's bytes (0 without a plan), and why the last planned capture fell back ("" if not).
  std::size_t arena_bytes() const { return arena_bytes_; }
  const std::string& plan_failure() const { return plan_failure_; }
  /// With set_kernel_summary(true) before capture: the captured nodes counted by kernel name (demangled,
  /// without the parameter list; "(memset)", "(memcpy)", "(other)" for the rest), most frequent first —
  /// what one replay launches, library kernels included. Names come from the driver (cuFuncGetName via
  /// cudaGetDriverEntryPointByVersion, no link to libcuda); a kernel it cannot name counts as "(unnamed)".
  void set_kernel_summary(bool on) { summarize_ = on; }
  const std::vector<std::pair<std::string, std::size_t>>& kernel_summary() const { return kernels_; }

 private:
  enum class PoolMode { Plain, Record, Planned };
  /// One capture into an ordinary pool (Plain), one that records its allocations into `blocks` (Record),
  /// or one served from an arena planned for `blocks` (Planned: `plan`).
  void capture_once(const std::function<void()>& fn, PoolMode mode, std::vector<PlanBlock>& blocks,
                    const MemoryPlan& plan);
  void reset();
  void* exec_ = nullptr;  // cudaGraphExec_t
  uint64_t pool_ = 0;     // the allocator's private pool of this graph
  std::size_t nodes_ = 0;
  std::size_t arena_bytes_ = 0;
  std::string plan_failure_;
  bool summarize_ = false;
  std::vector<std::pair<std::string, std::size_t>> kernels_;
};

/// GPU milliseconds of one run of `run` as a graph replay: run once eagerly (warm-up: algorithm searches,
/// caches), captured once into a graph of its own, replayed once, then the fastest of three timed
/// replays. Host work inside `run` (argument checks, descriptors, launches) costs nothing here, as in a
/// replayed step: what a choice between implementations for graph replays should compare (an eager
/// timing favours whichever launches fewer kernels). Throws inside a capture. Like any capture, it makes
/// the profiler forget earlier captures' ranges (capture timing is on only around a profiled capture and
/// its replays, where no op runs eagerly).
double time_replayed_ms(const std::function<void()>& run);

/// Whether Graph::capture(fn) plans its memory: LADNN_GRAPH_PLAN=1 (default off until measured on a GPU),
/// or set_graph_memory_plan.
bool graph_memory_plan();
void set_graph_memory_plan(bool on);

}  // namespace ladnn::cuda
