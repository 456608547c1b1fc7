// tensor/cpu/matmul.cpp — ops::matmul and ops::linear on the CPU, both one call to cpu::gemm.
//
// A 2-D operand reaches GEMM without a copy when its rows or its columns are contiguous: a row-major
// matrix (any leading dimension, e.g. a column slice) is passed as is, and a column-major one (a
// transposed view) is passed as the transpose of a row-major matrix, flipping the transpose flag.
// Anything else is copied with contiguous() first.
#include <algorithm>
#include <string>

#include "tensor/cpu/gemm.h"
#include "cuda/ops.h"
#include "tensor/ops.h"

namespace ladnn::ops {
namespace {

void check_float(const Tensor& t, const char* op, const char* name) {
  check(t.defined(), std::string(op) + ": " + name + " is undefined");
  check(t.dtype() == DType::Float32 || t.dtype() == DType::Float64,
        std::string(op) + ": " + name + " must be float32 or float64, got " + dtype_name(t.dtype()));
}

/// A CUDA op must never receive a host pointer: every operand on `ref`'s device.
void check_device(const Tensor& t, const Tensor& ref, const char* op, const char* name, const char* ref_name) {
  check(t.device() == ref.device(), std::string(op) + ": " + name + " is on " + t.device().str() + " but " +
                                        ref_name + " is on " + ref.device().str() +
                                        "; move both to one device first");
}

/// A 2-D tensor seen as a GEMM operand: row-major data at `data` with leading dimension `ld`,
/// to be read transposed when `trans`. `keep` holds a contiguous copy when one was needed.
struct GemmOperand {
  Tensor keep;
  bool trans = false;
  int64_t ld = 1;
};

/// `t` (2-D) as the operand op(t) where op transposes when `trans`.
GemmOperand as_gemm_operand(const Tensor& t, bool trans) {
  const int64_t rows = t.size(0), cols = t.size(1);
  const int64_t rs = t.strides()[0], cs = t.strides()[1];
  if (rows > 0 && cols > 0) {
    // Row-major: unit column stride (or a single column), rows at least a row apart.
    if ((cs == 1 || cols == 1) && (rows == 1 || rs >= cols)) return {t, trans, rows == 1 ? cols : rs};
    // Column-major: the transpose of a row-major cols x rows matrix.
    if ((rs == 1 || rows == 1) && (cols == 1 || cs >= rows)) return {t, !trans, cols == 1 ? rows : cs};
  }
  Tensor c = t.contiguous();
  return {c, trans, std::max<int64_t>(1, cols)};
}

template <typename T>
void gemm_tensors(const GemmOperand& a, const GemmOperand& b, int64_t M, int64_t N, int64_t K, T beta,
                  Tensor& out) {
  cpu::gemm(a.trans, b.trans, M, N, K, T(1), a.keep.data<T>(), a.ld, b.keep.data<T>(), b.ld, beta,
            out.data<T>(), std::max<int64_t>(1, N));
}

std::string transposed_note(bool trans) {
  return trans ? " (read transposed)" : "";
}

}  // namespace

Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b) {
  check_float(a, "matmul", "a");
  check_float(b, "matmul", "b");
  check(a.dim() == 2, "matmul: a must be 2-D, got " + shape_str(a.shape()));
  check(b.dim() == 2, "matmul: b must be 2-D, got " + shape_str(b.shape()));
  check(a.dtype() == b.dtype(),
        std::string("matmul: a is ") + dtype_name(a.dtype()) + " but b is " + dtype_name(b.dtype()));
  const int64_t M = trans_a ? a.size(1) : a.size(0);
  const int64_t K = trans_a ? a.size(0) : a.size(1);
  const int64_t Kb = trans_b ? b.size(1) : b.size(0);
  const int64_t N = trans_b ? b.size(0) : b.size(1);
  check(K == Kb, "matmul: cannot multiply a " + shape_str(a.shape()) + transposed_note(trans_a) + " by b " +
                     shape_str(b.shape()) + transposed_note(trans_b) + ": inner sizes " + std::to_string(K) +
                     " and " + std::to_string(Kb) + " differ");

  check_device(b, a, "matmul", "b", "a");
  if (a.device().is_cuda()) return cuda::matmul(a, b, trans_a, trans_b);
  Tensor out = Tensor::empty({M, N}, a.dtype());
  const GemmOperand ga = as_gemm_operand(a, trans_a);
  const GemmOperand gb = as_gemm_operand(b, trans_b);
  if (a.dtype() == DType::Float32)
    gemm_tensors<float>(ga, gb, M, N, K, 0.0f, out);
  else
    gemm_tensors<double>(ga, gb, M, N, K, 0.0, out);
  return out;
}

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  check_float(x, "linear", "input");
  check_float(weight, "linear", "weight");
  check(x.dim() == 2, "linear: input must be 2-D (N, in_features), got " + shape_str(x.shape()));
  check(weight.dim() == 2,
        "linear: weight must be 2-D (out_features, in_features), got " + shape_str(weight.shape()));
  check(x.dtype() == weight.dtype(), std::string("linear: input is ") + dtype_name(x.dtype()) +
                                         " but weight is " + dtype_name(weight.dtype()));
  check(x.size(1) == weight.size(1), "linear: input " + shape_str(x.shape()) + " has " +
                                         std::to_string(x.size(1)) + " features but weight " +
                                         shape_str(weight.shape()) + " expects " +
                                         std::to_string(weight.size(1)));
  const int64_t N = x.size(0), out_features = weight.size(0), in_features = x.size(1);
  if (bias.defined()) {
    check_float(bias, "linear", "bias");
    check(bias.dim() == 1 && bias.size(0) == out_features,
          "linear: bias must have shape (" + std::to_string(out_features) + ") for weight " +
              shape_str(weight.shape()) + ", got " + shape_str(bias.shape()));
    check(bias.dtype() == x.dtype(), std::string("linear: bias is ") + dtype_name(bias.dtype()) +
                                         " but the input is " + dtype_name(x.dtype()));
  }

  check_device(weight, x, "linear", "weight", "the input");
  if (bias.defined()) check_device(bias, x, "linear", "bias", "the input");
  if (x.device().is_cuda()) return cuda::linear(x, weight, bias);

  // y (N, out) = x (N, in) * weight^T; with a bias, y starts as the bias in every row (beta = 1).
  Tensor y = Tensor::empty({N, out_features}, x.dtype());
  const GemmOperand gx = as_gemm_operand(x, false);
  const GemmOperand gw = as_gemm_operand(weight, true);
  auto run = [&](auto zero) {
    using T = decltype(zero);
    T beta = T(0);
    if (bias.defined()) {
      const Tensor b = bias.contiguous();
      const T* pb = b.data<T>();
      T* py = y.data<T>();
      for (int64_t i = 0; i < N; ++i)
        for (int64_t j = 0; j < out_features; ++j) py[i * out_features + j] = pb[j];
      beta = T(1);
    }
    gemm_tensors<T>(gx, gw, N, out_features, in_features, beta, y);
  };
  if (x.dtype() == DType::Float32)
    run(0.0f);
  else
    run(0.0);
  return y;
}

}  // namespace ladnn::ops
