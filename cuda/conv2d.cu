// cuda/conv2d.cu — 2-D convolution on the GPU (float32, NCHW), with the semantics of
// tensor/cpu/conv2d.cpp (cross-correlation, zero padding, no dilation or groups).
//
// Shapes: x (N, C, H, W), weight (K, C, R, S), y (N, K, P, Q), P = (H + 2 pad_h - R) / stride_h + 1.
//
// Versions (cuda::impl(Family::Conv), LADNN_CONV=cudnn|native):
//   cudnn   forward          cudnnConvolutionForward, bias by cudnnAddTensor
//           backward input   cudnnConvolutionBackwardData
//           backward weight  cudnnConvolutionBackwardFilter
//           backward bias    cudnnConvolutionBackwardBias
//           The algorithm of each pass is chosen by cudnnFind*AlgorithmEx (it times them all on the real
//           buffers) the first time a (pass, shapes, x image stride, stride, padding, TF32) key is seen,
//           and cached for the process; workspaces come from the caching allocator. Deterministic mode
//           (cuda::deterministic(), LADNN_DETERMINISTIC=1) keeps only algorithms cuDNN reports as
//           CUDNN_DETERMINISTIC (and is part of the cache key). TF32: the descriptor's
//           math type is CUDNN_TENSOR_OP_MATH when cuda::tf32_enabled(), else CUDNN_FMA_MATH (plain
//           float32 — CUDNN_DEFAULT_MATH would still allow TF32 on Ampere and later); with TF32 on the
//           search runs under both and keeps the faster (search_maths: small convolutions can be faster
//           without tensor cores), and the call then uses the math type of the chosen result.
//           LADNN_CUDNN_LOG=1 prints each choice.
//   native  all three passes are one *implicit GEMM* each on cuda/gemm_tile.cuh's tiled SGEMM: the GEMM
//           operands are fetched straight from the NCHW tensors (im2col without the column buffer):
//             forward          y (K, N*P*Q)        = weight (K, C*R*S)    x  col(x) (C*R*S, N*P*Q)
//             backward input   dx (C, N*H*W)       = weight^T (C, K*R*S)  x  gather(dy) (K*R*S, N*H*W)
//             backward weight  dweight (K, C*R*S)  = dy (K, N*P*Q)        x  col(x)^T (N*P*Q, C*R*S)
//           The batch is folded into the GEMM's N (forward, backward input) or K (backward weight)
//           dimension, so one launch covers the whole batch. Backward input is the *gather* form of the
//           transposed convolution: dx[n][c][h][w] = sum over k, r, s of weight[k][c][r][s] *
//           dy[n][k][p][q] over the (p, q) with p * stride_h - pad_h + r = h (and the same for w) — each
//           dx element is written once by one thread: no atomics, no col2im buffer, deterministic.
//           Backward weight reduces over N*P*Q (long) into few outputs, so it splits K (split-K:
//           partial sums in a workspace, then sum_splits_kernel adds them in a fixed order); the forward
//           splits too when its output has too few tiles to fill the GPU (batch-1 inference), summing
//           into the NCHW output with sum_splits_nchw_kernel.
//           Pointwise fast path (1x1, stride 1, no padding: DenseNet's bottleneck convs): x[n] viewed as
//           (C, H*W) already is the column matrix, so the operands index it directly (Pointwise*) — a
//           plain GEMM per image, batched in one launch — with none of the tap/padding arithmetic.
//           Forward adds the bias in the GEMM's epilogue; backward bias is bias_grad_kernel (one block
//           per channel, a deterministic block reduction).
//           Native kernels compute in plain float32 whatever the TF32 switch says. The operands,
//           epilogues and the three GEMM drivers are in cuda/conv2d_gemm.cuh, the tile kernel in
//           cuda/gemm_tile.cuh; tests/cuda_tile_emulation_test.cpp runs both on the CPU.
//
// x may be a channel slice of a wider tensor (DenseNet's memory-efficient dense blocks feed convs from one
// shared buffer): when each image is a contiguous (C, H, W) block, both versions read it in place
// (cuDNN through a strided tensor descriptor); other layouts are copied first. Outputs are new contiguous
// tensors, except conv2d_forward_into's: a caller's (K, P, Q)-per-image view (a channel slice of the
// inference block buffer), written in place through the same kind of strided descriptor (cuDNN), image
// stride (cuBLAS) or epilogue stride (native). Shapes and parameters were checked by tensor/ops.h's conv2d_* before these are called.
#define LADNN_CHECK_CUDNN
#define LADNN_CHECK_CUBLAS
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include <algorithm>
#include <array>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <initializer_list>
#include <limits>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "cuda/allocator.h"
#include "cuda/check.h"
#include "cuda/context.h"
#include "cuda/conv2d_gemm.cuh"
#include "cuda/gemm_tile.cuh"
#include "cuda/graph.h"
#include "cuda/kernel_util.cuh"
#include "cuda/launch.h"
#include "cuda/ops.h"
#include "cuda/pointwise_gemm.h"
#include "cuda/profiler.h"

#if !defined(CUDNN_CHECK) || !defined(CUBLAS_CHECK)
#error "cuda/check.h was included before cuda/conv2d.cu defined LADNN_CHECK_CUDNN and LADNN_CHECK_CUBLAS"
#endif

