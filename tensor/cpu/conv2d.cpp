// tensor/cpu/conv2d.cpp — 2-D convolution on the CPU as GEMMs: im2col, shifted windows, or none.
//
// Shapes: x (N, C, H, W), weight (K, C, R, S), y (N, K, P, Q), P = (H + 2*ph - R) / sh + 1 (stride sh,
// padding ph; likewise Q along the width).
// Three algorithms, picked per call (pick_algo); each works one image at a time:
//
//   Pointwise (1x1, stride 1, no padding; DenseNet's bottleneck convs, most of its FLOPs): x[n] viewed
//     as (C, H*W) already is the column matrix, so each pass is a single GEMM with no copies:
//       forward          y[n] (K, P*Q)   = weight (K, C) * x[n] (C, P*Q)
//       backward input   dx[n] (C, H*W)  = weight^T * dy[n]
//       backward weight  dweight (K, C) += dy[n] * x[n]^T                           (summed over n)
//
//   Shifted windows (any other stride-1 conv: DenseNet's 3x3 growth convs): the im2col matrix of a
//     padded copy of the image is a set of overlapping windows of it, so the GEMM reads them in place
//     through row pointers; no im2col copy (see "the shifted-window algorithm" below).
//
//   Im2col (strided convs: the 7x7/2 stem): im2col lays the receptive fields out as the columns of
//       col (C*R*S, P*Q):  col[(c*R + r)*S + s][p*Q + q] = x[n][c][p*sh - ph + r][q*sw - pw + s]
//     (zero where that falls in the padding), and each pass is one GEMM:
//       forward          y[n]    (K, P*Q)     = weight (K, C*R*S) * col (C*R*S, P*Q)
//       backward input   dcol    (C*R*S, P*Q) = weight^T * dy[n] (K, P*Q);  dx[n] = col2im(dcol)
//       backward weight  dweight (K, C*R*S)  += dy[n] (K, P*Q) * col^T              (summed over n)
//     col2im is im2col's adjoint: it scatters each column entry back onto the input pixel it was read
//     from, adding where receptive fields overlap.
//
// backward bias: dbias[k] = sum over n, p, q of dy[n][k][p][q]. The bias, when there is one, starts
// each output row before the GEMM adds onto it.
//
// Threads. Two regimes, picked per call:
//   * batch >= threads (training, batched inference): images run in parallel, one per OpenMP thread,
//     each doing its copies and GEMMs single-threaded with our blocked GEMM, the weights packed once
//     for all of them (cpu::pack_a / gemm_packed). No synchronisation inside a conv, and no second
//     thread pool: OpenBLAS's own threads fight OpenMP's for the same cores (on 2 cores that cost
//     2-10x in our measurements). The weight gradient adds per-thread partial sums in a fixed order,
//     so results do not depend on timing.
//   * batch < threads (batch-1 inference): one image at a time; cpu::gemm (OpenBLAS unless
//     LADNN_CPU_GEMM=native) parallelises each GEMM, and im2col/col2im use OpenMP over rows/channels.
// Before this (one image at a time, im2col for every kernel, OpenBLAS) the 27 DenseNet-169 passes of
// bench/conv2d_bench.cpp took 2.5x as long in all (up to 6x for the 3x3 convs); bench/RESULTS-cpu.md.
//
// x may be a channel slice of a wider tensor (images_view): it is read in place, without a copy.
#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <new>
#include <string>
#include <vector>

#include "cuda/context.h"
#include "cuda/ops.h"
#include "tensor/cpu/gemm.h"
#include "tensor/ops.h"

