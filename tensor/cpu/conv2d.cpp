// tensor/cpu/conv2d.cpp — 2-D convolution on the CPU: im2col + GEMM, col2im for the input gradient.
//
// Shapes: x (N, C, H, W), weight (K, C, R, S), y (N, K, P, Q), P = (H + 2*pad_h - R) / stride_h + 1.
// Per image n, im2col lays the receptive fields out as the columns of a matrix
//   col (C*R*S, P*Q):  col[(c*R + r)*S + s][p*Q + q] = x[n][c][p*stride_h - pad_h + r][q*stride_w - pad_w + s]
// (zero where that falls in the padding), and the convolution becomes one GEMM:
//   forward          y[n]   (K, P*Q)   = weight (K, C*R*S) * col (C*R*S, P*Q)       (+ bias per row)
//   backward input   dcol   (C*R*S, P*Q) = weight^T * dy[n] (K, P*Q);  dx[n] = col2im(dcol)
//   backward weight  dweight (K, C*R*S) += dy[n] (K, P*Q) * col^T                  (summed over n)
//   backward bias    dbias[k] = sum over n, p, q of dy[n][k][p][q]
// col2im is im2col's adjoint: it scatters each column entry back onto the input pixel it was read from,
// adding where receptive fields overlap.
//
// Fast path: a 1x1 kernel with stride 1 and no padding has col == x[n] viewed as (C, H*W), so no
// im2col/col2im at all (DenseNet's bottleneck convs; more than half its conv FLOPs).
//
// Threads: the GEMM parallelises itself (OpenBLAS's threads, or OpenMP in gemm_blocked); im2col and
// col2im use OpenMP over rows / channels, which write disjoint memory.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>

#include "tensor/cpu/gemm.h"
#include "tensor/ops.h"