namespace ladnn::cuda {
namespace {

cudaStream_t cur_stream() {
  return static_cast<cudaStream_t>(stream());
}

// ---- geometry
// ---------------------------------------------------------------------------------------------------

ConvShape conv_shape(const std::string& op, const Shape& x, const Shape& w, const ops::Conv2dParams& p,
                     int64_t x_img) {
  const int64_t P = (x[2] + 2 * p.pad_h - w[2]) / p.stride_h + 1;
  const int64_t Q = (x[3] + 2 * p.pad_w - w[3]) / p.stride_w + 1;
  // The implicit GEMMs' dimensions (file header) and cuDNN's int descriptor fields must fit in int.
  const int64_t dims[] = {x[0] * P * Q,
                          x[0] * x[2] * x[3],
                          x[1] * w[2] * w[3],
                          w[0] * w[2] * w[3],
                          w[0],
                          x[1],
                          p.stride_h,
                          p.stride_w,
                          p.pad_h,
                          p.pad_w,
                          x_img,
                          x[1] * x[2] * x[3]};
  for (int64_t d : dims)
    if (d > kMaxGemmDim)
      throw Error(op + ": input " + shape_str(x) + " with weight " + shape_str(w) +
                  " is too large for the GPU convolution (a GEMM dimension exceeds " +
                  std::to_string(kMaxGemmDim) + ")");
  auto i = [](int64_t v) { return static_cast<int>(v); };
  return ConvShape{i(x[0]), i(x[1]), i(x[2]),       i(x[3]),       i(w[0]),    i(w[2]),    i(w[3]),
                   i(P),    i(Q),    i(p.stride_h), i(p.stride_w), i(p.pad_h), i(p.pad_w), x_img};
}

/// x as the kernels read it: each image a contiguous (C, H, W) block, images `x_img` elements apart. A
/// channel slice of a wider NCHW tensor already is one and is used in place; anything else is copied.
Tensor images_view(const Tensor& x, int64_t& x_img) {
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const Shape& st = x.strides();
  const bool inner = (C <= 1 || st[1] == H * W) && (H <= 1 || st[2] == W) && (W <= 1 || st[3] == 1);
  if (inner && (N <= 1 || st[0] >= C * H * W)) {
    x_img = N <= 1 ? C * H * W : st[0];
    return x;
  }
  x_img = C * H * W;
  return x.contiguous();
}

// ---- native
// ---------------------------------------------------------------------------------------------------------

void native_forward(const ConvShape& g, const float* x, const float* w, const float* bias, float* y) {
  const GemmDims d = forward_dims(g);
  // Split-K when the output has too few tiles to fill the GPU (batch-1 inference: a 128 x 49 output of
  // block 4 is one tile, and one block would walk all 1,632 input channels alone).
  const TilePlan plan = plan_tiles(d.M, d.N, d.K, 1, /*allow_split_k=*/true);
  auto launch = [&](const auto& a, const auto& b, const auto& epi) {
    launch_tiled(plan, d.M, d.N, d.K, 1, a, b, epi, cur_stream());
  };
  if (plan.splits == 1) {
    forward_gemm(g, x, w, bias, y, launch);
    return;
  }
  const int64_t count = int64_t(d.M) * d.N;
  Buffer partial(sizeof(float) * static_cast<std::size_t>(count * plan.splits));
  forward_gemm_split(g, x, w, partial.as<float>(), launch);
  launch_kernel(sum_splits_nchw_kernel, detail::grid_for(count), detail::kThreads, 0, cur_stream(),
                partial.as<float>(), d.M, d.N, plan.splits, g.P * g.Q, g.y_stride(), bias, y);
  CUDA_CHECK_LAUNCH();
}

void native_backward_input(const ConvShape& g, const float* dy, const float* w, float* dx) {
  const GemmDims d = backward_input_dims(g);
  const TilePlan plan = plan_tiles(d.M, d.N, d.K, 1, /*allow_split_k=*/false);
  backward_input_gemm(g, dy, w, dx, [&](const auto& a, const auto& b, const auto& epi) {
    launch_tiled(plan, d.M, d.N, d.K, 1, a, b, epi, cur_stream());
  });
}

void native_backward_weight(const ConvShape& g, const float* dy, const float* x, float* dw) {
  const GemmDims d = backward_weight_dims(g);
  const TilePlan plan = plan_tiles(d.M, d.N, d.K, 1, /*allow_split_k=*/true);
  const int64_t count = int64_t(d.M) * d.N;
  Buffer partial;  // split-K partial sums (splits, K, C*R*S); none without split-K
  if (plan.splits > 1) partial = Buffer(sizeof(float) * static_cast<std::size_t>(count * plan.splits));
  float* out = plan.splits > 1 ? partial.as<float>() : dw;
  backward_weight_gemm(g, dy, x, out, [&](const auto& a, const auto& b, const auto& epi) {
    launch_tiled(plan, d.M, d.N, d.K, 1, a, b, epi, cur_stream());
  });
  if (plan.splits > 1) {
    launch_kernel(sum_splits_kernel, detail::grid_for(count), detail::kThreads, 0, cur_stream(),
                  partial.as<float>(), count, plan.splits, dw);
    CUDA_CHECK_LAUNCH();
  }
}

// One block per output channel k: db[k] = sum over n, pq of dy[n][k][pq]. Each thread sums a strided
// part (adjacent threads read adjacent pq), then detail::block_sum adds the threads in a fixed tree.
__global__ void bias_grad_kernel(const float* __restrict__ dy, int N, int K, int PQ, float* __restrict__ db) {
  pdl_enter();
  __shared__ float scratch[32];
  const int k = blockIdx.x;
  const int64_t count = int64_t(N) * PQ;
  float s = 0.0f;
  for (int64_t i = threadIdx.x; i < count; i += blockDim.x) {
    const int64_t n = i / PQ, pq = i - n * PQ;
    s += dy[(n * K + k) * PQ + pq];
  }
  s = detail::block_sum(s, scratch);
  if (threadIdx.x == 0) db[k] = s;
}

// ---- cuDNN: RAII descriptors (destructors never throw)
// ---------------------------------------------------------------

class TensorDescriptor {
 public:
  TensorDescriptor() { CUDNN_CHECK(cudnnCreateTensorDescriptor(&d_)); }
  ~TensorDescriptor() { cudnnDestroyTensorDescriptor(d_); }
  TensorDescriptor(const TensorDescriptor&) = delete;
  TensorDescriptor& operator=(const TensorDescriptor&) = delete;
  /// Float32 (n, c, h, w) with packed (c, h, w) and images `n_stride` elements apart.
  void set(int n, int c, int h, int w, int64_t n_stride) {
    if (n_stride > INT_MAX)  // (a channel slice of a very wide tensor: cuDNN's strides are int)
      throw Error("cuDNN tensor descriptor: images " + std::to_string(n_stride) +
                  " elements apart do not fit cuDNN's int stride");
    CUDNN_CHECK(cudnnSetTensor4dDescriptorEx(d_, CUDNN_DATA_FLOAT, n, c, h, w, static_cast<int>(n_stride),
                                             h * w, w, 1));
  }
  cudnnTensorDescriptor_t get() const { return d_; }