namespace ladnn::ops {
namespace {

// Below this many elements an OpenMP fork/join costs more than the copy it would split.
constexpr int64_t kParallelMin = 1 << 15;

std::string hw_str(int64_t h, int64_t w) {
  return std::to_string(h) + "x" + std::to_string(w);
}

/// Everything about one convolution's sizes, checked once.
struct ConvGeom {
  int64_t N, C, H, W;  // input
  int64_t K, R, S;     // weight (K, C, R, S)
  int64_t P, Q;        // output plane
  int64_t sh, sw, ph, pw;
  int64_t x_stride = 0;  // elements between images of x: C*H*W, or more for a channel slice
  int64_t y_stride = 0;  // elements between images of y: K*P*Q, or more when writing into a slice
  int64_t hw() const { return H * W; }
  int64_t pq() const { return P * Q; }
  int64_t crs() const { return C * R * S; }
  /// 1x1, stride 1, no padding: the input plane is already the column matrix.
  bool pointwise() const { return R == 1 && S == 1 && sh == 1 && sw == 1 && ph == 0 && pw == 0; }
  Shape y_shape() const { return {N, K, P, Q}; }
};

/// Checks the shapes and parameters of a convolution of `x` by `w`; `op` names the caller in errors.
ConvGeom conv_geometry(const std::string& op, const Shape& x, const Shape& w, const Conv2dParams& p) {
  check(x.size() == 4, op + ": input must be 4-D (N, C, H, W), got " + shape_str(x));
  check(w.size() == 4, op + ": weight must be 4-D (K, C, R, S), got " + shape_str(w));
  check(x[1] == w[1], op + ": input " + shape_str(x) + " has " + std::to_string(x[1]) +
                          " channels but weight " + shape_str(w) + " expects " + std::to_string(w[1]));
  check(w[2] >= 1 && w[3] >= 1, op + ": weight " + shape_str(w) + " has an empty kernel");
  check(p.stride_h >= 1 && p.stride_w >= 1,
        op + ": stride must be positive, got " + hw_str(p.stride_h, p.stride_w));
  check(p.pad_h >= 0 && p.pad_w >= 0, op + ": padding must be non-negative, got " + hw_str(p.pad_h, p.pad_w));
  const int64_t hp = x[2] + 2 * p.pad_h, wp = x[3] + 2 * p.pad_w;
  check(w[2] <= hp && w[3] <= wp, op + ": kernel " + hw_str(w[2], w[3]) +
                                      " is larger than the padded input " + hw_str(hp, wp) + " (input " +
                                      shape_str(x) + ", padding " + hw_str(p.pad_h, p.pad_w) + ")");
  ConvGeom g;
  g.N = x[0], g.C = x[1], g.H = x[2], g.W = x[3];
  g.K = w[0], g.R = w[2], g.S = w[3];
  g.sh = p.stride_h, g.sw = p.stride_w, g.ph = p.pad_h, g.pw = p.pad_w;
  g.P = (hp - g.R) / g.sh + 1;
  g.Q = (wp - g.S) / g.sw + 1;
  g.x_stride = g.C * g.H * g.W;
  return g;
}

void check_operand(const std::string& op, const char* name, const Tensor& t) {
  check(t.defined(), op + ": " + name + " is undefined");
  check(t.dtype() == DType::Float32 || t.dtype() == DType::Float64,
        op + ": " + name + " must be float32 or float64, got " + dtype_name(t.dtype()));
}

/// Same dtype and same device (a CUDA op must never receive a host pointer).
void check_same_dtype(const std::string& op, const char* name_a, const Tensor& a, const char* name_b,
                      const Tensor& b) {
  check(a.dtype() == b.dtype(), op + ": " + name_a + " is " + dtype_name(a.dtype()) + " but " + name_b +
                                    " is " + dtype_name(b.dtype()));
  check(a.device() == b.device(), op + ": " + name_a + " is on " + a.device().str() + " but " + name_b +
                                      " is on " + b.device().str() + "; move both to one device first");
}

/// dy must be the shape this convolution produces.
void check_grad_output(const std::string& op, const Tensor& dy, const ConvGeom& g, const Shape& x_shape,
                       const Shape& w_shape) {
  check(dy.shape() == g.y_shape(), op + ": grad_output has shape " + shape_str(dy.shape()) +
                                       " but the convolution of input " + shape_str(x_shape) + " by weight " +
                                       shape_str(w_shape) + " gives " + shape_str(g.y_shape()));
}

/// x as the kernels read it: each image a contiguous (C, H, W) block, images `x_stride` apart. A
/// channel slice of a wider tensor (DenseNet's layers read the first C channels of a shared
/// feature buffer) already is one, so it is used in place; anything else is copied.
Tensor images_view(const Tensor& x, ConvGeom& g) {
  const Shape& st = x.strides();
  const bool inner_contiguous =
      (g.C <= 1 || st[1] == g.H * g.W) && (g.H <= 1 || st[2] == g.W) && (g.W <= 1 || st[3] == 1);
  if (inner_contiguous && (g.N <= 1 || st[0] >= g.C * g.H * g.W)) {
    g.x_stride = g.N <= 1 ? g.C * g.H * g.W : st[0];
    return x;
  }
  g.x_stride = g.C * g.H * g.W;
  return x.contiguous();
}

/// A 64-byte aligned scratch buffer that only grows, one per calling thread and slot: the column
/// matrices of a layer are reused by the next layer instead of being allocated (and page-faulted in)
/// on every call.
template <typename T, int Slot>
T* scratch(std::size_t count) {
  struct Buffer {
    T* data = nullptr;
    std::size_t capacity = 0;
    ~Buffer() { std::free(data); }
  };
  static thread_local Buffer buffer;
  if (count > buffer.capacity) {
    std::free(buffer.data);
    buffer.data = nullptr;
    buffer.capacity = 0;
    const std::size_t bytes = (std::max<std::size_t>(count, 1) * sizeof(T) + 63) / 64 * 64;
    buffer.data = static_cast<T*>(std::aligned_alloc(64, bytes));
    if (buffer.data == nullptr) throw std::bad_alloc();
    buffer.capacity = count;
  }
  return buffer.data;
}
constexpr int kColSlot = 0, kPartialSlot = 1, kWeightSlot = 2;

/// How many threads to run images on: the OpenMP team size when the batch can fill it (and we are
/// not already inside a parallel region), else 1 (one image at a time, GEMMs threaded).
int image_threads(int64_t N) {
  if (omp_in_parallel()) return 1;
  const int threads = omp_get_max_threads();
  return threads > 1 && N >= threads ? threads : 1;
}

/// Runs body(n, tid) for n in [0, N) on `threads` OpenMP threads. `fixed` keeps the static schedule
/// (image n always goes to the same thread for a given N and team: the weight gradient's partial sums
/// need that to be reproducible); otherwise images are handed out one by one, so a thread the OS
/// preempts (a busy machine) does not hold the others up. An exception inside is carried out and
/// rethrown.
template <typename Body>
void for_each_image(int64_t N, int threads, bool fixed, Body body) {
  std::exception_ptr error;
  auto one = [&](int64_t n) {
    try {
      body(n, omp_get_thread_num());
    } catch (...) {
#pragma omp critical(ladnn_conv2d_error)
      if (!error) error = std::current_exception();
    }
  };
  if (fixed) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t n = 0; n < N; ++n) one(n);
  } else {
#pragma omp parallel for schedule(dynamic) num_threads(threads)
    for (int64_t n = 0; n < N; ++n) one(n);
  }
  if (error) std::rethrow_exception(error);
}

/// The output columns q whose input column q*sw - pw + s lies inside [0, W): [q0, q1).
void valid_q_range(const ConvGeom& g, int64_t s, int64_t& q0, int64_t& q1) {
  const int64_t lo = g.pw - s;            // need q*sw >= lo
  const int64_t hi = g.W - 1 + g.pw - s;  // need q*sw <= hi
  q0 = lo > 0 ? (lo + g.sw - 1) / g.sw : 0;
  q1 = hi >= 0 ? std::min(g.Q, hi / g.sw + 1) : 0;
  q0 = std::min(q0, g.Q);
  q1 = std::max(q1, q0);
}

