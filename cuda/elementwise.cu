// cuda/elementwise.cu — elementwise ops on the GPU: binary with broadcasting, scalar, unary, the
// relu/sigmoid backwards, the in-place add_/mul_scalar_, and expand_to. Native only (no library twin).
//
// One kernel shape serves them all (llm.c's "kernel1", kept because it is already memory-bound):
//   map_kernel   one thread per output element in a grid-stride loop; each operand is read through its
//                own strides (a broadcast operand has stride 0 where it is expanded), so broadcasting,
//                transposed and sliced inputs need no copy. Dims are merged first (kernel_util.cuh).
//   flat_kernel  the same when every operand is one contiguous run: plain i, no index arithmetic.
//
// Every op computes exactly what its CPU reference (tensor/cpu/elementwise.cpp) computes, in the same
// order and precision, so most GPU results equal the CPU's bit for bit:
//   - scalar ops (add_scalar, mul_scalar, pow_scalar) compute in double and round once, as the CPU's
//     `static_cast<float>(x + s)` with a double s does;
//   - add_ writes a + __fmul_rn(alpha, b): the intrinsic keeps nvcc from fusing the multiply-add into
//     one FMA (one rounding instead of the CPU's two);
//   - exp, log and sigmoid use CUDA's expf/logf (at most 2 ulp from the exact result, CUDA
//     programming guide, table of float functions) where glibc is within 1 ulp: a few ulp apart.
#include <cmath>

#include "cuda/kernel_util.cuh"
#include "cuda/launch.h"
#include "cuda/ops.h"