 private:
  cudnnTensorDescriptor_t d_ = nullptr;
};

class FilterDescriptor {
 public:
  FilterDescriptor() { CUDNN_CHECK(cudnnCreateFilterDescriptor(&d_)); }
  ~FilterDescriptor() { cudnnDestroyFilterDescriptor(d_); }
  FilterDescriptor(const FilterDescriptor&) = delete;
  FilterDescriptor& operator=(const FilterDescriptor&) = delete;
  void set(int k, int c, int r, int s) {
    CUDNN_CHECK(cudnnSetFilter4dDescriptor(d_, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, k, c, r, s));
  }
  cudnnFilterDescriptor_t get() const { return d_; }

 private:
  cudnnFilterDescriptor_t d_ = nullptr;
};

class ConvDescriptor {
 public:
  ConvDescriptor() { CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&d_)); }
  ~ConvDescriptor() { cudnnDestroyConvolutionDescriptor(d_); }
  ConvDescriptor(const ConvDescriptor&) = delete;
  ConvDescriptor& operator=(const ConvDescriptor&) = delete;
  cudnnConvolutionDescriptor_t get() const { return d_; }

 private:
  cudnnConvolutionDescriptor_t d_ = nullptr;
};

enum class Pass { Forward = 0, BackwardData = 1, BackwardFilter = 2 };
const char* pass_name(Pass p) {
  switch (p) {
    case Pass::Forward:
      return "conv2d_forward";
    case Pass::BackwardData:
      return "conv2d_backward_input";
    case Pass::BackwardFilter:
      return "conv2d_backward_weight";
  }
  return "conv2d";
}

/// The descriptors of one cuDNN convolution call: x (or dx), y (or dy), the weight, the convolution.
struct CudnnConv {
  TensorDescriptor x, y;
  FilterDescriptor w;
  ConvDescriptor conv;
  bool tf32 = false;
  bool deterministic = false;  // cuda::deterministic(): only algorithms that give the same bits each run