/// x (C, H, W) of one image -> col (C*R*S, P*Q). Each row of col is independent: parallel over rows.
template <typename T>
void im2col(const T* x, const ConvGeom& g, T* col) {
  const int64_t rows = g.crs(), PQ = g.pq(), RS = g.R * g.S;
#pragma omp parallel for schedule(static) if (rows * PQ >= kParallelMin)
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t c = row / RS, r = (row / g.S) % g.R, s = row % g.S;
    const T* xc = x + c * g.hw();
    T* dst = col + row * PQ;
    int64_t q0, q1;
    valid_q_range(g, s, q0, q1);
    for (int64_t p = 0; p < g.P; ++p) {
      T* d = dst + p * g.Q;
      const int64_t ih = p * g.sh - g.ph + r;
      if (ih < 0 || ih >= g.H) {
        std::fill(d, d + g.Q, T(0));
        continue;
      }
      const T* src = xc + ih * g.W + (q0 * g.sw - g.pw + s);  // input of output column q0
      std::fill(d, d + q0, T(0));
      if (g.sw == 1) {
        std::memcpy(d + q0, src, static_cast<std::size_t>(q1 - q0) * sizeof(T));
      } else {
        for (int64_t q = q0; q < q1; ++q) d[q] = src[(q - q0) * g.sw];
      }
      std::fill(d + q1, d + g.Q, T(0));
    }
  }
}

/// The adjoint of im2col: dx (C, H, W) = sum of col entries over the receptive fields that read each
/// pixel. Rows of col for channel c only touch plane c, so channels run in parallel.
template <typename T>
void col2im(const T* col, const ConvGeom& g, T* dx) {
  const int64_t PQ = g.pq();
#pragma omp parallel for schedule(static) if (g.crs() * PQ >= kParallelMin)
  for (int64_t c = 0; c < g.C; ++c) {
    T* dxc = dx + c * g.hw();
    std::fill(dxc, dxc + g.hw(), T(0));
    for (int64_t r = 0; r < g.R; ++r) {
      for (int64_t s = 0; s < g.S; ++s) {
        const T* src = col + ((c * g.R + r) * g.S + s) * PQ;
        int64_t q0, q1;
        valid_q_range(g, s, q0, q1);
        for (int64_t p = 0; p < g.P; ++p) {
          const int64_t ih = p * g.sh - g.ph + r;
          if (ih < 0 || ih >= g.H) continue;
          T* d = dxc + ih * g.W + (q0 * g.sw - g.pw + s);
          const T* sp = src + p * g.Q;
          if (g.sw == 1) {
            for (int64_t q = q0; q < q1; ++q) d[q - q0] += sp[q];
          } else {
            for (int64_t q = q0; q < q1; ++q) d[(q - q0) * g.sw] += sp[q];
          }
        }
      }
    }
  }
}

// ---- the shifted-window algorithm (stride 1) ------------------------------------------------------------
// With stride 1, pad the image once into xpad (C, Hp, Wp), Hp = H + 2*pad_h, Wp = W + 2*pad_w, and
// compute the output on an extended grid of P rows of Wp columns (the last Wp - Q columns of each row
// are garbage, dropped at the end). Flattening that grid, output position j = p*Wp + q reads, for
// kernel tap (r, s), the padded pixel j + r*Wp + s. So row (r*S + s)*C + c of the im2col matrix on
// the extended grid is simply the P*Wp values of xpad starting at c*Hp*Wp + r*Wp + s: a *window* of
// the padded image. The GEMM takes B as row pointers (cpu::gemm_*_rows) and reads the windows in
// place; no im2col matrix is ever written:
//   forward          yext (K, P*Wp)        = wcat (K, R*S*C) * windows (R*S*C, P*Wp)
//   backward weight  dwcat (K, R*S*C)     += dyext (K, P*Wp) * windows^T
//   backward input   dxpad[window rs]     += wcat_rs^T (C, K) * dyext (K, P*Wp)   for each tap (r, s)
// with wcat[k][(r*S + s)*C + c] = weight[k][c][r][s], wcat_rs its columns of tap (r, s), and dyext dy on
// the extended grid with zeros in the garbage columns (so they add nothing). The input gradient cannot
// be one GEMM (each tap writes a different window), so it is R*S GEMMs of depth K accumulating into
// shifted windows of dxpad. The last window reads S - 1 elements past the last plane: buffers carry
// that slack, zeroed. Memory moved per image is about C*Hp*Wp instead of im2col's C*R*S*P*Q (9x less
// for 3x3), which is what made im2col slow.

template <typename T>
using GemmFn = void (*)(bool, bool, int64_t, int64_t, int64_t, T, const T*, int64_t, const T*, int64_t, T, T*,
                        int64_t);

/// The threaded cpu::gemm when images run one at a time, the single-threaded blocked GEMM when
/// images run in parallel (see "Threads" at the top).
template <typename T>
GemmFn<T> gemm_for(int threads) {
  if (threads > 1) return static_cast<GemmFn<T>>(&cpu::gemm_blocked);
  return static_cast<GemmFn<T>>(&cpu::gemm);
}

/// The products with the weight, op(w_tap) * B, for forward (op = identity) and backward input
/// (op = transpose). One tap for the pointwise and im2col algorithms (w is (K, C*R*S)), and for the
/// shifted forward (w is wcat); R*S taps for the shifted backward input (tap rs: C columns of wcat).
/// With images in parallel the taps are packed once (cpu::pack_a) and shared by all threads, instead
/// of every GEMM of every image packing the same weights again.
template <typename T>
struct WeightGemm {
  bool trans = false;    // backward input multiplies by the transpose
  int64_t M = 0, K = 0;  // op(w_tap) is M x K
  const T* w = nullptr;  // tap t at w + t * tap_stride, leading dimension lda
  int64_t tap_stride = 0, lda = 1;
  std::vector<cpu::PackedA<T>> packed;  // per tap, when images run in parallel

  WeightGemm(bool trans_, int64_t M_, int64_t K_, const T* w_, int64_t taps, int64_t tap_stride_,
             int64_t lda_, bool pack)
      : trans(trans_), M(M_), K(K_), w(w_), tap_stride(tap_stride_), lda(lda_) {
    if (pack)
      for (int64_t t = 0; t < taps; ++t) packed.push_back(cpu::pack_a(trans, M, K, w + t * tap_stride, lda));
  }
  /// C (M, N) = beta * C + op(w_tap) * B (K, N).
  void operator()(int64_t tap, int64_t N, const T* B, int64_t ldb, T beta, T* C, int64_t ldc) const {
    if (!packed.empty())
      cpu::gemm_packed(packed[tap], false, N, T(1), B, ldb, beta, C, ldc);
    else
      cpu::gemm(trans, false, M, N, K, T(1), w + tap * tap_stride, lda, B, ldb, beta, C, ldc);
  }
  /// C (M, N) = beta * C + op(w_tap) * B with B's K rows given as pointers (needs `pack`).
  void rows(int64_t tap, int64_t N, const T* const* b_rows, T beta, T* C, int64_t ldc) const {
    cpu::gemm_packed_rows(packed.at(tap), false, N, T(1), b_rows, beta, C, ldc);
  }
};

