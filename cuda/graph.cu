// cuda/graph.cu — cuda/graph.h: stream capture into a private allocator pool, instantiate, replay.
//
// Capture mode is cudaStreamCaptureModeRelaxed: the private pool may need cudaMalloc for its first
// blocks, which the stricter modes forbid while a capture is open. Synchronising the stream or a copy
// through the legacy stream still invalidates the capture; cudaStreamEndCapture then reports it and
// capture() throws (copy_bytes refuses host copies itself, with a clearer message).
//
// Planned captures (capture(fn, true)): record, plan (cuda/memory_plan.h), capture again into the planned
// arena; a second run that allocates differently from the first is discarded and captured plainly.
#include <cuda.h>  // driver types only: the functions come through cudaGetDriverEntryPointByVersion

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include "cuda/allocator.h"
#include "cuda/check.h"
#include "cuda/context.h"
#include "cuda/graph.h"
#include "cuda/profiler.h"
#include "cuda/runtime.h"

namespace ladnn::cuda {

namespace {

template <typename Fn>
Fn driver_function(const char* symbol) {
  void* fn = nullptr;
  cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
  if (cudaGetDriverEntryPointByVersion(symbol, &fn, CUDA_VERSION, cudaEnableDefault, &found) != cudaSuccess ||
      found != cudaDriverEntryPointSuccess) {
    cudaGetLastError();
    return nullptr;
  }
  return reinterpret_cast<Fn>(fn);
}

/// The nodes of `graph` counted by kernel name, most first (Graph::kernel_summary).
std::vector<std::pair<std::string, std::size_t>> summarize(cudaGraph_t graph) {
  using GetParams = CUresult (*)(CUgraphNode, CUDA_KERNEL_NODE_PARAMS*);
  using FuncName = CUresult (*)(const char**, CUfunction);
  using KernelName = CUresult (*)(const char**, CUkernel);
  static const GetParams get_params = driver_function<GetParams>("cuGraphKernelNodeGetParams");
  static const FuncName func_name = driver_function<FuncName>("cuFuncGetName");
  static const KernelName kernel_name = driver_function<KernelName>("cuKernelGetName");
  std::size_t count = 0;
  if (cudaGraphGetNodes(graph, nullptr, &count) != cudaSuccess) {
    cudaGetLastError();
    return {};
  }
  std::vector<cudaGraphNode_t> nodes(count);
  if (count > 0 && cudaGraphGetNodes(graph, nodes.data(), &count) != cudaSuccess) {
    cudaGetLastError();
    return {};
  }
  std::map<std::string, std::size_t> counts;
  for (cudaGraphNode_t node : nodes) {
    cudaGraphNodeType type = cudaGraphNodeTypeEmpty;
    if (cudaGraphNodeGetType(node, &type) != cudaSuccess) {
      cudaGetLastError();
      ++counts["(unknown)"];
      continue;
    }
    if (type == cudaGraphNodeTypeMemset) {
      ++counts["(memset)"];
    } else if (type == cudaGraphNodeTypeMemcpy) {
      ++counts["(memcpy)"];
    } else if (type != cudaGraphNodeTypeKernel) {
      ++counts["(other)"];
    } else {
      const char* name = nullptr;
      CUDA_KERNEL_NODE_PARAMS params{};
      if (get_params && get_params(reinterpret_cast<CUgraphNode>(node), &params) == CUDA_SUCCESS) {
        if (params.func && func_name) func_name(&name, params.func);
        if (!name && params.kern && kernel_name) kernel_name(&name, params.kern);
      }
      ++counts[profiler::kernel_display_name(name)];
    }
  }
  std::vector<std::pair<std::string, std::size_t>> out(counts.begin(), counts.end());
  std::stable_sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
  return out;
}

}  // namespace

bool capturing() {
  if (!available()) return false;
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  CUDA_CHECK(cudaStreamIsCapturing(stream(), &status));
  return status == cudaStreamCaptureStatusActive;
}

Graph::~Graph() {
  try {
    reset();
  } catch (...) {
    // A destructor must not throw; a failing cudaGraphExecDestroy leaves nothing to do.
  }
}

void Graph::reset() {
  nodes_ = 0;
  arena_bytes_ = 0;
  if (exec_) {
    CUDA_CHECK(cudaStreamSynchronize(stream()));  // replays in flight still use the pool
    CUDA_CHECK(cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(exec_)));
    exec_ = nullptr;
  }
  if (pool_) {
    release_pool(pool_);
    pool_ = 0;
  }
}

void Graph::capture(const std::function<void()>& fn) {
  capture(fn, graph_memory_plan());
}