  CudnnConv(const ConvShape& g, int64_t x_img) {
    x.set(g.N, g.C, g.H, g.W, x_img);
    y.set(g.N, g.K, g.P, g.Q, g.y_stride());
    w.set(g.K, g.C, g.R, g.S);
    CUDNN_CHECK(cudnnSetConvolution2dDescriptor(conv.get(), g.ph, g.pw, g.sh, g.sw, 1, 1,
                                                CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
    // FMA: no tensor cores, no TF32. The search sets each math type it tries (search_maths), then
    // choose() the chosen result's.
    tf32 = tf32_enabled();
    deterministic = cuda::deterministic();
    set_math(tf32 ? CUDNN_TENSOR_OP_MATH : CUDNN_FMA_MATH);
  }
  void set_math(cudnnMathType_t m) { CUDNN_CHECK(cudnnSetConvolutionMathType(conv.get(), m)); }
};

// ---- cuDNN: algorithm search and cache
// -------------------------------------------------------------------------------

struct AlgoChoice {
  int algo = 0;
  cudnnMathType_t math = CUDNN_FMA_MATH;
  std::size_t workspace = 0;
  float ms = std::numeric_limits<float>::infinity();  // cuDNN's time for it (unknown: infinite)
  bool cublas = false;  // run as a cuBLAS strided batched GEMM instead (pointwise only, Conv1x1)
  float cublas_ms = -1.0f;  // the GEMM's time when it was measured
};

// pass, N, C, H, W, x and y image strides, K, R, S, stride h/w, pad h/w, TF32, deterministic, 1x1 mode,
// pointer alignment
using AlgoKey = std::array<int64_t, 18>;

AlgoKey algo_key(Pass pass, const ConvShape& g, int64_t x_img, bool tf32, bool deterministic, Conv1x1 mode,
                 int64_t align) {
  return {int64_t(pass), g.N,  g.C,  g.H,  g.W,          x_img,
          g.y_stride(),  g.K,  g.R,  g.S,  g.sh,         g.sw,
          g.ph,          g.pw, tf32 ? 1 : 0, deterministic ? 1 : 0, int64_t(mode), align};
}

/// The alignment a call's buffers share, up to 16 bytes (4, 8 or 16 for float data). cuDNN's vectorised
/// and tensor-core kernels may need aligned pointers, and a channel slice (conv2d_forward_into) can
/// start anywhere: a choice made on aligned buffers is not reused on less aligned ones (PyTorch keys its
/// cuDNN plans the same way).
int64_t alignment(std::initializer_list<const void*> ptrs) {
  uintptr_t bits = 16;
  for (const void* p : ptrs) bits |= reinterpret_cast<uintptr_t>(p);
  return static_cast<int64_t>(bits & (~bits + 1));  // the lowest set bit
}

struct AlgoCache {
  std::mutex mu;
  std::map<AlgoKey, AlgoChoice> choices;
};
AlgoCache& algo_cache() {
  static AlgoCache* c = new AlgoCache();  // never destroyed: ops may run from static destructors
  return *c;
}

/// The largest workspace the search may use. The search needs at most what its hungriest algorithm asks
/// for; we round that up to a power of two (so the caching allocator keeps few distinct search blocks)
/// and cap it. Algorithms needing more are skipped by cuDNN. Without memory for it, search with none.
constexpr std::size_t kSearchWorkspaceCap = std::size_t(256) << 20;

Buffer search_workspace(std::size_t need) {
  std::size_t bytes = 0;
  if (need > 0) {
    bytes = 1;
    while (bytes < need && bytes < kSearchWorkspaceCap) bytes <<= 1;
    bytes = std::min(bytes, kSearchWorkspaceCap);
  }
  try {
    return Buffer(bytes);
  } catch (const OutOfMemory&) {
    return Buffer();
  }
}

/// The fastest successful result that fits `limit` bytes and, with TF32 off, uses FMA math; in
/// deterministic mode, only a deterministic one.
template <typename Perf>
bool pick(const std::vector<Perf>& perf, int returned, const CudnnConv& c, std::size_t limit, AlgoChoice& out) {
  for (int i = 0; i < returned; ++i) {
    const Perf& r = perf[i];
    if (r.status != CUDNN_STATUS_SUCCESS || r.memory > limit) continue;
    if (!c.tf32 && r.mathType != CUDNN_FMA_MATH) continue;
    if (c.deterministic && r.determinism != CUDNN_DETERMINISTIC) continue;
    out.algo = static_cast<int>(r.algo);
    out.math = r.mathType;
    out.workspace = r.memory;
    out.ms = r.time;
    return true;
  }
  return false;
}

/// The math types a search tries. TF32 on: tensor-op math, then plain FMA, and the faster result wins —
/// cuDNN's FMA kernels can beat its TF32 ones on small convolutions, which pay for NCHW <-> NHWC transform
/// kernels around the tensor-core one (batch-1 inference on the H200, run 5: 3.19 ms with TF32 off
/// against 4.11 with it on). TF32 off: FMA only.
std::vector<cudnnMathType_t> search_maths(const CudnnConv& c) {
  if (c.tf32) return {CUDNN_TENSOR_OP_MATH, CUDNN_FMA_MATH};
  return {CUDNN_FMA_MATH};
}

/// The pass's choice: one cudnnFind*Ex per math type (search_maths), keeping the fastest usable result.
/// `ws_size(a, &bytes)` is the pass's cudnnGet*WorkspaceSize for algorithm a (the search's workspace is the
/// hungriest applicable one's), `find(ws, perf, returned)` its cudnnFind*Ex. Should nothing be usable,
/// `fallback`, an algorithm that supports every configuration, with the descriptor's default math.
template <typename Perf, typename WsSize, typename Find>
AlgoChoice search(CudnnConv& c, int max_count, int algo_count, int fallback, WsSize ws_size, Find find) {
  AlgoChoice best;
  bool found = false;
  for (cudnnMathType_t math : search_maths(c)) {
    c.set_math(math);
    std::size_t need = 0;
    for (int a = 0; a < algo_count; ++a) {
      std::size_t bytes = 0;  // an algorithm that does not apply answers with an error: ignored
      if (ws_size(a, &bytes) == CUDNN_STATUS_SUCCESS) need = std::max(need, bytes);
    }
    Buffer ws = search_workspace(need);
    std::vector<Perf> perf(std::max(max_count, 1));
    int returned = 0;
    find(ws, perf, returned);
    AlgoChoice ch;
    if (pick(perf, returned, c, ws.size(), ch) && (!found || ch.ms < best.ms)) {
      best = ch;
      found = true;
    }
  }
  if (!found) {
    best = AlgoChoice{};
    best.algo = fallback;
    best.math = c.tf32 ? CUDNN_TENSOR_OP_MATH : CUDNN_FMA_MATH;
    c.set_math(best.math);
    CUDNN_CHECK(ws_size(fallback, &best.workspace));
  }
  return best;
}

AlgoChoice find_forward(cudnnHandle_t h, CudnnConv& c, const float* x, const float* w, float* y) {
  int max_count = 0;
  CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithmMaxCount(h, &max_count));
  auto ws_size = [&](int a, std::size_t* bytes) {
    return cudnnGetConvolutionForwardWorkspaceSize(h, c.x.get(), c.w.get(), c.conv.get(), c.y.get(),
                                                   static_cast<cudnnConvolutionFwdAlgo_t>(a), bytes);
  };
  auto find = [&](Buffer& ws, std::vector<cudnnConvolutionFwdAlgoPerf_t>& perf, int& returned) {
    CUDNN_CHECK(cudnnFindConvolutionForwardAlgorithmEx(h, c.x.get(), x, c.w.get(), w, c.conv.get(), c.y.get(),
                                                       y, static_cast<int>(perf.size()), &returned, perf.data(),
                                                       ws.data(), ws.size()));
  };
  // Fallback (should not be needed): implicit GEMM, which supports every configuration.
  return search<cudnnConvolutionFwdAlgoPerf_t>(c, max_count, CUDNN_CONVOLUTION_FWD_ALGO_COUNT,
                                               CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM, ws_size, find);
}

AlgoChoice find_backward_data(cudnnHandle_t h, CudnnConv& c, const float* w, const float* dy, float* dx) {
  int max_count = 0;
  CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithmMaxCount(h, &max_count));
  auto ws_size = [&](int a, std::size_t* bytes) {
    return cudnnGetConvolutionBackwardDataWorkspaceSize(h, c.w.get(), c.y.get(), c.conv.get(), c.x.get(),
                                                        static_cast<cudnnConvolutionBwdDataAlgo_t>(a), bytes);
  };
  auto find = [&](Buffer& ws, std::vector<cudnnConvolutionBwdDataAlgoPerf_t>& perf, int& returned) {
    CUDNN_CHECK(cudnnFindConvolutionBackwardDataAlgorithmEx(h, c.w.get(), w, c.y.get(), dy, c.conv.get(),
                                                            c.x.get(), dx, static_cast<int>(perf.size()),
                                                            &returned, perf.data(), ws.data(), ws.size()));
  };
  // Fallback: ALGO_1 is deterministic (ALGO_0 adds with atomics) and supports every configuration.
  return search<cudnnConvolutionBwdDataAlgoPerf_t>(c, max_count, CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT,
                                                   CUDNN_CONVOLUTION_BWD_DATA_ALGO_1, ws_size, find);
}