enum class Algo { Pointwise, Shifted, Im2col };

Algo pick_algo(const ConvGeom& g) {
  if (g.pointwise()) return Algo::Pointwise;
  if (g.sh == 1 && g.sw == 1) return Algo::Shifted;
  return Algo::Im2col;
}

struct Padded {
  int64_t Hp, Wp;
  int64_t plane() const { return Hp * Wp; }
};
Padded padded(const ConvGeom& g) {
  return {g.H + 2 * g.ph, g.W + 2 * g.pw};
}
int64_t xpad_size(const ConvGeom& g) {
  return g.C * padded(g).plane() + g.S;
}  // + slack
int64_t ext_size(const ConvGeom& g, int64_t rows) {
  return rows * g.P * padded(g).Wp;
}

/// x (C, H, W) -> xpad (C, Hp, Wp) with zero borders, and zero slack after the last plane.
template <typename T>
void pad_image(const T* x, const ConvGeom& g, T* xpad) {
  const Padded pd = padded(g);
  for (int64_t c = 0; c < g.C; ++c) {
    T* dst = xpad + c * pd.plane();
    std::fill(dst, dst + g.ph * pd.Wp, T(0));  // top rows
    for (int64_t h = 0; h < g.H; ++h) {
      T* row = dst + (h + g.ph) * pd.Wp;
      std::fill(row, row + g.pw, T(0));
      std::memcpy(row + g.pw, x + (c * g.H + h) * g.W, static_cast<std::size_t>(g.W) * sizeof(T));
      std::fill(row + g.pw + g.W, row + pd.Wp, T(0));
    }
    std::fill(dst + (g.ph + g.H) * pd.Wp, dst + pd.plane(), T(0));  // bottom rows
  }
  std::fill(xpad + g.C * pd.plane(), xpad + xpad_size(g), T(0));
}

/// The interior of dxpad (C, Hp, Wp) -> dx (C, H, W).
template <typename T>
void unpad_image(const T* dxpad, const ConvGeom& g, T* dx) {
  const Padded pd = padded(g);
  for (int64_t c = 0; c < g.C; ++c)
    for (int64_t h = 0; h < g.H; ++h)
      std::memcpy(dx + (c * g.H + h) * g.W, dxpad + c * pd.plane() + (h + g.ph) * pd.Wp + g.pw,
                  static_cast<std::size_t>(g.W) * sizeof(T));
}

/// weight (K, C, R, S) -> wcat (K, R*S*C), taps outermost in a row: wcat[k][rs*C + c] = w[k][c][rs].
template <typename T>
void repack_weight(const T* w, const ConvGeom& g, T* wcat) {
  const int64_t RS = g.R * g.S;
  for (int64_t k = 0; k < g.K; ++k)
    for (int64_t c = 0; c < g.C; ++c)
      for (int64_t rs = 0; rs < RS; ++rs) wcat[(k * RS + rs) * g.C + c] = w[(k * g.C + c) * RS + rs];
}

/// The R*S*C windows of xpad that make the im2col matrix on the extended grid (row (r*S+s)*C + c).
/// One vector per thread, reused.
template <typename T>
const T* const* window_rows(const ConvGeom& g, const T* xpad) {
  static thread_local std::vector<const T*> rows;
  const Padded pd = padded(g);
  rows.resize(static_cast<std::size_t>(g.crs()));
  for (int64_t r = 0; r < g.R; ++r)
    for (int64_t s = 0; s < g.S; ++s)
      for (int64_t c = 0; c < g.C; ++c) rows[(r * g.S + s) * g.C + c] = xpad + c * pd.plane() + r * pd.Wp + s;
  return rows.data();
}

template <typename T>
void forward_shifted(const ConvGeom& g, const T* xn, const WeightGemm<T>& wg, const T* bias, T* yn, T* work) {
  const Padded pd = padded(g);
  const int64_t N_ext = g.P * pd.Wp;  // columns of the extended output grid
  T* xpad = work;
  T* yext = work + xpad_size(g);  // (K, P*Wp)
  pad_image(xn, g, xpad);
  wg.rows(0, N_ext, window_rows(g, xpad), T(0), yext, N_ext);
  // Drop the garbage columns (and add the bias).
  for (int64_t k = 0; k < g.K; ++k) {
    const T b = bias != nullptr ? bias[k] : T(0);
    for (int64_t p = 0; p < g.P; ++p) {
      const T* src = yext + k * N_ext + p * pd.Wp;
      T* dst = yn + (k * g.P + p) * g.Q;
      for (int64_t q = 0; q < g.Q; ++q) dst[q] = src[q] + b;
    }
  }
}

/// dy (K, P, Q) -> dyext (K, P*Wp), zeros in the garbage columns.
template <typename T>
void extend_grad(const T* dyn, const ConvGeom& g, T* dyext) {
  const Padded pd = padded(g);
  for (int64_t k = 0; k < g.K; ++k)
    for (int64_t p = 0; p < g.P; ++p) {
      T* dst = dyext + (k * g.P + p) * pd.Wp;
      std::memcpy(dst, dyn + (k * g.P + p) * g.Q, static_cast<std::size_t>(g.Q) * sizeof(T));
      std::fill(dst + g.Q, dst + pd.Wp, T(0));
    }
}