namespace ladnn::cuda {
namespace {

using namespace detail;

// ---- kernels -------------------------------------------------------------------------------------------

// K operands: off[0] is the output, off[1..K-1] the inputs. Op takes K-1 floats.
template <int K, typename Op, typename Calc>
__global__ void map_kernel(float* __restrict__ out, const float* __restrict__ in0,
                           const float* __restrict__ in1, Calc calc, typename Calc::index_t n, Op op) {
  pdl_enter();
  using I = typename Calc::index_t;
  for (I i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    I off[K];
    calc.get(i, off);
    if constexpr (K == 2)
      out[off[0]] = op(in0[off[1]]);
    else
      out[off[0]] = op(in0[off[1]], in1[off[2]]);
  }
}

template <int K, typename Op, typename I>
__global__ void flat_kernel(float* __restrict__ out, const float* __restrict__ in0,
                            const float* __restrict__ in1, I n, Op op) {
  pdl_enter();
  for (I i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    if constexpr (K == 2)
      out[i] = op(in0[i]);
    else
      out[i] = op(in0[i], in1[i]);
  }
}

// The in-place ops read and write the same element, so they are not __restrict__ on `a`.
template <typename Calc>
__global__ void add_inplace_kernel(float* a, const float* b, float alpha, Calc calc,
                                   typename Calc::index_t n) {
  pdl_enter();
  using I = typename Calc::index_t;
  for (I i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    I off[2];
    calc.get(i, off);
    a[off[0]] = a[off[0]] + __fmul_rn(alpha, b[off[1]]);  // two roundings, as the CPU's x += al * y
  }
}

__global__ void mul_scalar_inplace_kernel(float* a, float s, int64_t n) {
  pdl_enter();
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    a[i] = a[i] * s;
}

// ---- functors (one per op; __device__ only) ---------------------------------------------------------------

struct AddOp {
  __device__ float operator()(float a, float b) const { return a + b; }
};
struct SubOp {
  __device__ float operator()(float a, float b) const { return a - b; }
};
struct MulOp {
  __device__ float operator()(float a, float b) const { return a * b; }
};
struct DivOp {  // IEEE-rounded: nvcc's default -prec-div=true
  __device__ float operator()(float a, float b) const { return a / b; }
};
struct ReluBackwardOp {
  __device__ float operator()(float g, float x) const { return x > 0.f ? g : 0.f; }
};
struct SigmoidBackwardOp {
  // (g * y) * (1 - y), as the CPU; no add follows a multiply, so nothing can be fused.
  __device__ float operator()(float g, float y) const { return g * y * (1.f - y); }
};

struct AddScalarOp {
  double s;
  __device__ float operator()(float x) const { return static_cast<float>(static_cast<double>(x) + s); }
};
struct MulScalarOp {
  double s;
  __device__ float operator()(float x) const { return static_cast<float>(static_cast<double>(x) * s); }
};
struct PowScalarOp {
  double p;
  __device__ float operator()(float x) const { return static_cast<float>(::pow(static_cast<double>(x), p)); }
};
struct NegOp {
  __device__ float operator()(float x) const { return -x; }
};
struct ExpOp {
  __device__ float operator()(float x) const { return expf(x); }
};
struct LogOp {
  __device__ float operator()(float x) const { return logf(x); }
};
struct SqrtOp {  // IEEE-rounded: nvcc's default -prec-sqrt=true
  __device__ float operator()(float x) const { return sqrtf(x); }
};
struct SigmoidOp {
  // Two branches keep expf's argument <= 0, so neither overflows (as the CPU).
  __device__ float operator()(float x) const {
    if (x >= 0.f) return 1.f / (1.f + expf(-x));
    const float e = expf(x);
    return e / (1.f + e);
  }
};
struct ReluOp {  // NaN -> 0, as the CPU's x > 0 ? x : 0
  __device__ float operator()(float x) const { return x > 0.f ? x : 0.f; }
};
struct IdentityOp {
  __device__ float operator()(float x) const { return x; }
};

// ---- launchers
// -----------------------------------------------------------------------------------------------

/// out (contiguous, shape `shape`) = op(in...) with each input read through `in_strides`.
template <int K, typename Op>
void launch_map(const char* name, float* out, const Shape& shape, const std::array<const float*, 2>& in,
                const std::array<Shape, K - 1>& in_strides, Op op) {
  const int64_t n = shape_numel(shape);
  if (n == 0) return;
  std::array<Shape, K> strides;
  strides[0] = contiguous_strides(shape);
  for (int k = 1; k < K; ++k) strides[k] = in_strides[k - 1];
  const Geometry<K> g = make_geometry<K>(shape, strides, name);
  cudaStream_t st = current_stream();
  if (is_flat(g)) {
    if (n <= std::numeric_limits<int32_t>::max())
      launch_kernel(flat_kernel<K, Op, uint32_t>, grid_for(n), kThreads, 0, st, out, in[0], in[1],
                    static_cast<uint32_t>(n), op);
    else
      launch_kernel(flat_kernel<K, Op, uint64_t>, grid_for(n), kThreads, 0, st, out, in[0], in[1],
                    static_cast<uint64_t>(n), op);
    CUDA_CHECK_LAUNCH();
    return;
  }
  with_index_type(g, [&](auto calc) {
    using I = typename decltype(calc)::index_t;
    launch_kernel(map_kernel<K, Op, decltype(calc)>, grid_for(n), kThreads, 0, st, out, in[0], in[1], calc,
                  static_cast<I>(n), op);
    CUDA_CHECK_LAUNCH();
  });
}

template <typename Op>
Tensor binary(const Tensor& a, const Tensor& b, const char* name, Op op) {
  require_float32(a, name, "left operand");
  require_float32(b, name, "right operand");
  const Shape shape = ops::broadcast_shape(a.shape(), b.shape(), name);
  Tensor out = Tensor::empty(shape, DType::Float32, a.device());
  launch_map<3>(name, out.data<float>(), shape, {a.data<float>(), b.data<float>()},
                {broadcast_strides(a, shape), broadcast_strides(b, shape)}, op);
  return out;
}

template <typename Op>
Tensor unary(const Tensor& a, const char* name, Op op) {
  require_float32(a, name);
  Tensor out = Tensor::empty(a.shape(), DType::Float32, a.device());
  launch_map<2>(name, out.data<float>(), a.shape(), {a.data<float>(), nullptr}, {a.strides()}, op);
  return out;
}

}  // namespace

Tensor add(const Tensor& a, const Tensor& b) {
  return binary(a, b, "add", AddOp{});
}
Tensor sub(const Tensor& a, const Tensor& b) {
  return binary(a, b, "sub", SubOp{});
}
Tensor mul(const Tensor& a, const Tensor& b) {
  return binary(a, b, "mul", MulOp{});
}
Tensor div(const Tensor& a, const Tensor& b) {
  return binary(a, b, "div", DivOp{});
}
Tensor relu_backward(const Tensor& grad, const Tensor& x) {
  return binary(grad, x, "relu_backward", ReluBackwardOp{});
}
Tensor sigmoid_backward(const Tensor& grad, const Tensor& y) {
  return binary(grad, y, "sigmoid_backward", SigmoidBackwardOp{});
}

Tensor add_scalar(const Tensor& a, double s) {
  return unary(a, "add_scalar", AddScalarOp{s});
}
Tensor mul_scalar(const Tensor& a, double s) {
  return unary(a, "mul_scalar", MulScalarOp{s});
}
Tensor pow_scalar(const Tensor& a, double p) {
  return unary(a, "pow_scalar", PowScalarOp{p});
}
Tensor neg(const Tensor& a) {
  return unary(a, "neg", NegOp{});
}
Tensor exp(const Tensor& a) {
  return unary(a, "exp", ExpOp{});
}
Tensor log(const Tensor& a) {
  return unary(a, "log", LogOp{});
}
Tensor sqrt(const Tensor& a) {
  return unary(a, "sqrt", SqrtOp{});
}
Tensor sigmoid(const Tensor& a) {
  return unary(a, "sigmoid", SigmoidOp{});
}
Tensor relu(const Tensor& a) {
  return unary(a, "relu", ReluOp{});
}

Tensor expand_to(const Tensor& a, const Shape& shape) {
  require_float32(a, "expand_to");
  Tensor out = Tensor::empty(shape, DType::Float32, a.device());
  launch_map<2>("expand_to", out.data<float>(), shape, {a.data<float>(), nullptr},
                {broadcast_strides(a, shape)}, IdentityOp{});
  return out;
}

void add_(Tensor& a, const Tensor& b, double alpha) {
  require_float32(a, "add_", "destination");
  require_float32(b, "add_", "source");
  const int64_t n = a.numel();
  if (n == 0) return;
  // A source overlapping the destination in another layout (add_(x, x.transpose(0, 1))) would read
  // elements already updated: read it from a copy, as the CPU's b.contiguous() does.
  const bool same_layout = b.offset() == a.offset() && b.strides() == a.strides();
  const Tensor src = (b.shares_storage(a) && !same_layout) ? b.clone() : b;
  const Geometry<2> g = make_geometry<2>(a.shape(), {a.strides(), src.strides()}, "add_");
  cudaStream_t st = current_stream();
  with_index_type(g, [&](auto calc) {
    using I = typename decltype(calc)::index_t;
    launch_kernel(add_inplace_kernel<decltype(calc)>, grid_for(n), kThreads, 0, st, a.data<float>(),
                  src.data<float>(), static_cast<float>(alpha), calc, static_cast<I>(n));
    CUDA_CHECK_LAUNCH();
  });
}

void mul_scalar_(Tensor& a, double s) {
  require_float32(a, "mul_scalar_");
  const int64_t n = a.numel();
  if (n == 0) return;
  // tensor/ops.h requires `a` contiguous: one flat run.
  launch_kernel(mul_scalar_inplace_kernel, grid_for(n), kThreads, 0, current_stream(), a.data<float>(),
                static_cast<float>(s), n);
  CUDA_CHECK_LAUNCH();
}

}  // namespace ladnn::cuda