AlgoChoice find_backward_filter(cudnnHandle_t h, CudnnConv& c, const float* x, const float* dy, float* dw) {
  int max_count = 0;
  CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithmMaxCount(h, &max_count));
  auto ws_size = [&](int a, std::size_t* bytes) {
    return cudnnGetConvolutionBackwardFilterWorkspaceSize(h, c.x.get(), c.y.get(), c.conv.get(), c.w.get(),
                                                          static_cast<cudnnConvolutionBwdFilterAlgo_t>(a), bytes);
  };
  auto find = [&](Buffer& ws, std::vector<cudnnConvolutionBwdFilterAlgoPerf_t>& perf, int& returned) {
    CUDNN_CHECK(cudnnFindConvolutionBackwardFilterAlgorithmEx(h, c.x.get(), x, c.y.get(), dy, c.conv.get(),
                                                              c.w.get(), dw, static_cast<int>(perf.size()),
                                                              &returned, perf.data(), ws.data(), ws.size()));
  };
  // Fallback: ALGO_1 is deterministic (ALGO_0 and ALGO_3 add with atomics) and supports every configuration.
  return search<cudnnConvolutionBwdFilterAlgoPerf_t>(c, max_count, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT,
                                                     CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1, ws_size, find);
}

// ---- cuBLAS for pointwise convolutions (cuda/pointwise_gemm.h)
// ------------------------------------------------------------------------------------------------------------

/// One strided batch of column-major GEMMs, C_i = op(A_i) op(B_i), float32 operands, TF32 per the switch.
/// Every size is a convolution dimension already checked against kMaxGemmDim (conv_shape), so fits int.
void cublas_strided(const StridedGemm& s, const float* A, const float* B, float* C) {
  cublasHandle_t h = static_cast<cublasHandle_t>(cublas());  // bound to stream()
  const cublasComputeType_t compute = tf32_enabled() ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  const float one = 1.0f, zero = 0.0f;
  auto i = [](int64_t v) { return static_cast<int>(v); };
  CUBLAS_CHECK(cublasGemmStridedBatchedEx(h, s.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, s.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                                          i(s.m), i(s.n), i(s.k), &one, A, CUDA_R_32F, i(s.lda), s.stride_a, B,
                                          CUDA_R_32F, i(s.ldb), s.stride_b, &zero, C, CUDA_R_32F, i(s.ldc),
                                          s.stride_c, i(s.batch), compute, CUBLAS_GEMM_DEFAULT));
}