template <typename T>
void backward_input_shifted(const ConvGeom& g, const T* dyn, const WeightGemm<T>& wg, T* dxn, T* work) {
  const Padded pd = padded(g);
  const int64_t N_ext = g.P * pd.Wp;
  T* dxpad = work;                 // (C, Hp, Wp) + slack
  T* dyext = work + xpad_size(g);  // (K, P*Wp)
  extend_grad(dyn, g, dyext);
  std::fill(dxpad, dxpad + xpad_size(g), T(0));
  for (int64_t r = 0; r < g.R; ++r)
    for (int64_t s = 0; s < g.S; ++s) {
      const int64_t rs = r * g.S + s;
      wg(rs, N_ext, dyext, N_ext, T(1), dxpad + r * pd.Wp + s, pd.plane());
    }
  unpad_image(dxpad, g, dxn);
}

/// dwcat (K, R*S*C) = beta * dwcat + dyext * windows^T for one image.
template <typename T>
void backward_weight_shifted(const ConvGeom& g, const T* dyn, const T* xn, T beta, T* dwcat, T* work) {
  const Padded pd = padded(g);
  const int64_t N_ext = g.P * pd.Wp;
  T* xpad = work;
  T* dyext = work + xpad_size(g);
  pad_image(xn, g, xpad);
  extend_grad(dyn, g, dyext);
  cpu::gemm_blocked_rows(false, g.K, g.crs(), N_ext, T(1), dyext, N_ext, true, window_rows(g, xpad), beta,
                         dwcat, g.crs());
}

// ---- per-image passes for all three algorithms ------------------------------------------------------------

/// Scratch elements one image needs (per thread).
int64_t work_size(const ConvGeom& g, Algo algo) {
  switch (algo) {
    case Algo::Pointwise:
      return 0;
    case Algo::Shifted:
      return xpad_size(g) + ext_size(g, g.K);  // xpad + yext, or dxpad + dyext
    case Algo::Im2col:
      return g.crs() * g.pq();
  }
  return 0;
}

/// y[n] (K, PQ) = weight * col(x[n]) (+ bias).
template <typename T>
void forward_image(const ConvGeom& g, Algo algo, const T* xn, const WeightGemm<T>& wg, const T* bias, T* yn,
                   T* work) {
  const int64_t PQ = g.pq();
  if (algo == Algo::Shifted) return forward_shifted(g, xn, wg, bias, yn, work);
  const T* cols = xn;  // pointwise: x[n] is (C, H*W) = (C*R*S, P*Q) already
  if (algo == Algo::Im2col) {
    im2col(xn, g, work);
    cols = work;
  }
  T beta = T(0);
  if (bias != nullptr) {  // start each output row at its bias, then accumulate the GEMM onto it
    for (int64_t k = 0; k < g.K; ++k) std::fill(yn + k * PQ, yn + (k + 1) * PQ, bias[k]);
    beta = T(1);
  }
  wg(0, PQ, cols, PQ, beta, yn, PQ);
}

/// dx[n] = col2im(weight^T (CRS, K) * dy[n] (K, PQ)); pointwise: dx[n] (C, HW) = weight^T * dy[n].
template <typename T>
void backward_input_image(const ConvGeom& g, Algo algo, const T* dyn, const WeightGemm<T>& wg, T* dxn,
                          T* work) {
  const int64_t PQ = g.pq();
  switch (algo) {
    case Algo::Pointwise:
      wg(0, PQ, dyn, PQ, T(0), dxn, PQ);
      break;
    case Algo::Shifted:
      backward_input_shifted(g, dyn, wg, dxn, work);
      break;
    case Algo::Im2col:
      wg(0, PQ, dyn, PQ, T(0), work, PQ);
      col2im(work, g, dxn);
      break;
  }
}

/// dweight = beta * dweight + dy[n] (K, PQ) * col(x[n])^T; for the shifted algorithm dweight is dwcat.
template <typename T>
void backward_weight_image(const ConvGeom& g, Algo algo, const T* dyn, const T* xn, T beta, T* dw, T* work,
                           GemmFn<T> gemm) {
  const int64_t CRS = g.crs(), PQ = g.pq();
  if (algo == Algo::Shifted) return backward_weight_shifted(g, dyn, xn, beta, dw, work);
  const T* cols = xn;
  if (algo == Algo::Im2col) {
    im2col(xn, g, work);
    cols = work;
  }
  gemm(false, true, g.K, CRS, PQ, T(1), dyn, PQ, cols, PQ, beta, dw, CRS);
}

// ---- whole-batch drivers
// ------------------------------------------------------------------------------------

/// Runs image(n, work) for every image, in parallel over images or one at a time (see "Threads").
template <typename T, typename Image>
void run_images(const ConvGeom& g, Algo algo, int threads, Image image) {
  const int64_t ws = work_size(g, algo);
  T* work = scratch<T, kColSlot>(static_cast<std::size_t>(threads * ws));
  if (threads > 1) {
    for_each_image(g.N, threads, false, [&](int64_t n, int tid) { image(n, work + tid * ws); });
  } else {
    for (int64_t n = 0; n < g.N; ++n) image(n, work);
  }
}

/// The weight products of a pass: from wcat for the shifted algorithm, else the whole weight.
template <typename T>
WeightGemm<T> weight_gemm(const ConvGeom& g, Algo algo, bool trans, const T* w, int threads) {
  if (algo == Algo::Shifted) {
    T* wcat = scratch<T, kWeightSlot>(static_cast<std::size_t>(g.K * g.crs()));
    repack_weight(w, g, wcat);
    if (!trans)  // forward: one GEMM by all the windows, wcat packed (the rows product needs it)
      return WeightGemm<T>(false, g.K, g.crs(), wcat, 1, 0, g.crs(), true);
    // backward input: per tap, wcat_rs^T (C, K) = the C columns of tap rs, transposed
    return WeightGemm<T>(true, g.C, g.K, wcat, g.R * g.S, g.C, g.crs(), threads > 1);
  }
  return WeightGemm<T>(trans, trans ? g.crs() : g.K, trans ? g.K : g.crs(), w, 1, 0, g.crs(), threads > 1);
}

template <typename T>
void forward_impl(const ConvGeom& g, const T* x, const T* w, const T* bias, T* y) {
  const Algo algo = pick_algo(g);
  const int threads = image_threads(g.N);
  const WeightGemm<T> wg = weight_gemm(g, algo, false, w, threads);
  const int64_t y_stride = g.y_stride > 0 ? g.y_stride : g.K * g.pq();
  run_images<T>(g, algo, threads, [&](int64_t n, T* work) {
    forward_image(g, algo, x + n * g.x_stride, wg, bias, y + n * y_stride, work);
  });
}