namespace ladnn::ops {
namespace {

// Below this many elements an OpenMP fork/join costs more than the copy it would split.
constexpr int64_t kParallelMin = 1 << 15;

std::string hw_str(int64_t h, int64_t w) { return std::to_string(h) + "x" + std::to_string(w); }

/// Everything about one convolution's sizes, checked once.
struct ConvGeom {
  int64_t N, C, H, W;  // input
  int64_t K, R, S;     // weight (K, C, R, S)
  int64_t P, Q;        // output plane
  int64_t sh, sw, ph, pw;
  int64_t hw() const { return H * W; }
  int64_t pq() const { return P * Q; }
  int64_t crs() const { return C * R * S; }
  /// 1x1, stride 1, no padding: the input plane is already the column matrix.
  bool pointwise() const { return R == 1 && S == 1 && sh == 1 && sw == 1 && ph == 0 && pw == 0; }
  Shape y_shape() const { return {N, K, P, Q}; }
};

/// Checks the shapes and parameters of a convolution of `x` by `w`; `op` names the caller in errors.
ConvGeom conv_geometry(const std::string& op, const Shape& x, const Shape& w,
                       const Conv2dParams& p) {
  check(x.size() == 4, op + ": input must be 4-D (N, C, H, W), got " + shape_str(x));
  check(w.size() == 4, op + ": weight must be 4-D (K, C, R, S), got " + shape_str(w));
  check(x[1] == w[1], op + ": input " + shape_str(x) + " has " + std::to_string(x[1]) +
                          " channels but weight " + shape_str(w) + " expects " +
                          std::to_string(w[1]));
  check(w[2] >= 1 && w[3] >= 1, op + ": weight " + shape_str(w) + " has an empty kernel");
  check(p.stride_h >= 1 && p.stride_w >= 1,
        op + ": stride must be positive, got " + hw_str(p.stride_h, p.stride_w));
  check(p.pad_h >= 0 && p.pad_w >= 0,
        op + ": padding must be non-negative, got " + hw_str(p.pad_h, p.pad_w));
  const int64_t hp = x[2] + 2 * p.pad_h, wp = x[3] + 2 * p.pad_w;
  check(w[2] <= hp && w[3] <= wp, op + ": kernel " + hw_str(w[2], w[3]) +
                                      " is larger than the padded input " + hw_str(hp, wp) +
                                      " (input " + shape_str(x) + ", padding " +
                                      hw_str(p.pad_h, p.pad_w) + ")");
  ConvGeom g;
  g.N = x[0], g.C = x[1], g.H = x[2], g.W = x[3];
  g.K = w[0], g.R = w[2], g.S = w[3];
  g.sh = p.stride_h, g.sw = p.stride_w, g.ph = p.pad_h, g.pw = p.pad_w;
  g.P = (hp - g.R) / g.sh + 1;
  g.Q = (wp - g.S) / g.sw + 1;
  return g;
}

void check_operand(const std::string& op, const char* name, const Tensor& t) {
  check(t.defined(), op + ": " + name + " is undefined");
  check(t.dtype() == DType::Float32 || t.dtype() == DType::Float64,
        op + ": " + name + " must be float32 or float64, got " + dtype_name(t.dtype()));
  check(t.device().is_cpu(), op + ": " + name + " is on " + t.device().str() +
                                 "; this op runs on the CPU (the CUDA backend adds the GPU path)");
}

void check_same_dtype(const std::string& op, const char* name_a, const Tensor& a,
                      const char* name_b, const Tensor& b) {
  check(a.dtype() == b.dtype(), op + ": " + name_a + " is " + dtype_name(a.dtype()) + " but " +
                                    name_b + " is " + dtype_name(b.dtype()));
}

/// dy must be the shape this convolution produces.
void check_grad_output(const std::string& op, const Tensor& dy, const ConvGeom& g,
                       const Shape& x_shape, const Shape& w_shape) {
  check(dy.shape() == g.y_shape(), op + ": grad_output has shape " + shape_str(dy.shape()) +
                                       " but the convolution of input " + shape_str(x_shape) +
                                       " by weight " + shape_str(w_shape) + " gives " +
                                       shape_str(g.y_shape()));
}

/// A 64-byte aligned scratch buffer that only grows, one per calling thread: the column matrix of a
/// layer is reused by the next layer instead of being allocated (and page-faulted in) every call.
template <typename T>
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

/// The output columns q whose input column q*sw - pw + s lies inside [0, W): [q0, q1).
void valid_q_range(const ConvGeom& g, int64_t s, int64_t& q0, int64_t& q1) {
  const int64_t lo = g.pw - s;          // need q*sw >= lo
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

// ---- kernels -------------------------------------------------------------------------------------------

template <typename T>
void forward_impl(const ConvGeom& g, const T* x, const T* w, const T* bias, T* y) {
  const int64_t CRS = g.crs(), PQ = g.pq();
  T* col = g.pointwise() ? nullptr : scratch<T>(static_cast<std::size_t>(CRS * PQ));
  for (int64_t n = 0; n < g.N; ++n) {
    const T* xn = x + n * g.C * g.hw();
    T* yn = y + n * g.K * PQ;
    const T* cols = xn;  // pointwise: x[n] is (C, H*W) = (C*R*S, P*Q) already
    if (!g.pointwise()) {
      im2col(xn, g, col);
      cols = col;
    }
    T beta = T(0);
    if (bias != nullptr) {  // start each output row at its bias, then accumulate the GEMM onto it
      for (int64_t k = 0; k < g.K; ++k) std::fill(yn + k * PQ, yn + (k + 1) * PQ, bias[k]);
      beta = T(1);
    }
    cpu::gemm(false, false, g.K, PQ, CRS, T(1), w, CRS, cols, PQ, beta, yn, PQ);
  }
}

template <typename T>
void backward_input_impl(const ConvGeom& g, const T* dy, const T* w, T* dx) {
  const int64_t CRS = g.crs(), PQ = g.pq();
  T* dcol = g.pointwise() ? nullptr : scratch<T>(static_cast<std::size_t>(CRS * PQ));
  for (int64_t n = 0; n < g.N; ++n) {
    const T* dyn = dy + n * g.K * PQ;
    T* dxn = dx + n * g.C * g.hw();
    if (g.pointwise()) {  // dx[n] (C, H*W) = weight^T (C, K) * dy[n] (K, H*W)
      cpu::gemm(true, false, g.C, PQ, g.K, T(1), w, CRS, dyn, PQ, T(0), dxn, PQ);
    } else {
      cpu::gemm(true, false, CRS, PQ, g.K, T(1), w, CRS, dyn, PQ, T(0), dcol, PQ);
      col2im(dcol, g, dxn);
    }
  }
}

template <typename T>
void backward_weight_impl(const ConvGeom& g, const T* dy, const T* x, T* dw) {
  const int64_t CRS = g.crs(), PQ = g.pq();
  if (g.N == 0) {
    std::fill(dw, dw + g.K * CRS, T(0));
    return;
  }
  T* col = g.pointwise() ? nullptr : scratch<T>(static_cast<std::size_t>(CRS * PQ));
  for (int64_t n = 0; n < g.N; ++n) {
    const T* xn = x + n * g.C * g.hw();
    const T* cols = xn;
    if (!g.pointwise()) {
      im2col(xn, g, col);
      cols = col;
    }
    // dweight (K, CRS) (+)= dy[n] (K, PQ) * cols^T; the first image overwrites, the rest add.
    cpu::gemm(false, true, g.K, CRS, PQ, T(1), dy + n * g.K * PQ, PQ, cols, PQ,
              n == 0 ? T(0) : T(1), dw, CRS);
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

Tensor conv2d_forward(const Tensor& x, const Tensor& w, const Tensor& bias, const Conv2dParams& p) {
  const std::string op = "conv2d";
  check_operand(op, "input", x);
  check_operand(op, "weight", w);
  check_same_dtype(op, "input", x, "weight", w);
  const ConvGeom g = conv_geometry(op, x.shape(), w.shape(), p);
  if (bias.defined()) {
    check_operand(op, "bias", bias);
    check_same_dtype(op, "bias", bias, "input", x);
    check(bias.dim() == 1 && bias.size(0) == g.K,
          op + ": bias must have shape (" + std::to_string(g.K) + ") for weight " +
              shape_str(w.shape()) + ", got " + shape_str(bias.shape()));
  }
  const Tensor xc = x.contiguous(), wc = w.contiguous();
  const Tensor bc = bias.defined() ? bias.contiguous() : Tensor();
  Tensor y = Tensor::empty(g.y_shape(), x.dtype());
  if (x.dtype() == DType::Float32) {
    forward_impl<float>(g, xc.data<float>(), wc.data<float>(),
                        bc.defined() ? bc.data<float>() : nullptr, y.data<float>());
  } else {
    forward_impl<double>(g, xc.data<double>(), wc.data<double>(),
                         bc.defined() ? bc.data<double>() : nullptr, y.data<double>());
  }
  return y;
}

Tensor conv2d_backward_input(const Tensor& dy, const Tensor& w, const Shape& x_shape,
                             const Conv2dParams& p) {
  const std::string op = "conv2d_backward_input";
  check_operand(op, "grad_output", dy);
  check_operand(op, "weight", w);
  check_same_dtype(op, "grad_output", dy, "weight", w);
  const ConvGeom g = conv_geometry(op, x_shape, w.shape(), p);
  check_grad_output(op, dy, g, x_shape, w.shape());
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
  const ConvGeom g = conv_geometry(op, x.shape(), w_shape, p);
  check_grad_output(op, dy, g, x.shape(), w_shape);
  const Tensor dyc = dy.contiguous(), xc = x.contiguous();
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
  const Tensor dyc = dy.contiguous();
  const int64_t N = dy.size(0), K = dy.size(1), PQ = dy.size(2) * dy.size(3);
  Tensor db = Tensor::empty({K}, dy.dtype());
  if (dy.dtype() == DType::Float32)
    backward_bias_impl<float>(dyc.data<float>(), N, K, PQ, db.data<float>());
  else
    backward_bias_impl<double>(dyc.data<double>(), N, K, PQ, db.data<double>());
  return db;
}

}  // namespace ladnn::ops
