// cuda/conv2d_gemm.cuh — the implicit-GEMM view of a convolution for cuda/gemm_tile.cuh's tiled kernel:
// the operands that fetch GEMM elements straight from NCHW tensors, and the epilogues that write the
// products back. cuda/conv2d.cu runs them (its header derives the three GEMMs); with LADNN_TILE_EMULATION
// they compile as plain C++ for tests/cuda_tile_emulation_test.cpp, like cuda/gemm_tile.cuh.
//
// Index type: int for every GEMM index (N*P*Q, C*R*S, ... are checked to stay below 2^30 by
// cuda/conv2d.cu's conv_shape), int64_t for memory offsets.
#pragma once

#include <cstdint>

#include "cuda/gemm_tile.cuh"
#include "cuda/launch.h"
#include "tensor/tensor.h"

namespace ladnn::cuda {
namespace {

/// One convolution's sizes, as the kernels take them (every GEMM dimension fits in int, checked).
struct ConvShape {
  int N, C, H, W;  // input
  int K, R, S;     // weight (K, C, R, S)
  int P, Q;        // output plane
  int sh, sw, ph, pw;
  int64_t x_img;      // elements between images of x: C*H*W, or more for a channel slice
  int64_t y_img = 0;  // elements between images of y (forward) or dy (backward): 0 for packed K*P*Q, more
                      // for a channel slice
  int64_t y_stride() const { return y_img > 0 ? y_img : int64_t(K) * P * Q; }
  bool pointwise() const { return R == 1 && S == 1 && sh == 1 && sw == 1 && ph == 0 && pw == 0; }
  Shape y_shape() const { return {N, K, P, Q}; }
};

// ---- operands (the interface is documented in cuda/gemm_tile.cuh)
// ------------------------------------------------

/// Forward B: element (crs, npq) = x[n][c][p*sh - ph + r][q*sw - pw + s], 0 in the padding. Threads
/// walk npq (consecutive q: adjacent pixels of an input row when the stride is 1).
struct Im2colColumns {
  static constexpr bool kFastK = false;
  const float* x;
  ConvShape g;
  struct Outer {
    const float* img;  // x[n]
    int ih0, iw0;      // input row / column of tap (0, 0) for output (p, q)
  };
  __device__ __forceinline__ Outer outer(int npq, int) const {
    const int PQ = g.P * g.Q;
    const int n = npq / PQ, pq = npq - n * PQ;
    const int p = pq / g.Q, q = pq - p * g.Q;
    return {x + n * g.x_img, p * g.sh - g.ph, q * g.sw - g.pw};
  }
  __device__ __forceinline__ float at(const Outer& o, int crs) const {
    const int RS = g.R * g.S;
    const int c = crs / RS, rs = crs - c * RS;
    const int r = rs / g.S, s = rs - r * g.S;
    const int ih = o.ih0 + r, iw = o.iw0 + s;
    // One unsigned compare per bound: a negative index wraps to a huge unsigned value.
    if (static_cast<unsigned>(ih) >= static_cast<unsigned>(g.H) ||
        static_cast<unsigned>(iw) >= static_cast<unsigned>(g.W))
      return 0.0f;
    return __ldg(o.img + int64_t(c) * g.H * g.W + ih * g.W + iw);
  }
};

/// Pointwise B of forward (and of backward input, with dy for x): element (c, n*HW + hw) = t[n][c][hw],
/// images `img` elements apart. No taps, no padding.
struct PointwiseColumns {
  static constexpr bool kFastK = false;
  const float* t;
  int HW;
  int64_t img;
  struct Outer {
    const float* p;  // t[n][0][hw]
  };
  __device__ __forceinline__ Outer outer(int nhw, int) const {
    const int n = nhw / HW, hw = nhw - n * HW;
    return {t + n * img + hw};
  }
  __device__ __forceinline__ float at(const Outer& o, int c) const { return __ldg(o.p + int64_t(c) * HW); }
};

/// Backward-input A: element (c, krs) = weight[k][c][r][s], the weight seen as (C, K*R*S). Threads walk
/// c (for a 1x1 weight, adjacent elements).
template <bool POINTWISE>
struct WeightByInputChannel {
  static constexpr bool kFastK = false;
  const float* w;
  int C, RS;
  struct Outer {
    const float* base;  // weight[0][c]
  };
  __device__ __forceinline__ Outer outer(int c, int) const { return {w + int64_t(c) * RS}; }
  __device__ __forceinline__ float at(const Outer& o, int krs) const {
    if (POINTWISE) return __ldg(o.base + int64_t(krs) * C);  // RS == 1: krs is k
    const int k = krs / RS, rs = krs - k * RS;
    return __ldg(o.base + int64_t(k) * C * RS + rs);
  }
};

/// Backward-input B: element (krs, nhw) = dy[n][k][p][q] for the output (p, q) that reads input (h, w)
/// through tap (r, s) — p * sh - ph + r = h, q * sw - pw + s = w — or 0 when there is none (the tap
/// falls between strided outputs or outside the output plane).
struct DyGather {
  static constexpr bool kFastK = false;
  const float* dy;
  ConvShape g;
  int64_t img;  // elements between dy's images (g.y_stride())
  struct Outer {
    const float* img;  // dy[n]
    int hp, wp;        // h + ph, w + pw: p * sh + r and q * sw + s must equal these
  };
  __device__ __forceinline__ Outer outer(int nhw, int) const {
    const int HW = g.H * g.W;
    const int n = nhw / HW, hw = nhw - n * HW;
    const int h = hw / g.W, w = hw - h * g.W;
    return {dy + n * img, h + g.ph, w + g.pw};
  }
  __device__ __forceinline__ float at(const Outer& o, int krs) const {
    const int RS = g.R * g.S;
    const int k = krs / RS, rs = krs - k * RS;
    const int r = rs / g.S, s = rs - r * g.S;
    const int ps = o.hp - r, qs = o.wp - s;  // p * sh, q * sw if such an output exists
    if (ps < 0 || qs < 0) return 0.0f;
    const int p = ps / g.sh, q = qs / g.sw;
    if (p * g.sh != ps || q * g.sw != qs || p >= g.P || q >= g.Q) return 0.0f;
    return __ldg(o.img + int64_t(k) * g.P * g.Q + p * g.Q + q);
  }
};

/// Backward-weight A: element (k, npq) = dy[n][k][pq], images `img` elements apart. Threads walk npq.
struct DyRows {
  static constexpr bool kFastK = true;
  const float* dy;
  int PQ;
  int64_t img;
  struct Outer {
    const float* base;  // dy[0][k]
  };
  __device__ __forceinline__ Outer outer(int k, int) const { return {dy + int64_t(k) * PQ}; }
  __device__ __forceinline__ float at(const Outer& o, int npq) const {
    const int n = npq / PQ, pq = npq - n * PQ;
    return __ldg(o.base + n * img + pq);
  }
};

/// Backward-weight B: element (npq, crs) = x[n][c][p*sh - ph + r][q*sw - pw + s] (forward's column
/// matrix, transposed), 0 in the padding. Threads walk npq.
struct Im2colRows {
  static constexpr bool kFastK = true;
  const float* x;
  ConvShape g;
  struct Outer {
    int64_t coff;  // c * H * W
    int r, s;
  };
  __device__ __forceinline__ Outer outer(int crs, int) const {
    const int RS = g.R * g.S;
    const int c = crs / RS, rs = crs - c * RS;
    const int r = rs / g.S;
    return {int64_t(c) * g.H * g.W, r, rs - r * g.S};
  }
  __device__ __forceinline__ float at(const Outer& o, int npq) const {
    const int PQ = g.P * g.Q;
    const int n = npq / PQ, pq = npq - n * PQ;
    const int p = pq / g.Q, q = pq - p * g.Q;
    const int ih = p * g.sh - g.ph + o.r, iw = q * g.sw - g.pw + o.s;
    if (static_cast<unsigned>(ih) >= static_cast<unsigned>(g.H) ||
        static_cast<unsigned>(iw) >= static_cast<unsigned>(g.W))
      return 0.0f;
    return __ldg(x + n * g.x_img + o.coff + ih * g.W + iw);
  }
};

/// Pointwise backward-weight B: element (n*HW + hw, c) = x[n][c][hw].
struct PointwiseRows {
  static constexpr bool kFastK = true;
  const float* x;
  int HW;
  int64_t img;
  struct Outer {
    int64_t coff;  // c * HW
  };
  __device__ __forceinline__ Outer outer(int c, int) const { return {int64_t(c) * HW}; }
  __device__ __forceinline__ float at(const Outer& o, int nhw) const {
    const int n = nhw / HW, hw = nhw - n * HW;
    return __ldg(x + n * img + o.coff + hw);
  }
};

// ---- epilogues
// ------------------------------------------------------------------------------------------------------

/// GEMM element (channel m, column n*plane + pos) -> out[n][m][pos] (+ bias[m]): the (channels,
/// N*plane) product back into an NCHW tensor whose images are `img` elements apart (channels * plane
/// when packed, more when out is a channel slice of a wider tensor).
struct NchwEpilogue {
  float* out;
  int plane;
  int64_t img;
  const float* bias;  // null: none
  __device__ __forceinline__ void operator()(int m, int col, float acc, int, int) const {
    const int n = col / plane, pos = col - n * plane;
    out[int64_t(n) * img + int64_t(m) * plane + pos] = bias ? acc + __ldg(bias + m) : acc;
  }
};

/// Row-major (M, N) result; split s writes its partial sum at out + s * M * N.
struct SplitEpilogue {
  float* out;
  int N;
  int64_t count;  // M * N
  __device__ __forceinline__ void operator()(int m, int n, float acc, int, int split) const {
    out[split * count + int64_t(m) * N + n] = acc;
  }
};

// ---- the three GEMMs
// -------------------------------------------------------------------------------------------------- Each
// driver picks the operands for its pass (pointwise or general) and calls launch(opA, opB, epilogue) once;
// the caller supplies the tile plan for the sizes *_dims gives.

struct GemmDims {
  int M, N, K;  // C (M, N) = A (M, K) * B (K, N)
};

/// y (K, N*P*Q) = weight (K, C*R*S) * col(x) (C*R*S, N*P*Q), + bias in the epilogue.
inline GemmDims forward_dims(const ConvShape& g) {
  return {g.K, g.N * g.P * g.Q, g.C * g.R * g.S};
}
/// dx (C, N*H*W) = weight^T (C, K*R*S) * gather(dy) (K*R*S, N*H*W).
inline GemmDims backward_input_dims(const ConvShape& g) {
  return {g.C, g.N * g.H * g.W, g.K * g.R * g.S};
}
/// dweight (K, C*R*S) = dy (K, N*P*Q) * col(x)^T (N*P*Q, C*R*S).
inline GemmDims backward_weight_dims(const ConvShape& g) {
  return {g.K, g.C * g.R * g.S, g.N * g.P * g.Q};
}

/// The forward's operands with any epilogue: NchwEpilogue (y itself, with the bias) or, split-K,
/// SplitEpilogue (partial sums, summed into y by sum_splits_nchw_kernel).
template <class Epi, class Launch>
void forward_gemm_with(const ConvShape& g, const float* x, const float* w, const Epi& epi, Launch&& launch) {
  const DenseOperand<true> a{w, int64_t(g.C) * g.R * g.S, 1, 0};  // weight (K, C*R*S), row-major
  if (g.pointwise())  // y[n] (K, HW) = weight (K, C) * x[n] (C, HW)
    launch(a, PointwiseColumns{x, g.H * g.W, g.x_img}, epi);
  else
    launch(a, Im2colColumns{x, g}, epi);
}

template <class Launch>
void forward_gemm(const ConvShape& g, const float* x, const float* w, const float* bias, float* y,
                  Launch&& launch) {
  forward_gemm_with(g, x, w, NchwEpilogue{y, g.P * g.Q, g.y_stride(), bias}, launch);
}

/// Split-K forward (few output tiles, a long reduction: batch-1 inference): split s wrote its partial
/// product (K, N*P*Q) at partial + s * K * N*P*Q. Sums the splits in order (deterministic) and writes y
/// as NchwEpilogue would: out[n][k][pq] (+ bias[k]), images `img` elements apart.
template <class Launch>
void forward_gemm_split(const ConvShape& g, const float* x, const float* w, float* partial, Launch&& launch) {
  const int cols = g.N * g.P * g.Q;
  forward_gemm_with(g, x, w, SplitEpilogue{partial, cols, int64_t(g.K) * cols}, launch);
}

__global__ void sum_splits_nchw_kernel(const float* __restrict__ partial, int M, int N, int splits, int plane,
                                       int64_t img, const float* __restrict__ bias, float* __restrict__ out) {
  pdl_enter();
  const int64_t count = int64_t(M) * N;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count;
       i += int64_t(gridDim.x) * blockDim.x) {
    float s = 0.0f;
    for (int sp = 0; sp < splits; ++sp) s += partial[sp * count + i];
    const int m = static_cast<int>(i / N), col = static_cast<int>(i - int64_t(m) * N);
    const int n = col / plane, pos = col - n * plane;
    out[int64_t(n) * img + int64_t(m) * plane + pos] = bias ? s + bias[m] : s;
  }
}

template <class Launch>
void backward_input_gemm(const ConvShape& g, const float* dy, const float* w, float* dx, Launch&& launch) {
  const NchwEpilogue epi{dx, g.H * g.W, int64_t(g.C) * g.H * g.W, nullptr};
  if (g.pointwise())  // dx[n] (C, HW) = weight^T (C, K) * dy[n] (K, HW)
    launch(WeightByInputChannel<true>{w, g.C, 1}, PointwiseColumns{dy, g.H * g.W, g.y_stride()}, epi);
  else
    launch(WeightByInputChannel<false>{w, g.C, g.R * g.S}, DyGather{dy, g, g.y_stride()}, epi);
}

/// Writes split s's partial sums at out + s * K * C*R*S (out is dweight itself without split-K).
template <class Launch>
void backward_weight_gemm(const ConvShape& g, const float* dy, const float* x, float* out, Launch&& launch) {
  const int CRS = g.C * g.R * g.S;
  const SplitEpilogue epi{out, CRS, int64_t(g.K) * CRS};
  const DyRows a{dy, g.P * g.Q, g.y_stride()};
  if (g.pointwise())  // dweight (K, C) = sum over n of dy[n] (K, HW) * x[n]^T (HW, C)
    launch(a, PointwiseRows{x, g.H * g.W, g.x_img}, epi);
  else
    launch(a, Im2colRows{x, g}, epi);
}

}  // namespace
}  // namespace ladnn::cuda