template <typename T>
void backward_input_impl(const ConvGeom& g, const T* dy, const T* w, T* dx) {
  const Algo algo = pick_algo(g);
  const int threads = image_threads(g.N);
  const WeightGemm<T> wg = weight_gemm(g, algo, true, w, threads);
  run_images<T>(g, algo, threads, [&](int64_t n, T* work) {
    backward_input_image(g, algo, dy + n * g.K * g.pq(), wg, dx + n * g.C * g.hw(), work);
  });
}

template <typename T>
void backward_weight_impl(const ConvGeom& g, const T* dy, const T* x, T* dw) {
  const Algo algo = pick_algo(g);
  const int64_t KCRS = g.K * g.crs();
  if (g.N == 0) {
    std::fill(dw, dw + KCRS, T(0));
    return;
  }
  const int threads = image_threads(g.N);
  const GemmFn<T> gemm = gemm_for<T>(threads);
  // The shifted algorithm produces dwcat (K, R*S*C); it is put back into (K, C, R, S) at the end.
  T* target = dw;
  if (algo == Algo::Shifted) target = scratch<T, kWeightSlot>(static_cast<std::size_t>(KCRS));

  if (threads == 1) {  // one image at a time, accumulating: the first overwrites, the rest add
    run_images<T>(g, algo, 1, [&](int64_t n, T* work) {
      backward_weight_image(g, algo, dy + n * g.K * g.pq(), x + n * g.x_stride, n == 0 ? T(0) : T(1), target,
                            work, gemm);
    });
  } else {
    // Each thread sums its images into its own partial; then the partials are added in thread order.
    // The static schedule fixes which images each thread gets, so the sum order is fixed too.
    T* partials = scratch<T, kPartialSlot>(static_cast<std::size_t>(threads * KCRS));
    std::vector<char> used(threads, 0);
    const int64_t ws = work_size(g, algo);
    T* work = scratch<T, kColSlot>(static_cast<std::size_t>(threads * ws));
    for_each_image(g.N, threads, true, [&](int64_t n, int tid) {
      backward_weight_image(g, algo, dy + n * g.K * g.pq(), x + n * g.x_stride, used[tid] ? T(1) : T(0),
                            partials + tid * KCRS, work + tid * ws, gemm);
      used[tid] = 1;
    });
#pragma omp parallel for schedule(static) num_threads(threads) if (KCRS * threads >= kParallelMin)
    for (int64_t i = 0; i < KCRS; ++i) {
      T sum = T(0);
      for (int t = 0; t < threads; ++t)
        if (used[t]) sum += partials[t * KCRS + i];
      target[i] = sum;
    }
  }
  if (algo == Algo::Shifted) {  // dwcat (K, R*S*C) -> dw (K, C, R, S)
    const int64_t RS = g.R * g.S;
    for (int64_t k = 0; k < g.K; ++k)
      for (int64_t c = 0; c < g.C; ++c)
        for (int64_t rs = 0; rs < RS; ++rs) dw[(k * g.C + c) * RS + rs] = target[(k * RS + rs) * g.C + c];
  }
}

template <typename T>
void backward_bias_impl(const T* dy, int64_t N, int64_t K, int64_t PQ, T* db) {
#pragma omp parallel for schedule(static) if (N * K * PQ >= kParallelMin)
  for (int64_t k = 0; k < K; ++k) {
    double sum = 0.0;  // accumulate in double: a float32 sum over N*P*Q terms loses digits
    for (int64_t n = 0; n < N; ++n) {
      const T* d = dy + (n * K + k) * PQ;
      for (int64_t i = 0; i < PQ; ++i) sum += d[i];
    }
    db[k] = static_cast<T>(sum);
  }
}

}  // namespace

// ---- ops -----------------------------------------------------------------------------------------------

Shape conv2d_output_shape(const Shape& x, const Shape& w, const Conv2dParams& p) {
  return conv_geometry("conv2d", x, w, p).y_shape();
}

namespace {
/// The checks of a forward call; returns its geometry.
ConvGeom check_forward(const std::string& op, const Tensor& x, const Tensor& w, const Tensor& bias,
                       const Conv2dParams& p) {
  check_operand(op, "input", x);
  check_operand(op, "weight", w);
  check_same_dtype(op, "input", x, "weight", w);
  ConvGeom g = conv_geometry(op, x.shape(), w.shape(), p);
  if (bias.defined()) {
    check_operand(op, "bias", bias);
    check_same_dtype(op, "bias", bias, "input", x);
    check(bias.dim() == 1 && bias.size(0) == g.K, op + ": bias must have shape (" + std::to_string(g.K) +
                                                      ") for weight " + shape_str(w.shape()) + ", got " +
                                                      shape_str(bias.shape()));
  }
  return g;
}

/// Runs the CPU forward into y, whose images are g.y_stride elements apart.
void forward_cpu(ConvGeom g, const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& y) {
  const Tensor xc = images_view(x, g), wc = w.contiguous();
  const Tensor bc = bias.defined() ? bias.contiguous() : Tensor();
  if (x.dtype() == DType::Float32) {
    forward_impl<float>(g, xc.data<float>(), wc.data<float>(), bc.defined() ? bc.data<float>() : nullptr,
                        y.data<float>());
  } else {
    forward_impl<double>(g, xc.data<double>(), wc.data<double>(), bc.defined() ? bc.data<double>() : nullptr,
                         y.data<double>());
  }
}
/// The image stride of a forward's `out`, checked: the output's shape, each image one (K, P, Q) block.
int64_t conv2d_out_image_stride(const std::string& op, const Tensor& out, const Shape& y_shape) {
  check(out.shape() == y_shape,
        op + ": out must have the output's shape " + shape_str(y_shape) + ", got " + shape_str(out.shape()));
  const int64_t N = y_shape[0], K = y_shape[1], P = y_shape[2], Q = y_shape[3];
  const Shape& st = out.strides();
  const bool inner = (K <= 1 || st[1] == P * Q) && (P <= 1 || st[2] == Q) && (Q <= 1 || st[3] == 1);
  check(inner && (N <= 1 || st[0] >= K * P * Q),
        op + ": out must hold each image as one contiguous (K, P, Q) block (a channel slice of an NCHW "
             "tensor is), got strides " + shape_str(st));
  return N <= 1 ? K * P * Q : st[0];
}
}  // namespace