void Graph::capture(const std::function<void()>& fn, bool plan_memory) {
  plan_failure_.clear();
  std::vector<PlanBlock> blocks;
  MemoryPlan plan;
  if (!plan_memory) {
    capture_once(fn, PoolMode::Plain, blocks, plan);
    return;
  }
  // 1. Record the allocation sequence (into an ordinary pool), and plan it.
  capture_once(fn, PoolMode::Record, blocks, plan);
  plan = ladnn::cuda::plan_memory(blocks);
  // 2. That graph goes, and its pool's memory back to the device, so the arena can take its place.
  reset();
  release_cached();
  // 3. The same capture at the planned offsets; a run that allocates differently is captured again plainly.
  try {
    capture_once(fn, PoolMode::Planned, blocks, plan);
  } catch (const OutOfMemory& e) {  // the arena itself did not fit
    plan_failure_ = std::string("the planned arena: ") + e.what();
  }
  if (!plan_failure_.empty()) {
    reset();
    capture_once(fn, PoolMode::Plain, blocks, plan);
  }
}

void Graph::capture_once(const std::function<void()>& fn, PoolMode mode, std::vector<PlanBlock>& blocks,
                         const MemoryPlan& plan) {
  reset();
  // Timed ranges (profiler capture timing) belong to the capture that is about to run, not to an
  // attempt before it (a planned capture runs fn more than once).
  profiler::begin_capture();
  static std::atomic<uint64_t> next_pool{1};
  cudaStream_t st = stream();
  pool_ = next_pool++;
  switch (mode) {
    case PoolMode::Plain:
      begin_pool(pool_);
      break;
    case PoolMode::Record:
      begin_pool_recording(pool_);
      break;
    case PoolMode::Planned:
      begin_planned_pool(pool_, blocks, plan);
      arena_bytes_ = plan.arena_bytes;
      break;
  }
  auto end_pool_mode = [&] {
    if (mode == PoolMode::Record)
      blocks = end_pool_recording();
    else if (mode == PoolMode::Planned)
      plan_failure_ = end_planned_pool();
    else
      end_pool();
  };
  cudaError_t begin = cudaStreamBeginCapture(st, cudaStreamCaptureModeRelaxed);
  if (begin != cudaSuccess) {
    end_pool_mode();
    reset();
    throw Error(failure("cudaStreamBeginCapture(stream(), cudaStreamCaptureModeRelaxed)", __FILE__, __LINE__,
                        cudaGetErrorString(begin)));
  }
  std::string what;
  try {
    fn();
  } catch (const std::exception& e) {
    what = e.what();
  }
  cudaGraph_t graph = nullptr;
  cudaError_t end = cudaStreamEndCapture(st, &graph);
  end_pool_mode();
  cudaGetLastError();  // an invalidated capture leaves its error behind: don't blame the next launch
  if (what.empty() && end != cudaSuccess)
    what = std::string("cudaStreamEndCapture: ") + cudaGetErrorString(end) +
           " (the captured function synchronised or used the legacy stream)";
  if (what.empty()) {
    std::size_t count = 0;
    const cudaError_t got = cudaGraphGetNodes(graph, nullptr, &count);
    if (got != cudaSuccess) what = std::string("cudaGraphGetNodes: ") + cudaGetErrorString(got);
    nodes_ = count;
    kernels_.clear();
    if (summarize_ && what.empty()) kernels_ = summarize(graph);
  }
  if (what.empty()) {
    cudaGraphExec_t exec = nullptr;
    cudaError_t inst = cudaGraphInstantiate(&exec, graph, 0);
    if (inst == cudaSuccess)
      exec_ = exec;
    else
      what = std::string("cudaGraphInstantiate: ") + cudaGetErrorString(inst);
  }
  if (graph) CUDA_CHECK(cudaGraphDestroy(graph));
  if (!what.empty()) {
    cudaGetLastError();
    reset();
    throw Error("cuda::Graph::capture failed: " + what);
  }
}

void Graph::replay() {
  if (!exec_) throw Error("cuda::Graph::replay: nothing was captured");
  CUDA_CHECK(cudaGraphLaunch(static_cast<cudaGraphExec_t>(exec_), stream()));
}

double time_replayed_ms(const std::function<void()>& run) {
  if (capturing()) throw Error("time_replayed_ms: called inside a CUDA graph capture (it captures a graph of its own)");
  run();
  Graph graph;
  graph.capture(run, /*plan_memory=*/false);
  return time_best_of_three_ms([&] { graph.replay(); });  // a warm-up replay, then the fastest of three
}

}  // namespace ladnn::cuda