/// The cached choice for this call, searching (with `find`, on the call's own buffers) the first time.
/// When `gemm_applies` (a pointwise forward or backward input), the Conv1x1 switch may make the choice
/// cuBLAS: always (Cublas), or when `gemm` (one run of the cuBLAS call) times faster than cuDNN's best
/// (Auto). Leaves the descriptor's math type set to the choice's.
template <typename Find, typename Gemm>
AlgoChoice choose(Pass pass, const ConvShape& g, int64_t x_img, int64_t align, CudnnConv& c, bool gemm_applies,
                  Find find, Gemm gemm) {
  const Conv1x1 mode = gemm_applies ? conv1x1() : Conv1x1::Cudnn;
  const AlgoKey key = algo_key(pass, g, x_img, c.tf32, c.deterministic, mode, align);
  AlgoCache& cache = algo_cache();
  std::lock_guard<std::mutex> lock(cache.mu);
  auto it = cache.choices.find(key);
  if (it == cache.choices.end()) {
    // The search runs and times kernels, and synchronises: impossible inside a stream capture.
    if (capturing())
      throw Error(std::string(pass_name(pass)) + ": x (" + std::to_string(g.N) + ", " + std::to_string(g.C) +
                  ", " + std::to_string(g.H) + ", " + std::to_string(g.W) + ") with weight (" +
                  std::to_string(g.K) + ", " + std::to_string(g.C) + ", " + std::to_string(g.R) + ", " +
                  std::to_string(g.S) + ") was first seen inside a CUDA graph capture, where the algorithm "
                  "search cannot run: run the same step once before capturing it");
    AlgoChoice ch;
    if (mode == Conv1x1::Cublas) {
      ch.cublas = true;
    } else {
      ch = find();
      if (mode == Conv1x1::Auto) {
        ch.cublas_ms = static_cast<float>(time_best_of_three_ms(gemm));
        ch.cublas = ch.cublas_ms < ch.ms;
      }
    }
    it = cache.choices.emplace(key, ch).first;
    if (log_choices()) {
      std::fprintf(stderr, "ladnn: %s x (%d, %d, %d, %d) w (%d, %d, %d, %d) stride %dx%d pad %dx%d %s: ",
                   pass_name(pass), g.N, g.C, g.H, g.W, g.K, g.C, g.R, g.S, g.sh, g.sw, g.ph, g.pw,
                   c.tf32 ? "tf32" : "fp32");
      if (mode == Conv1x1::Cublas)
        std::fprintf(stderr, "cuBLAS GEMM (LADNN_CONV1X1=cublas)\n");
      else if (mode == Conv1x1::Auto)
        std::fprintf(stderr, "cuDNN algo %d, math %d, workspace %zu B, %.4f ms; cuBLAS GEMM %.4f ms -> %s\n",
                     ch.algo, static_cast<int>(ch.math), ch.workspace, ch.ms, ch.cublas_ms,
                     ch.cublas ? "cuBLAS" : "cuDNN");
      else
        std::fprintf(stderr, "cuDNN algo %d, math %d, workspace %zu B, %.4f ms -> cuDNN\n", ch.algo,
                     static_cast<int>(ch.math), ch.workspace, ch.ms);
    }
  }
  if (!it->second.cublas) c.set_math(it->second.math);
  return it->second;
}

cudnnHandle_t cudnn_handle() {
  return static_cast<cudnnHandle_t>(cudnn());
}

// The library versions open the op's profiler range themselves, after the (first-call) search: the range
// then times the op alone and names what ran, "cudnn" or "cublas".

void cudnn_forward(const char* op, const ConvShape& g, const float* x, const float* w, const float* bias,
                   float* y) {
  cudnnHandle_t h = cudnn_handle();
  CudnnConv c(g, g.x_img);
  const bool pw = g.pointwise();
  const StridedGemm gemm =
      pw ? pointwise_forward_gemm(g.N, g.C, int64_t(g.H) * g.W, g.K, g.x_img, g.y_stride()) : StridedGemm{};
  auto run_gemm = [&] { cublas_strided(gemm, x, w, y); };
  const AlgoChoice ch =
      choose(Pass::Forward, g, g.x_img, alignment({x, w, y}), c, pw, [&] { return find_forward(h, c, x, w, y); },
             run_gemm);
  OpRange range(op, ch.cublas ? "cublas" : "cudnn");
  const float one = 1.0f, zero = 0.0f;
  if (ch.cublas) {
    run_gemm();
  } else {
    Buffer ws = workspace(ch.workspace);
    CUDNN_CHECK(cudnnConvolutionForward(h, &one, c.x.get(), x, c.w.get(), w, c.conv.get(),
                                        static_cast<cudnnConvolutionFwdAlgo_t>(ch.algo), ws.data(), ws.size(),
                                        &zero, c.y.get(), y));
  }
  if (bias) {  // y += bias, broadcast over N, P, Q
    TensorDescriptor bd;
    bd.set(1, g.K, 1, 1, g.K);
    CUDNN_CHECK(cudnnAddTensor(h, &one, bd.get(), bias, &one, c.y.get(), y));
  }
}