Tensor conv2d_forward(const Tensor& x, const Tensor& w, const Tensor& bias, const Conv2dParams& p) {
  ConvGeom g = check_forward("conv2d", x, w, bias, p);
  if (x.device().is_cuda()) return cuda::conv2d_forward(x, w, bias, p);
  Tensor y = Tensor::empty(g.y_shape(), x.dtype());
  g.y_stride = g.K * g.pq();
  forward_cpu(g, x, w, bias, y);
  return y;
}

void conv2d_forward_into(const Tensor& x, const Tensor& w, const Tensor& bias, const Conv2dParams& p,
                         const Tensor& out) {
  const std::string op = "conv2d_forward_into";
  ConvGeom g = check_forward(op, x, w, bias, p);
  check(out.defined(), op + ": out is undefined");
  check(out.dtype() == x.dtype() && out.device() == x.device(),
        op + ": out must have the input's dtype and device (" + dtype_name(x.dtype()) + ", " +
            x.device().str() + "), got " + dtype_name(out.dtype()) + ", " + out.device().str());
  g.y_stride = conv2d_out_image_stride(op, out, g.y_shape());
  if (out.numel() == 0) return;
  if (x.device().is_cuda()) return cuda::conv2d_forward_into(x, w, bias, p, out);
  forward_cpu(g, x, w, bias, out);
}

Tensor conv2d_backward_input(const Tensor& dy, const Tensor& w, const Shape& x_shape, const Conv2dParams& p) {
  const std::string op = "conv2d_backward_input";
  check_operand(op, "grad_output", dy);
  check_operand(op, "weight", w);
  check_same_dtype(op, "grad_output", dy, "weight", w);
  const ConvGeom g = conv_geometry(op, x_shape, w.shape(), p);
  check_grad_output(op, dy, g, x_shape, w.shape());
  if (dy.device().is_cuda()) return cuda::conv2d_backward_input(dy, w, x_shape, p);
  const Tensor dyc = dy.contiguous(), wc = w.contiguous();
  Tensor dx = Tensor::empty(x_shape, dy.dtype());
  if (dy.dtype() == DType::Float32)
    backward_input_impl<float>(g, dyc.data<float>(), wc.data<float>(), dx.data<float>());
  else
    backward_input_impl<double>(g, dyc.data<double>(), wc.data<double>(), dx.data<double>());
  return dx;
}

Tensor conv2d_backward_weight(const Tensor& dy, const Tensor& x, const Shape& w_shape,
                              const Conv2dParams& p) {
  const std::string op = "conv2d_backward_weight";
  check_operand(op, "grad_output", dy);
  check_operand(op, "input", x);
  check_same_dtype(op, "grad_output", dy, "input", x);
  ConvGeom g = conv_geometry(op, x.shape(), w_shape, p);
  check_grad_output(op, dy, g, x.shape(), w_shape);
  if (dy.device().is_cuda()) return cuda::conv2d_backward_weight(dy, x, w_shape, p);
  const Tensor dyc = dy.contiguous(), xc = images_view(x, g);
  Tensor dw = Tensor::empty(w_shape, dy.dtype());
  if (dy.dtype() == DType::Float32)
    backward_weight_impl<float>(g, dyc.data<float>(), xc.data<float>(), dw.data<float>());
  else
    backward_weight_impl<double>(g, dyc.data<double>(), xc.data<double>(), dw.data<double>());
  return dw;
}

Tensor conv2d_backward_bias(const Tensor& dy) {
  const std::string op = "conv2d_backward_bias";
  check_operand(op, "grad_output", dy);
  check(dy.dim() == 4, op + ": grad_output must be 4-D (N, K, P, Q), got " + shape_str(dy.shape()));
  if (dy.device().is_cuda()) return cuda::conv2d_backward_bias(dy);
  const Tensor dyc = dy.contiguous();
  const int64_t N = dy.size(0), K = dy.size(1), PQ = dy.size(2) * dy.size(3);
  Tensor db = Tensor::empty({K}, dy.dtype());
  if (dy.dtype() == DType::Float32)
    backward_bias_impl<float>(dyc.data<float>(), N, K, PQ, db.data<float>());
  else
    backward_bias_impl<double>(dyc.data<double>(), N, K, PQ, db.data<double>());
  return db;
}

// ---- convolution with its BatchNorms (inference) ------------------------------------------------------

namespace {
/// bn's map of x as its own op: the eval BatchNorm, or the batch form's batch_norm_map_saved.
Tensor bn_eval_of(const Tensor& x, const BnEval& bn) {
  if (bn.batch()) return batch_norm_map_saved(x, bn.gamma, bn.beta, bn.save_mean, bn.save_invstd, bn.act);
  return batch_norm_forward_eval(x, bn.gamma, bn.beta, bn.running_mean, bn.running_var, bn.eps, bn.act);
}
}  // namespace

void check_bn_eval(const std::string& op, const char* where, const BnEval& bn, int64_t channels, const Tensor& x) {
  auto vec = [&](const char* name, const Tensor& t, bool optional) {
    const std::string what = std::string(where) + " " + name;
    if (!t.defined()) {
      check(optional, op + ": " + what + " is undefined");
      return;
    }
    check(t.dim() == 1 && t.size(0) == channels, op + ": " + what + " must have shape (" +
                                                     std::to_string(channels) + "), got " + shape_str(t.shape()));
    check_same_dtype(op, what.c_str(), t, "input", x);
  };
  vec("gamma", bn.gamma, true);
  vec("beta", bn.beta, true);
  if (bn.batch()) {  // a training BatchNorm given its recorded statistics
    check(!bn.running_mean.defined() && !bn.running_var.defined(),
          op + ": " + where + " has save_invstd (the batch form) and running statistics: one or the other");
    vec("save_mean", bn.save_mean, false);
    vec("save_invstd", bn.save_invstd, false);
    return;
  }
  check(!bn.save_mean.defined(), op + ": " + where + " has save_mean without save_invstd");
  vec("running_mean", bn.running_mean, false);
  vec("running_var", bn.running_var, false);
  check(bn.eps >= 0, op + ": " + where + " eps must be >= 0, got " + std::to_string(bn.eps));
}

