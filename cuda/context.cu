// cuda/context.cu — the framework stream and the cuDNN/cuBLAS handles of cuda/context.h.
//
// All three are created on first use and live until the process ends (never destroyed: tensors in
// static storage may still queue frees at exit, and destroying handles after the CUDA runtime has shut
// down fails; the driver reclaims them). Creation is guarded by a mutex; later calls read an atomic.
//
// The stream is a *blocking* stream (cudaStreamDefault): work that someone queues by mistake on the
// legacy default stream (a plain cudaMemcpy, a launch without a stream) still waits for ours and ours
// for it, so such a slip costs speed, never correctness.
//
// cuBLAS gets a workspace from the caching allocator (cublasSetWorkspace): without one it allocates its
// own with cudaMalloc, which would break CUDA-graph capture of a training step later. 32 MiB is NVIDIA's
// recommendation for Hopper. Its math mode follows tf32_enabled(), re-applied whenever the switch changed.
#define LADNN_CHECK_CUDNN
#define LADNN_CHECK_CUBLAS
#include <atomic>
#include <mutex>

#include "cuda/allocator.h"
#include "cuda/check.h"
#include "cuda/context.h"
#include "cuda/runtime.h"

namespace ladnn::cuda {
namespace {

constexpr std::size_t kCublasWorkspaceBytes = 32u << 20;

struct State {
  std::mutex mu;
  std::atomic<cudaStream_t> stream{nullptr};
  std::atomic<cudnnHandle_t> cudnn{nullptr};
  std::atomic<cublasHandle_t> cublas{nullptr};
  std::atomic<int> cublas_tf32{-1};  // math mode last applied to the cuBLAS handle (-1: none yet)
};

State& state() {
  static State* s = new State();  // never destroyed, see the file comment
  return *s;
}

void require_device(const char* who) {
  if (!available()) throw Error(std::string(who) + ": no usable GPU: " + unavailable_reason());
}

}  // namespace

CUstream_st* stream() {
  State& s = state();
  if (cudaStream_t st = s.stream.load(std::memory_order_acquire)) return st;
  require_device("cuda::stream");
  std::lock_guard<std::mutex> lock(s.mu);
  if (cudaStream_t st = s.stream.load(std::memory_order_acquire)) return st;
  cudaStream_t st = nullptr;
  CUDA_CHECK(cudaSetDevice(0));
  CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamDefault));
  s.stream.store(st, std::memory_order_release);
  return st;
}

cudnnContext* cudnn() {
  State& s = state();
  if (cudnnHandle_t h = s.cudnn.load(std::memory_order_acquire)) return h;
  cudaStream_t st = stream();  // before the lock: stream() takes it too
  std::lock_guard<std::mutex> lock(s.mu);
  if (cudnnHandle_t h = s.cudnn.load(std::memory_order_acquire)) return h;
  cudnnHandle_t h = nullptr;
  CUDNN_CHECK(cudnnCreate(&h));
  CUDNN_CHECK(cudnnSetStream(h, st));
  s.cudnn.store(h, std::memory_order_release);
  return h;
}

cublasContext* cublas() {
  State& s = state();
  cublasHandle_t h = s.cublas.load(std::memory_order_acquire);
  if (!h) {
    cudaStream_t st = stream();
    // Kept for the process. allocate() with an explicit stream takes no lock of ours: no deadlock.
    static void* workspace = nullptr;
    std::lock_guard<std::mutex> lock(s.mu);
    h = s.cublas.load(std::memory_order_acquire);
    if (!h) {
      CUBLAS_CHECK(cublasCreate(&h));
      // cublasSetStream resets the workspace to cuBLAS's own pool, so the workspace comes after it.
      CUBLAS_CHECK(cublasSetStream(h, st));
      if (!workspace) workspace = allocate(kCublasWorkspaceBytes, st);
      CUBLAS_CHECK(cublasSetWorkspace(h, workspace, kCublasWorkspaceBytes));
      s.cublas.store(h, std::memory_order_release);
    }
  }
  const int want = tf32_enabled() ? 1 : 0;
  if (s.cublas_tf32.load(std::memory_order_acquire) != want) {
    std::lock_guard<std::mutex> lock(s.mu);
    CUBLAS_CHECK(cublasSetMathMode(h, want ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
    s.cublas_tf32.store(want, std::memory_order_release);
  }
  return h;
}

void synchronize() {
  // No stream yet means no work was ever queued: nothing to wait for (and no GPU needed).
  if (cudaStream_t st = state().stream.load(std::memory_order_acquire)) CUDA_CHECK(cudaStreamSynchronize(st));
}

}  // namespace ladnn::cuda