void cudnn_backward_input(const char* op, const ConvShape& g, const float* dy, const float* w, float* dx) {
  cudnnHandle_t h = cudnn_handle();
  const int64_t packed = int64_t(g.C) * g.H * g.W;  // dx is a new contiguous tensor
  CudnnConv c(g, packed);
  const bool pw = g.pointwise();
  const StridedGemm gemm =
      pw ? pointwise_backward_input_gemm(g.N, g.C, int64_t(g.H) * g.W, g.K, g.y_stride()) : StridedGemm{};
  auto run_gemm = [&] { cublas_strided(gemm, dy, w, dx); };
  const AlgoChoice ch = choose(
      Pass::BackwardData, g, packed, alignment({dy, w, dx}), c, pw,
      [&] { return find_backward_data(h, c, w, dy, dx); }, run_gemm);
  OpRange range(op, ch.cublas ? "cublas" : "cudnn");
  if (ch.cublas) {
    run_gemm();
    return;
  }
  Buffer ws = workspace(ch.workspace);
  const float one = 1.0f, zero = 0.0f;
  CUDNN_CHECK(cudnnConvolutionBackwardData(h, &one, c.w.get(), w, c.y.get(), dy, c.conv.get(),
                                           static_cast<cudnnConvolutionBwdDataAlgo_t>(ch.algo), ws.data(),
                                           ws.size(), &zero, c.x.get(), dx));
}

void cudnn_backward_weight(const char* op, const ConvShape& g, const float* dy, const float* x, float* dw) {
  cudnnHandle_t h = cudnn_handle();
  CudnnConv c(g, g.x_img);
  const AlgoChoice ch = choose(
      Pass::BackwardFilter, g, g.x_img, alignment({dy, x, dw}), c, false,
      [&] { return find_backward_filter(h, c, x, dy, dw); },
      [] {});
  OpRange range(op, "cudnn");
  Buffer ws = workspace(ch.workspace);
  const float one = 1.0f, zero = 0.0f;
  CUDNN_CHECK(cudnnConvolutionBackwardFilter(h, &one, c.x.get(), x, c.y.get(), dy, c.conv.get(),
                                             static_cast<cudnnConvolutionBwdFilterAlgo_t>(ch.algo), ws.data(),
                                             ws.size(), &zero, c.w.get(), dw));
}

const char* conv_impl_name(Impl i) {
  return impl_name(Family::Conv, i);
}

}  // namespace

// ---- cuda/ops.h
// ----------------------------------------------------------------------------------------------------------

namespace {
/// The forward into y (its images y_img elements apart; 0: a new packed tensor), both versions.
void forward_into(const char* op, const Tensor& x_in, const Tensor& w_in, const Tensor& bias_in,
                  const ops::Conv2dParams& p, const Tensor& y, int64_t y_img) {
  int64_t x_img = 0;
  const Tensor x = images_view(x_in, x_img);
  const Tensor w = w_in.contiguous();
  const Tensor bias = bias_in.defined() ? bias_in.contiguous() : Tensor();
  ConvShape g = conv_shape(op, x.shape(), w.shape(), p, x_img);
  g.y_img = y_img;
  // An empty reduction (C == 0) has nothing for cuDNN to do: the native epilogue writes the bias (or 0).
  const Impl which = impl(Family::Conv) == Impl::Library && g.C > 0 ? Impl::Library : Impl::Native;
  if (y.numel() == 0) {
    OpRange range(op, conv_impl_name(which));
    return;
  }
  const float* b = bias.defined() ? bias.data<float>() : nullptr;
  if (which == Impl::Library) {
    cudnn_forward(op, g, x.data<float>(), w.data<float>(), b, y.data<float>());
  } else {
    OpRange range(op, conv_impl_name(which));
    native_forward(g, x.data<float>(), w.data<float>(), b, y.data<float>());
  }
}
}  // namespace

Tensor conv2d_forward(const Tensor& x, const Tensor& w, const Tensor& bias, const ops::Conv2dParams& p) {
  const char* op = "conv2d_forward";
  detail::require_float32(x, op, "input");
  detail::require_float32(w, op, "weight");
  if (bias.defined()) detail::require_float32(bias, op, "bias");
  Tensor y = Tensor::empty(ops::conv2d_output_shape(x.shape(), w.shape(), p), DType::Float32, x.device());
  forward_into(op, x, w, bias, p, y, 0);
  return y;
}

void conv2d_forward_into(const Tensor& x, const Tensor& w, const Tensor& bias, const ops::Conv2dParams& p,
                         const Tensor& out) {
  const char* op = "conv2d_forward";  // the same op for the profiler and cuDNN's choices
  detail::require_float32(x, op, "input");
  detail::require_float32(w, op, "weight");
  if (bias.defined()) detail::require_float32(bias, op, "bias");
  // ops::conv2d_forward_into checked that each image of out is one packed (K, P, Q) block.
  forward_into(op, x, w, bias, p, out, out.size(0) <= 1 ? 0 : out.strides()[0]);
}