namespace {

ConvGeom check_bn_eval_conv(const std::string& op, const Tensor& x, const BnEval* pre, const Tensor& w,
                            const Conv2dParams& p, const BnEval* post) {
  ConvGeom g = check_forward(op, x, w, Tensor(), p);
  if (pre) check_bn_eval(op, "pre", *pre, g.C, x);
  if (post) check_bn_eval(op, "post", *post, g.K, x);
  return g;
}

/// The unfused ops: pre's BatchNorm, the convolution, post's BatchNorm (into `out` when defined); pre's
/// map into *pre_y when asked.
Tensor bn_eval_conv_unfused(const Tensor& x, const BnEval* pre, const Tensor& w, const Conv2dParams& p,
                            const BnEval* post, const Tensor& out, Tensor* pre_y = nullptr) {
  const Tensor t = pre ? bn_eval_of(x, *pre) : x;
  if (pre && pre_y) *pre_y = t;
  if (out.defined() && !post) {
    conv2d_forward_into(t, w, Tensor(), p, out);
    return out;
  }
  Tensor y = conv2d_forward(t, w, Tensor(), p);
  if (post) y = bn_eval_of(y, *post);
  if (!out.defined()) return y;
  Tensor o = out;  // a handle: copies into out's storage
  o.copy_(y);
  return out;
}

/// The GPU's fused kernel, when cuda::fused_conv() picks it, into `out` (images out_img apart) or, when
/// out is undefined, into a new tensor it returns through out; false: run the unfused ops.
bool fused_on_gpu(ConvGeom g, const Tensor& x, const BnEval* pre, const Tensor& w, const Conv2dParams& p,
                  const BnEval* post, Tensor& out, int64_t out_img) {
  if (!x.device().is_cuda() || cuda::fused_conv() == cuda::FusedConv::Off) return false;
  const Tensor xc = images_view(x, g);  // (a copy only for an input whose images are not blocks)
  // A batch-form pre is a training forward (a folded norm1): Auto times each path with the weight
  // gradient it leaves behind. Ours leaves no map, so the gradient applies pre's map to x again; the
  // unfused ops leave the map, and the plain gradient reads it. dy's values do not matter to the times.
  std::function<void(bool)> then;
  Tensor dy, t;  // made in the timing's first (eager) run, outside any capture
  if (pre && pre->batch())
    then = [&](bool ours) {
      if (!dy.defined()) dy = Tensor::zeros(g.y_shape(), x.dtype(), x.device());
      if (ours) {
        (void)conv2d_backward_weight(dy, x, w.shape(), p, *pre);
        return;
      }
      if (!t.defined()) t = bn_eval_of(x, *pre);
      (void)conv2d_backward_weight(dy, t, w.shape(), p);
    };
  return cuda::conv2d_bn_eval_fused(
      xc, g.x_stride, pre, w, p, post, out, out_img,
      [&](const Tensor& o) { bn_eval_conv_unfused(x, pre, w, p, post, o); }, then);
}
}  // namespace

Tensor conv2d_bn_eval(const Tensor& x, const BnEval* pre, const Tensor& w, const Conv2dParams& p,
                      const BnEval* post, Tensor* pre_y) {
  const std::string op = "conv2d_bn_eval";
  const ConvGeom g = check_bn_eval_conv(op, x, pre, w, p, post);
  if (pre_y) *pre_y = Tensor();
  Tensor y;
  if (shape_numel(g.y_shape()) > 0 && fused_on_gpu(g, x, pre, w, p, post, y, g.K * g.pq())) return y;
  return bn_eval_conv_unfused(x, pre, w, p, post, Tensor(), pre_y);
}

Tensor conv2d_backward_weight(const Tensor& dy, const Tensor& x, const Shape& w_shape, const Conv2dParams& p,
                              const BnEval& pre) {
  const std::string op = "conv2d_backward_weight";
  check_operand(op, "input", x);
  check(x.dim() == 4, op + ": input must be 4-D (N, C, H, W), got " + shape_str(x.shape()));
  check_bn_eval(op, "pre", pre, x.size(1), x);
  // The map as its own pass, then the plain weight gradient: the CPU's way, and the GPU's where its
  // kernel with the map in its prologue does not run.
  auto unfused = [&] { return conv2d_backward_weight(dy, bn_eval_of(x, pre), w_shape, p); };
  if (!x.device().is_cuda()) return unfused();
  check_operand(op, "grad_output", dy);
  check_same_dtype(op, "grad_output", dy, "input", x);
  const ConvGeom g = conv_geometry(op, x.shape(), w_shape, p);
  check_grad_output(op, dy, g, x.shape(), w_shape);
  return cuda::conv2d_backward_weight_pre(dy, x, w_shape, p, pre, unfused);
}

void conv2d_bn_eval_into(const Tensor& x, const BnEval* pre, const Tensor& w, const Conv2dParams& p,
                         const BnEval* post, const Tensor& out) {
  const std::string op = "conv2d_bn_eval_into";
  const ConvGeom g = check_bn_eval_conv(op, x, pre, w, p, post);
  check(out.defined(), op + ": out is undefined");
  check(out.dtype() == x.dtype() && out.device() == x.device(),
        op + ": out must have the input's dtype and device (" + dtype_name(x.dtype()) + ", " +
            x.device().str() + "), got " + dtype_name(out.dtype()) + ", " + out.device().str());
  const int64_t out_img = conv2d_out_image_stride(op, out, g.y_shape());
  if (out.numel() == 0) return;
  Tensor o = out;
  if (fused_on_gpu(g, x, pre, w, p, post, o, out_img)) return;
  bn_eval_conv_unfused(x, pre, w, p, post, out);
}

}  // namespace ladnn::ops
