// cuda/graph.cu — cuda/graph.h: stream capture into a private allocator pool, instantiate, replay.
//
// Capture mode is cudaStreamCaptureModeRelaxed: the private pool may need cudaMalloc for its first
// blocks, which the stricter modes forbid while a capture is open. Synchronising the stream or a copy
// through the legacy stream still invalidates the capture; cudaStreamEndCapture then reports it and
// capture() throws (copy_bytes refuses host copies itself, with a clearer message).
#include <atomic>
#include <string>

#include "cuda/allocator.h"
#include "cuda/check.h"
#include "cuda/context.h"
#include "cuda/graph.h"
#include "cuda/runtime.h"

namespace ladnn::cuda {

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
  reset();
  static std::atomic<uint64_t> next_pool{1};
  cudaStream_t st = stream();
  pool_ = next_pool++;
  begin_pool(pool_);
  cudaError_t begin = cudaStreamBeginCapture(st, cudaStreamCaptureModeRelaxed);
  if (begin != cudaSuccess) {
    end_pool();
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
  end_pool();
  cudaGetLastError();  // an invalidated capture leaves its error behind: don't blame the next launch
  if (what.empty() && end != cudaSuccess)
    what = std::string("cudaStreamEndCapture: ") + cudaGetErrorString(end) +
           " (the captured function synchronised or used the legacy stream)";
  if (what.empty()) {
    std::size_t count = 0;
    const cudaError_t got = cudaGraphGetNodes(graph, nullptr, &count);
    if (got != cudaSuccess) what = std::string("cudaGraphGetNodes: ") + cudaGetErrorString(got);
    nodes_ = count;
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

}  // namespace ladnn::cuda