Tensor conv2d_backward_input(const Tensor& dy_in, const Tensor& w_in, const Shape& x_shape,
                             const ops::Conv2dParams& p) {
  const char* op = "conv2d_backward_input";
  detail::require_float32(dy_in, op, "grad_output");
  detail::require_float32(w_in, op, "weight");
  // dy read in place when each image is a packed block, even images apart (a channel slice: the training
  // dense block's output gradient); the cuDNN descriptor and the kernels take the images' distance.
  int64_t dy_img = 0;
  const Tensor dy = images_view(dy_in, dy_img), w = w_in.contiguous();
  ConvShape g = conv_shape(op, x_shape, w.shape(), p, x_shape[1] * x_shape[2] * x_shape[3]);
  g.y_img = dy_img;
  // No output channels (K == 0): dx is all zeros, which the native epilogue writes.
  const Impl which = impl(Family::Conv) == Impl::Library && g.K > 0 ? Impl::Library : Impl::Native;
  Tensor dx = Tensor::empty(x_shape, DType::Float32, dy.device());
  if (dx.numel() == 0) {
    OpRange range(op, conv_impl_name(which));
    return dx;
  }
  if (which == Impl::Library) {
    auto library = [&] { cudnn_backward_input(op, g, dy.data<float>(), w.data<float>(), dx.data<float>()); };
    if (!conv2d_backward_input_fused(dy, w, p, dx, library)) library();  // LADNN_FUSED_CONV: ours, or not
  } else {
    OpRange range(op, conv_impl_name(which));
    native_backward_input(g, dy.data<float>(), w.data<float>(), dx.data<float>());
  }
  return dx;
}

Tensor conv2d_backward_weight(const Tensor& dy_in, const Tensor& x_in, const Shape& w_shape,
                              const ops::Conv2dParams& p) {
  const char* op = "conv2d_backward_weight";
  detail::require_float32(dy_in, op, "grad_output");
  detail::require_float32(x_in, op, "input");
  int64_t x_img = 0, dy_img = 0;
  const Tensor x = images_view(x_in, x_img);
  const Tensor dy = images_view(dy_in, dy_img);  // in place when a channel slice (as conv2d_backward_input)
  ConvShape g = conv_shape(op, x.shape(), w_shape, p, x_img);
  g.y_img = dy_img;
  // An empty batch (N == 0) sums nothing: zeros, which the native epilogue writes.
  const Impl which = impl(Family::Conv) == Impl::Library && g.N > 0 ? Impl::Library : Impl::Native;
  Tensor dw = Tensor::empty(w_shape, DType::Float32, dy.device());
  if (dw.numel() == 0) {
    OpRange range(op, conv_impl_name(which));
    return dw;
  }
  if (which == Impl::Library) {
    auto library = [&] { cudnn_backward_weight(op, g, dy.data<float>(), x.data<float>(), dw.data<float>()); };
    if (!conv2d_backward_weight_fused(dy, x, x_img, p, dw, library)) library();  // LADNN_FUSED_CONV
  } else {
    OpRange range(op, conv_impl_name(which));
    native_backward_weight(g, dy.data<float>(), x.data<float>(), dw.data<float>());
  }
  return dw;
}

Tensor conv2d_backward_weight_pre(const Tensor& dy_in, const Tensor& x_in, const Shape& w_shape,
                                  const ops::Conv2dParams& p, const ops::BnEval& pre,
                                  const std::function<Tensor()>& unfused) {
  const char* op = "conv2d_backward_weight";
  detail::require_float32(dy_in, op, "grad_output");
  detail::require_float32(x_in, op, "input");
  int64_t x_img = 0, dy_img = 0;
  const Tensor x = images_view(x_in, x_img);
  const Tensor dy = images_view(dy_in, dy_img);
  if (impl(Family::Conv) != Impl::Library || x.size(0) == 0 || shape_numel(w_shape) == 0) return unfused();
  Tensor dw = Tensor::empty(w_shape, DType::Float32, dy.device());
  if (conv2d_backward_weight_pre_fused(dy, x, x_img, p, pre, dw, [&] {
        Tensor out = dw;  // a handle: Auto's timing of the unfused ops writes into dw's storage
        out.copy_(unfused());
      }))
    return dw;
  return unfused();
}

Tensor conv2d_backward_bias(const Tensor& dy_in) {
  const char* op = "conv2d_backward_bias";
  detail::require_float32(dy_in, op, "grad_output");
  const Tensor dy = dy_in.contiguous();
  const int64_t N = dy.size(0), K = dy.size(1), P = dy.size(2), Q = dy.size(3);
  const bool fits = N <= INT_MAX && K <= INT_MAX && P * Q <= INT_MAX;
  const Impl which =
      impl(Family::Conv) == Impl::Library && N * P * Q > 0 && fits ? Impl::Library : Impl::Native;
  OpRange range(op, conv_impl_name(which));
  Tensor db = Tensor::empty({K}, DType::Float32, dy.device());
  if (K == 0) return db;
  if (!fits)
    throw Error(std::string(op) + ": grad_output " + shape_str(dy.shape()) +
                " is too large for the GPU kernels");
  if (which == Impl::Library) {
    TensorDescriptor dyd, dbd;
    dyd.set(static_cast<int>(N), static_cast<int>(K), static_cast<int>(P), static_cast<int>(Q), K * P * Q);
    dbd.set(1, static_cast<int>(K), 1, 1, K);
    const float one = 1.0f, zero = 0.0f;
    CUDNN_CHECK(cudnnConvolutionBackwardBias(cudnn_handle(), &one, dyd.get(), dy.data<float>(), &zero,
                                             dbd.get(), db.data<float>()));
  } else {
    launch_kernel(bias_grad_kernel, static_cast<unsigned>(K), detail::kThreads, 0, cur_stream(),
                  dy.data<float>(), static_cast<int>(N), static_cast<int>(K), static_cast<int>(P * Q),
                  db.data<float>());
    CUDA_CHECK_LAUNCH();
  }
  return db;
}

}  // namespace ladnn::cuda
