// tests/cuda_ops_test.cpp — the native CUDA ops (cuda/elementwise.cu, reduce.cu, join.cu, loss.cu,
// optim.cu, tensor_kernels.cu) against their CPU references. Every test skips with the reason when no
// GPU is usable.
//
// Method (STYLE.md habit 7): fresh random float32 inputs from fixed seeds; the same op on the CPU is the
// oracle; forward results and every input's gradient (through autograd, with the same upstream
// gradient on both devices) are compared elementwise, |gpu - ref| <= atol + rtol * scale
// (tests/cuda_test_util.h). Shapes: odd sizes, batch 1, broadcasting and strided views, DenseNet-169's
// (N, 128, 56, 56) and (N, 256, 28, 28). Every test runs under FillNanScope, so each block the GPU
// allocates starts as NaN: an output element a kernel never writes fails the comparison.
//
// Tolerances, from how each side computes (kEps32 = 2^-23, one float32 ulp at 1; a correctly rounded
// operation is within half an ulp, i.e. kEps32 / 2 relative):
//   exact      add, sub, mul, div, neg, relu, sqrt, the scalar ops, copies, fill, cat, expand_to,
//              relu/sigmoid backward, add_, mul_scalar_, dropout: both sides perform the same IEEE
//              operations in the same order (the GPU kernels avoid FMA contraction where it would
//              change a rounding), so the results are equal bit for bit.
//   pow        both compute pow in double and round once; CUDA's double pow is within 2 double ulps,
//              glibc's within 1, so the float results differ only when the two doubles straddle a float
//              rounding boundary: at most 1 float ulp -> rtol kEps32.
//   exp, log   CUDA's expf/logf are within 2 and 1 ulp of exact (CUDA C programming guide, float
//              functions), glibc's within 1: at most 3 and 2 ulps apart -> rtol 3 kEps32, 2 kEps32.
//   sigmoid    an expf (3 ulps apart) plus an add and a divide rounded on each side: 5 ulps -> 6 kEps32.
//   sums       the GPU adds in float along paths of at most 4 passes x (32 serial adds + an 8-level
//              tree) = 160 roundings (cuda/reduce.cu), the CPU in double: |error| <= 160 kEps32 *
//              sum |terms| (Higham 2002, eq. 4.4), plus rounding the CPU's double result to float. So
//              rtol kSumRtol relative to sum |terms|, a per-element scale the tests compute on the CPU.
//              Because that bound cannot see one missing term among millions, the reductions are also
//              run on integer-valued inputs, where every partial sum is exact in float: equal bit for bit.
//   BCE        both sides compute in double and round once; all three terms of the loss are >= 0, so no
//              cancellation: 1 float ulp -> rtol kEps32. The gradient (sigmoid(x) - y) may cancel: the
//              double results then differ by ~1e-16 absolute, far below any float ulp -> atol 1e-12.
//   optimizers the kernels perform the CPU's roundings one for one (cuda/optim.cu); 2 ulps per value
//              allow only for a compiler that orders one rounding differently.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "autograd/functions.h"
#include "autograd/variable.h"
#include "cuda/ops.h"
#include "tensor/ops.h"
#include "tensor/random.h"
#include "tests/cuda_test_util.h"
#include "tests/test_util.h"

using namespace ladnn;
using namespace ladnn::cuda_test;

namespace {

constexpr double kSumRtol = 161 * kEps32;  // 160 float roundings + the reference's final rounding

const Device kGpu = Device::cuda();
const Device kCpu = Device::cpu();

/// |t| elementwise, on the CPU (there is no abs op; the tests need it for error scales).
Tensor abs_cpu(const Tensor& t) {
  std::vector<double> v = t.to(kCpu).to_vector();
  for (double& x : v) x = std::fabs(x);
  return Tensor::from_vector(v, t.shape(), DType::Float64);
}

/// Integer values in [-3, 3] as float32: every partial sum of them is exact in float (|sum| < 2^24).
Tensor small_integers(const Shape& shape, Generator& gen) {
  std::vector<double> v(shape_numel(shape));
  for (double& x : v) x = std::floor(gen.uniform01() * 7.0) - 3.0;
  return Tensor::from_vector(v, shape, DType::Float32);
}

/// Output and input gradients of one autograd run.
struct AutogradRun {
  Tensor y;
  std::vector<Tensor> grads;
};

/// Runs f on leaves holding `inputs` (moved to `device`), back-propagates `dy` (moved too).
AutogradRun run_autograd(const std::function<Variable(const std::vector<Variable>&)>& f,
                         const std::vector<Tensor>& inputs, const Tensor& dy, Device device) {
  std::vector<Variable> leaves;
  for (const Tensor& t : inputs) leaves.emplace_back(t.to(device), true);
  Variable y = f(leaves);
  y.backward(dy.to(device));
  AutogradRun r{y.tensor(), {}};
  for (const Variable& v : leaves) r.grads.push_back(v.grad());
  return r;
}

// ---- tensor plumbing: copies and fill
// ------------------------------------------------------------------------

TEST(CudaTensor, CopiesRoundTripEveryDtypeExactly) {
  LADNN_REQUIRE_GPU();
  FillNanScope nan_fill;
  Generator gen(11);
  for (DType dt : {DType::Float32, DType::Float64, DType::Int64}) {
    Tensor host = Tensor::normal({3, 5, 7}, 0.0, 100.0, gen, dt);
    Tensor back = to_cpu(host.to(kGpu));
    EXPECT_EQ(back.dtype(), dt);
    EXPECT_EQ(back.to_vector(), host.to_vector()) << dtype_name(dt);
  }
  // Empty and 0-d tensors.
  Tensor empty = Tensor::zeros({0, 4});
  EXPECT_EQ(to_cpu(empty.to(kGpu)).shape(), (Shape{0, 4}));
  Tensor scalar = Tensor::full({}, 2.5);
  EXPECT_EQ(scalar.to(kGpu).item(), 2.5);
}

TEST(CudaTensor, StridedCopyOnTheDeviceMatchesCpu) {
  LADNN_REQUIRE_GPU();
  FillNanScope nan_fill;
  Generator gen(12);
  const Tensor a = randn({4, 6, 5}, gen);
  // Source views: transposed, narrowed, expanded (stride 0); destination views likewise.
  struct Case {
    const char* name;
    std::function<Tensor(const Tensor&)> src_view;
    Shape dst_shape;
    std::function<Tensor(const Tensor&)> dst_view;
  };
  const std::vector<Case> cases = {
      {"transpose -> contiguous",
       [](const Tensor& t) { return t.transpose(0, 2); },
       {5, 6, 4},
       [](const Tensor& t) { return t; }},
      {"narrow -> contiguous",
       [](const Tensor& t) { return t.narrow(1, 2, 3); },
       {4, 3, 5},
       [](const Tensor& t) { return t; }},
      {"contiguous -> transposed",
       [](const Tensor& t) { return t; },
       {5, 6, 4},
       [](const Tensor& t) { return t.transpose(0, 2); }},
      {"narrow -> channel slice of a wider tensor",
       [](const Tensor& t) { return t.narrow(1, 1, 4); },
       {4, 9, 5},
       [](const Tensor& t) { return t.narrow(1, 3, 4); }},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    Tensor dst_gpu = Tensor::full(c.dst_shape, NAN, DType::Float32, kGpu);
    Tensor dst_cpu = Tensor::full(c.dst_shape, NAN, DType::Float32);
    Tensor view_gpu = c.dst_view(dst_gpu), view_cpu = c.dst_view(dst_cpu);
    view_gpu.copy_(c.src_view(a.to(kGpu)));
    view_cpu.copy_(c.src_view(a));
    // The whole destination: written elements must match, the others must still be NaN on both.
    EXPECT_TRUE(gpu_equals("destination", dst_gpu, dst_cpu));
  }
  // Broadcast source (stride 0) into a contiguous destination.
  Tensor row = randn({1, 7}, gen);
  Tensor expanded_cpu = Tensor(row.storage(), {5, 7}, {0, 1}, 0, DType::Float32);
  Tensor row_gpu = row.to(kGpu);
  Tensor expanded_gpu = Tensor(row_gpu.storage(), {5, 7}, {0, 1}, 0, DType::Float32);
  EXPECT_TRUE(gpu_equals("expanded source", expanded_gpu.clone(), expanded_cpu.clone()));
}

TEST(CudaTensor, OverlappingViewsCopyAsOnTheCpu) {
  LADNN_REQUIRE_GPU();
  FillNanScope nan_fill;
  Generator gen(13);
  Tensor cpu = randn({10}, gen);
  Tensor gpu = cpu.to(kGpu);
  // Shift a window of one buffer by 2: the source overlaps the destination.
  cpu.narrow(0, 2, 7).copy_(cpu.narrow(0, 0, 7));
  gpu.narrow(0, 2, 7).copy_(gpu.narrow(0, 0, 7));
  EXPECT_TRUE(gpu_equals("shifted in place", gpu, cpu));
}

TEST(CudaTensor, CrossDeviceCopiesHandleStridesAndDtypes) {
  LADNN_REQUIRE_GPU();
  FillNanScope nan_fill;
  Generator gen(14);
  const Tensor a = randn({3, 4, 5}, gen);
  // Host strided view -> device strided view.
  Tensor dst = Tensor::full({5, 4, 3}, NAN, DType::Float32, kGpu);
  dst.transpose(0, 2).copy_(a);
  EXPECT_TRUE(gpu_equals("host -> device transposed", dst, a.transpose(0, 2).contiguous()));
  // Device strided view -> host strided view.
  Tensor host = Tensor::full({5, 4, 3}, NAN);
  host.transpose(0, 2).copy_(a.to(kGpu));
  EXPECT_TRUE(gpu_equals("device -> host transposed", host, a.transpose(0, 2).contiguous()));
  // Dtype conversion across and on the device: through double, as the CPU converts.
  Tensor d64 = Tensor::empty({3, 4, 5}, DType::Float64, kGpu);
  d64.copy_(a);
  EXPECT_EQ(d64.dtype(), DType::Float64);
  EXPECT_TRUE(gpu_equals("float32 host -> float64 device", d64, a.to(DType::Float64)));
  Tensor back32 = Tensor::empty({3, 4, 5}, DType::Float32, kGpu);
  back32.copy_(d64);
  EXPECT_TRUE(gpu_equals("float64 -> float32 on the device", back32, a));
  EXPECT_TRUE(gpu_equals("to(dtype) on the device", a.to(kGpu).to(DType::Float64), a.to(DType::Float64)));
  Tensor idx = Tensor::from_vector({0, 7, -3, 123456789012.0}, {4}, DType::Int64);
  Tensor idx_gpu = Tensor::empty({4}, DType::Int64, kGpu);
  idx_gpu.copy_(idx);
  EXPECT_EQ(idx_gpu.to(kCpu).to_vector(), idx.to_vector());
}

TEST(CudaTensor, FillWritesEveryElementOfAnyView) {
  LADNN_REQUIRE_GPU();
  FillNanScope nan_fill;
  for (double value : {0.0, -0.0, 1.5, -7.25}) {
    Tensor gpu = Tensor::full({4, 6, 5}, NAN, DType::Float32, kGpu);
    Tensor cpu = Tensor::full({4, 6, 5}, NAN);
    gpu.narrow(1, 1, 3).transpose(0, 2).fill_(value);
    cpu.narrow(1, 1, 3).transpose(0, 2).fill_(value);
    EXPECT_TRUE(gpu_equals("fill of a view with " + std::to_string(value), gpu, cpu));
    EXPECT_EQ(std::signbit(gpu.narrow(1, 1, 1).to(kCpu).to_vector()[0]), std::signbit(value));
  }
  Tensor ints = Tensor::full({7}, -3, DType::Int64, kGpu);
  EXPECT_EQ(ints.to_vector(), std::vector<double>(7, -3.0));
  EXPECT_EQ(Tensor::zeros({2, 3}, DType::Float64, kGpu).to_vector(), std::vector<double>(6, 0.0));
  EXPECT_EQ(Tensor::ones({1, 64, 56, 56}, DType::Float32, kGpu).to_vector(),
            std::vector<double>(64 * 56 * 56, 1.0));
}

TEST(CudaTensor, HostAccessCopiesToTheHost) {
  LADNN_REQUIRE_GPU();
  Generator gen(15);
  const Tensor a = randn({2, 3}, gen);
  const Tensor g = a.to(kGpu);
  EXPECT_EQ(g.to_vector(), a.to_vector());
  EXPECT_EQ(g.at({1, 2}), a.at({1, 2}));
  EXPECT_EQ(g.transpose(0, 1).at({2, 0}), a.at({0, 2}));
  EXPECT_NE(g.str().find("cuda:0"), std::string::npos);
  EXPECT_EQ(ops::max_abs_diff(g, a), 0.0);
}

// ---- elementwise
// ---------------------------------------------------------------------------------------------

struct ShapePair {
  Shape a, b;
};
const std::vector<ShapePair> kBroadcastShapes = {
    {{3, 5, 7}, {3, 5, 7}},              // odd sizes, same shape (flat kernel)
    {{1, 64, 56, 56}, {64, 1, 1}},       // batch 1, per-channel operand
    {{2, 128, 56, 56}, {1, 128, 1, 1}},  // DenseNet-169 dense block 1 width
    {{2, 256, 28, 28}, {2, 256, 28, 28}},
    {{4, 6}, {6}},     // linear bias
    {{4, 1}, {1, 6}},  // outer product shape
    {{}, {3, 5}},      // 0-d with a matrix
    {{5, 1, 7}, {1, 3, 1}},
    {{1}, {1}},
};

using BinaryOp = Tensor (*)(const Tensor&, const Tensor&);

TEST(CudaElementwise, BinaryOpsWithBroadcastingEqualTheCpu) {
  LADNN_REQUIRE_GPU();
  FillNanScope nan_fill;
  const std::vector<std::pair<const char*, BinaryOp>> ops_list = {
      {"add", ops::add}, {"sub", ops::sub}, {"mul", ops::mul}, {"div", ops::div}};
  Generator gen(21);
  for (const ShapePair& s : kBroadcastShapes) {
    for (const auto& [name, op] : ops_list) {
      SCOPED_TRACE(std::string(name) + " " + shape_str(s.a) + " " + shape_str(s.b));
      const Tensor a = randn(s.a, gen);
      const Tensor b = away_from(randn(s.b, gen), 0.0, 0.05);  // div: no huge quotients
      EXPECT_TRUE(gpu_equals(name, op(a.to(kGpu), b.to(kGpu)), op(a, b)));
      // Swapped operands (the broadcast one on the left).
      EXPECT_TRUE(gpu_equals(std::string(name) + " swapped", op(b.to(kGpu), away_from(a, 0, 0.05).to(kGpu)),
                             op(b, away_from(a, 0, 0.05))));
    }
  }
  // Strided operands: a transposed and a narrowed view, read in place.
  const Tensor a = randn({6, 9, 4}, gen), b = away_from(randn({4, 9, 6}, gen), 0, 0.05);
  for (const auto& [name, op] : ops_list) {
    const Tensor ga = a.to(kGpu).narrow(1, 2, 5), gb = b.to(kGpu).transpose(0, 2).narrow(1, 2, 5);
    EXPECT_TRUE(gpu_equals(std::string(name) + " of strided views", op(ga, gb),
                           op(a.narrow(1, 2, 5), b.transpose(0, 2).narrow(1, 2, 5))));
  }
}

TEST(CudaElementwise, BinaryOpGradientsMatchTheCpu) {
  LADNN_REQUIRE_GPU();
  FillNanScope nan_fill;
  Generator gen(22);
  using Fn = Variable (*)(const Variable&, const Variable&);
  const std::vector<std::pair<const char*, Fn>> fns = {
      {"add", ladnn::add}, {"sub", ladnn::sub}, {"mul", ladnn::mul}, {"div", ladnn::div}};
  for (const ShapePair& s : kBroadcastShapes) {
    const Tensor a = randn(s.a, gen), b = away_from(randn(s.b, gen), 0.0, 0.25);
    const Shape out = ops::broadcast_shape(s.a, s.b);
    const Tensor dy = randn(out, gen);
    for (const auto& [name, fn] : fns) {
      SCOPED_TRACE(std::string(name) + " " + shape_str(s.a) + " " + shape_str(s.b));
      auto f = [fn = fn](const std::vector<Variable>& v) { return fn(v[0], v[1]); };
      const AutogradRun cpu = run_autograd(f, {a, b}, dy, kCpu), gpu = run_autograd(f, {a, b}, dy, kGpu);
      EXPECT_TRUE(gpu_equals("forward", gpu.y, cpu.y));
      // Each gradient is a sum (over the broadcast dims) of per-element terms: its error scale is
      // sum |terms|, the terms being the elementwise gradients at full size (their magnitudes bound
      // the float rounding of each term too).
      for (int i = 0; i < 2; ++i) {
        const Shape& in_shape = i == 0 ? s.a : s.b;
        const AutogradRun full =
            run_autograd([fn = fn](const std::vector<Variable>& v) { return fn(v[0], v[1]); },
                         {ops::expand_to(a, out), ops::expand_to(b, out)}, dy, kCpu);
        const Tensor scale = ops::sum_to(abs_cpu(full.grads[i]), in_shape);
        EXPECT_TRUE(gpu_matches(std::string("gradient ") + (i ? "b" : "a"), gpu.grads[i], cpu.grads[i],
                                {0.0, kSumRtol}, scale));
      }
    }
  }
}

struct UnaryCase {
  const char* name;
  Tensor (*op)(const Tensor&);
  double low, high;  // input range
  double rtol;       // see the file comment
  double atol = 0.0;
};

// Below 2^-126 floats are subnormal, with a fixed spacing of 2^-149: there an error of a few ulps is a
// few times 2^-149 absolute, however small the value. sigmoid(x) for x < -87 is such a value (it is
// e^x), so its bound gets 8 subnormal spacings of absolute slack (expf's 2 + glibc's 1 + the roundings).
constexpr double kSubnormalUlp = 1.401298464324817e-45;  // 2^-149

TEST(CudaElementwise, UnaryAndScalarOpsMatchTheCpu) {
  LADNN_REQUIRE_GPU();
  FillNanScope nan_fill;
  const std::vector<UnaryCase> cases = {
      {"neg", ops::neg, -10, 10, 0.0},
      {"relu", ops::relu, -3, 3, 0.0},
      {"sqrt", ops::sqrt, 0, 100, 0.0},
      {"add_scalar", [](const Tensor& t) { return ops::add_scalar(t, 0.3); }, -5, 5, 0.0},
      {"mul_scalar", [](const Tensor& t) { return ops::mul_scalar(t, -1.7); }, -5, 5, 0.0},
      {"pow 2", [](const Tensor& t) { return ops::pow_scalar(t, 2.0); }, -3, 3, kEps32},
      {"pow 3", [](const Tensor& t) { return ops::pow_scalar(t, 3.0); }, -3, 3, kEps32},
      {"pow 0.5", [](const Tensor& t) { return ops::pow_scalar(t, 0.5); }, 0.01, 9, kEps32},
      {"pow -1.5", [](const Tensor& t) { return ops::pow_scalar(t, -1.5); }, 0.1, 9, kEps32},
      {"exp", ops::exp, -20, 20, 3 * kEps32},
      {"log", ops::log, 1e-3, 100, 2 * kEps32},
      {"sigmoid", ops::sigmoid, -100, 100, 6 * kEps32, 8 * kSubnormalUlp},
  };
  const std::vector<Shape> shapes = {{3, 5, 7}, {1, 64, 56, 56}, {2, 128, 56, 56}, {1}, {}};
  Generator gen(23);
  for (const UnaryCase& c : cases) {
    for (const Shape& shape : shapes) {
      SCOPED_TRACE(std::string(c.name) + " " + shape_str(shape));
      const Tensor x = randu(shape, gen, c.low, c.high);
      EXPECT_TRUE(gpu_matches(c.name, c.op(x.to(kGpu)), c.op(x), {c.atol, c.rtol}));
    }
    // A strided input is read in place.
    const Tensor x = randu({4, 5, 6}, gen, c.low, c.high);
    EXPECT_TRUE(gpu_matches(std::string(c.name) + " of a transposed view", c.op(x.to(kGpu).transpose(0, 2)),
                            c.op(x.transpose(0, 2)), {c.atol, c.rtol}));
  }
  // Edge values: the sigmoid of huge logits, relu of -0 and NaN, log of 0.
  const Tensor edges = Tensor::from_vector({-1e30, -100, -0.0, 0.0, 100, 1e30}, {6});
  EXPECT_TRUE(gpu_matches("sigmoid at the edges", ops::sigmoid(edges.to(kGpu)), ops::sigmoid(edges),
                          {8 * kSubnormalUlp, 6 * kEps32}));
  EXPECT_TRUE(gpu_equals("relu at the edges", ops::relu(edges.to(kGpu)), ops::relu(edges)));
  const Tensor zero_nan = Tensor::from_vector({0.0, NAN, -1.0}, {3});
  EXPECT_TRUE(gpu_equals("log of 0, NaN, -1", ops::log(zero_nan.to(kGpu)), ops::log(zero_nan)));
  EXPECT_TRUE(gpu_equals("relu of NaN", ops::relu(zero_nan.to(kGpu)), ops::relu(zero_nan)));
}

TEST(CudaElementwise, UnaryOpGradientsMatchTheCpu) {
  LADNN_REQUIRE_GPU();
  FillNanScope nan_fill;
  struct Case {
    const char* name;
    std::function<Variable(const Variable&)> f;
    double low, high;
    Tol tol;
    bool scale_by_y;  // sigmoid: the error follows |dy * y| (see below), not |dx|
  };
  // Gradients: exp = dy * y (y 3 ulps apart + one rounding each side: 4); log = dy / x (exact); relu
  // exact; pow = dy * (p x^(p-1)) (1 ulp + two roundings each side: 3); sigmoid = dy y (1 - y): y differs
  // by up to 6 ulps, and 1 - y turns that into an absolute error of 6 kEps32 |y|, plus 3 roundings:
  // |error| <= 9 kEps32 |dy y|.
  const std::vector<Case> cases = {
      {"exp", [](const Variable& v) { return ladnn::exp(v); }, -10, 10, {0, 4 * kEps32}, false},
      {"log", [](const Variable& v) { return ladnn::log(v); }, 0.01, 10, {0, 0}, false},
      {"relu", [](const Variable& v) { return ladnn::relu(v); }, -3, 3, {0, 0}, false},
      {"neg", [](const Variable& v) { return ladnn::neg(v); }, -3, 3, {0, 0}, false},
      {"mul_scalar", [](const Variable& v) { return ladnn::mul_scalar(v, 0.7); }, -3, 3, {0, 0}, false},
      {"add_scalar", [](const Variable& v) { return ladnn::add_scalar(v, 0.7); }, -3, 3, {0, 0}, false},
      {"pow 3", [](const Variable& v) { return ladnn::pow_scalar(v, 3.0); }, -2, 2, {0, 3 * kEps32}, false},
      {"sigmoid", [](const Variable& v) { return ladnn::sigmoid(v); }, -20, 20, {0, 9 * kEps32}, true},
  };
  Generator gen(24);
  for (const Case& c : cases) {
    for (const Shape& shape : std::vector<Shape>{{3, 5, 7}, {1, 64, 56, 56}, {2, 256, 28, 28}}) {
      SCOPED_TRACE(std::string(c.name) + " " + shape_str(shape));
      const Tensor x = randu(shape, gen, c.low, c.high), dy = randn(shape, gen);
      auto f = [&c](const std::vector<Variable>& v) { return c.f(v[0]); };
      const AutogradRun cpu = run_autograd(f, {x}, dy, kCpu), gpu = run_autograd(f, {x}, dy, kGpu);
      const Tensor scale = c.scale_by_y ? abs_cpu(ops::mul(dy, cpu.y)) : Tensor();
      EXPECT_TRUE(gpu_matches("gradient", gpu.grads[0], cpu.grads[0], c.tol, scale));
    }
  }
}

TEST(CudaElementwise, BackwardHelpersAndInPlaceOpsEqualTheCpu) {
  LADNN_REQUIRE_GPU();
  FillNanScope nan_fill;
  Generator gen(25);
  for (const Shape& shape : std::vector<Shape>{{3, 5, 7}, {1, 64, 56, 56}, {2, 128, 56, 56}}) {
    SCOPED_TRACE(shape_str(shape));
    const Tensor g = randn(shape, gen), x = randn(shape, gen), y = randu(shape, gen, 0, 1);
    EXPECT_TRUE(
        gpu_equals("relu_backward", ops::relu_backward(g.to(kGpu), x.to(kGpu)), ops::relu_backward(g, x)));
    EXPECT_TRUE(gpu_equals("sigmoid_backward", ops::sigmoid_backward(g.to(kGpu), y.to(kGpu)),
                           ops::sigmoid_backward(g, y)));
    // add_ with a strided source and alpha; mul_scalar_.
    Tensor acc_cpu = randn(shape, gen);
    Tensor acc_gpu = acc_cpu.to(kGpu);
    const Tensor src = randn(shape, gen);
    ops::add_(acc_cpu, src, -0.37);
    ops::add_(acc_gpu, src.to(kGpu), -0.37);
    EXPECT_TRUE(gpu_equals("add_", acc_gpu, acc_cpu));
    ops::mul_scalar_(acc_cpu, 0.91);
    ops::mul_scalar_(acc_gpu, 0.91);
    EXPECT_TRUE(gpu_equals("mul_scalar_", acc_gpu, acc_cpu));
    // expand_to: the backward of a reduction (a per-channel column: C followed by ones, as many as
    // the dims after the channel).
    Shape col_shape(shape.size() - 1, 1);
    col_shape[0] = shape[1];
    const Tensor row = randn(col_shape, gen);
    EXPECT_TRUE(gpu_equals("expand_to", ops::expand_to(row.to(kGpu), shape), ops::expand_to(row, shape)));
  }
  // add_ from a transposed view of the destination's own storage reads the old values, as on the CPU.
  Tensor sq_cpu = randn({9, 9}, gen);
  Tensor sq_gpu = sq_cpu.to(kGpu);
  ops::add_(sq_cpu, sq_cpu.transpose(0, 1), 1.0);
  ops::add_(sq_gpu, sq_gpu.transpose(0, 1), 1.0);
  EXPECT_TRUE(gpu_equals("add_ of its own transpose", sq_gpu, sq_cpu));
  // add_ of a tensor into itself (same view): doubles it.
  ops::add_(sq_cpu, sq_cpu, 1.0);
  ops::add_(sq_gpu, sq_gpu, 1.0);
  EXPECT_TRUE(gpu_equals("add_ of itself", sq_gpu, sq_cpu));
}

// ---- reductions
// ---------------------------------------------------------------------------------------------------

struct SumCase {
  Shape shape;
  std::vector<int64_t> dims;  // empty: sum of everything
  bool keepdim;
};
const std::vector<SumCase> kSumCases = {
    {{3, 5, 7}, {}, false},
    {{3, 5, 7}, {1}, false},
    {{3, 5, 7}, {0, 2}, true},
    {{3, 5, 7}, {-1}, true},
    {{1, 64, 56, 56}, {2, 3}, false},      // global average pool's sum (batch 1)
    {{4, 128, 56, 56}, {0, 2, 3}, false},  // a conv bias gradient in dense block 1
    {{32, 256, 7, 7}, {0, 2, 3}, true},
    {{64, 1664}, {0}, false},  // linear bias gradient over a batch (strided terms)
    {{1000, 6}, {0}, false},   // few outputs, strided terms
    {{6, 1000}, {1}, false},
    {{300, 200}, {0}, false},           // many outputs, strided: the thread-per-output kernel
    {{5000, 200}, {0}, false},          // ... with three passes (157 chunks, then 5, then 1)
    {{32, 1664, 7, 7}, {2, 3}, false},  // global average pool at batch 32: 49 terms per output
    {{2, 256, 28, 28}, {1}, false},     // reduce a middle dim
    {{5, 1, 3}, {1}, false},            // a size-1 reduced dim
    {{3, 0, 4}, {1}, false},            // an empty reduced dim: zeros
    {{3, 0, 4}, {0}, false},            // an empty kept dim: empty result
    {{}, {}, false},                    // 0-d
    {{300000}, {}, false},              // long 1-d: several chunks, two passes
};

Tensor run_sum(const Tensor& x, const SumCase& c) {
  return c.dims.empty() ? ops::sum(x) : ops::sum(x, c.dims, c.keepdim);
}

TEST(CudaReduce, SumsOfIntegerValuesAreExact) {
  LADNN_REQUIRE_GPU();
  FillNanScope nan_fill;
  Generator gen(31);
  std::vector<SumCase> cases = kSumCases;
  cases.push_back({{8, 256, 56, 56}, {}, false});  // 6.4M terms: the split full sum
  cases.push_back({{8, 256, 56, 56}, {0, 2, 3}, false});
  for (const SumCase& c : cases) {
    SCOPED_TRACE(shape_str(c.shape) + " over " + std::to_string(c.dims.size()) + " dims");
    const Tensor x = small_integers(c.shape, gen);
    EXPECT_TRUE(gpu_equals("sum", run_sum(x.to(kGpu), c), run_sum(x, c)));
  }
  // A transposed and a narrowed input, reduced in place through their strides.
  const Tensor x = small_integers({6, 40, 50}, gen);
  EXPECT_TRUE(gpu_equals("sum of a transposed view", ops::sum(x.to(kGpu).transpose(0, 2), {1}),
                         ops::sum(x.transpose(0, 2), {1})));
  EXPECT_TRUE(gpu_equals("sum of a channel slice", ops::sum(x.to(kGpu).narrow(1, 3, 17), {0, 2}),
                         ops::sum(x.narrow(1, 3, 17), {0, 2})));
}

TEST(CudaReduce, SumsOfRandomValuesAreWithinTheRoundingBound) {
  LADNN_REQUIRE_GPU();
  FillNanScope nan_fill;
  Generator gen(32);
  auto run_mean = [](const Tensor& x, const SumCase& c) {
    return c.dims.empty() ? ops::mean(x) : ops::mean(x, c.dims, c.keepdim);
  };
  for (const SumCase& c : kSumCases) {
    SCOPED_TRACE(shape_str(c.shape) + " over " + std::to_string(c.dims.size()) + " dims");
    const Tensor x = randn(c.shape, gen, 0.3, 1.0);
    EXPECT_TRUE(
        gpu_matches("sum", run_sum(x.to(kGpu), c), run_sum(x, c), {0.0, kSumRtol}, run_sum(abs_cpu(x), c)));
    // mean = sum * (1 / count), one more rounding on each side (covered: the bound has a spare ulp).
    int64_t count = 1;
    for (std::size_t d = 0; d < c.shape.size(); ++d) {
      const bool reduced =
          c.dims.empty() ||
          std::find(c.dims.begin(), c.dims.end(), static_cast<int64_t>(d)) != c.dims.end() ||
          std::find(c.dims.begin(), c.dims.end(),
                    static_cast<int64_t>(d) - static_cast<int64_t>(c.shape.size())) != c.dims.end();
      if (reduced) count *= c.shape[d];
    }
    if (count == 0) continue;  // mean over an empty dim is refused on every device
    EXPECT_TRUE(gpu_matches("mean", run_mean(x.to(kGpu), c), run_mean(x, c), {0.0, kSumRtol},
                            run_mean(abs_cpu(x), c)));
  }
}

TEST(CudaReduce, SumToAndReductionGradientsMatchTheCpu) {
  LADNN_REQUIRE_GPU();
  FillNanScope nan_fill;
  Generator gen(33);
  const std::vector<std::pair<Shape, Shape>> cases = {{{4, 6}, {6}},
                                                      {{4, 6}, {4, 1}},
                                                      {{2, 128, 56, 56}, {1, 128, 1, 1}},
                                                      {{2, 128, 56, 56}, {128, 1, 1}},
                                                      {{3, 5, 7}, {}},
                                                      {{3, 5, 7}, {3, 5, 7}},
                                                      {{1, 64, 56, 56}, {64, 1, 1}}};
  for (const auto& [from, to] : cases) {
    SCOPED_TRACE(shape_str(from) + " -> " + shape_str(to));
    const Tensor g = randn(from, gen);
    EXPECT_TRUE(gpu_matches("sum_to", ops::sum_to(g.to(kGpu), to), ops::sum_to(g, to), {0.0, kSumRtol},
                            ops::sum_to(abs_cpu(g), to)));
  }
  // sum's backward is expand_to: exact.
  for (const SumCase& c : {SumCase{{2, 128, 56, 56}, {2, 3}, false}, SumCase{{3, 5, 7}, {0, 2}, true},
                           SumCase{{3, 5, 7}, {}, false}}) {
    const Tensor x = randn(c.shape, gen);
    const Tensor out = run_sum(x, c);
    const Tensor dy = randn(out.shape(), gen);
    auto f = [&c](const std::vector<Variable>& v) {
      return c.dims.empty() ? ladnn::sum(v[0]) : ladnn::sum(v[0], c.dims, c.keepdim);
    };
    EXPECT_TRUE(gpu_equals("sum backward", run_autograd(f, {x}, dy, kGpu).grads[0],
                           run_autograd(f, {x}, dy, kCpu).grads[0]));
  }
}

// ---- cat and split
// ------------------------------------------------------------------------------------------------

TEST(CudaJoin, CatEqualsTheCpuForEveryDimAndDtype) {
  LADNN_REQUIRE_GPU();
  FillNanScope nan_fill;
  Generator gen(41);
  // DenseNet: the 33 inputs of dense block 2's last layer (128 + 32 * k channels), batch 2.
  std::vector<Tensor> dense{randn({2, 128, 28, 28}, gen)};
  for (int k = 0; k < 32; ++k) dense.push_back(randn({2, 32, 28, 28}, gen));
  std::vector<Tensor> dense_gpu;
  for (const Tensor& t : dense) dense_gpu.push_back(t.to(kGpu));
  EXPECT_TRUE(gpu_equals("dense block concatenation", ops::cat(dense_gpu, 1), ops::cat(dense, 1)));
  // More parts than one launch takes (64), some empty along dim.
  std::vector<Tensor> many, many_gpu;
  for (int k = 0; k < 70; ++k) {
    many.push_back(randn({3, k % 5, 2}, gen));
    many_gpu.push_back(many.back().to(kGpu));
  }
  EXPECT_TRUE(gpu_equals("70 parts along dim 1", ops::cat(many_gpu, 1), ops::cat(many, 1)));
  // Every dim, odd sizes, batch 1, a transposed part; float64 and int64 move as 8-byte words.
  for (DType dt : {DType::Float32, DType::Float64, DType::Int64}) {
    for (int64_t dim : {0, 1, 2, -1}) {
      SCOPED_TRACE(std::string(dtype_name(dt)) + " dim " + std::to_string(dim));
      Shape sa = {1, 3, 5}, sb = {1, 3, 5};
      const int64_t d = dim < 0 ? dim + 3 : dim;
      sb[d] = 4;
      const Tensor a = Tensor::normal(sa, 0, 50, gen, dt), b = Tensor::normal(sb, 0, 50, gen, dt);
      // A third part of b's shape that is a transposed view on the GPU (cat reads it through a copy).
      Shape st = sb;
      std::swap(st[0], st[2]);
      const Tensor c = Tensor::normal(st, 0, 50, gen, dt);
      const Tensor c_gpu = c.to(kGpu).transpose(0, 2), c_cpu = c.transpose(0, 2);
      EXPECT_TRUE(
          gpu_equals("cat", ops::cat({a.to(kGpu), b.to(kGpu), c_gpu}, dim), ops::cat({a, b, c_cpu}, dim)));
    }
  }
}

TEST(CudaJoin, CatAndSplitGradientsMatchTheCpu) {
  LADNN_REQUIRE_GPU();
  FillNanScope nan_fill;
  Generator gen(42);
  const Tensor a = randn({2, 64, 14, 14}, gen), b = randn({2, 32, 14, 14}, gen),
               c = randn({2, 1, 14, 14}, gen);
  const Tensor dy = randn({2, 97, 14, 14}, gen);
  auto f = [](const std::vector<Variable>& v) { return ladnn::cat(v, 1); };
  const AutogradRun cpu = run_autograd(f, {a, b, c}, dy, kCpu), gpu = run_autograd(f, {a, b, c}, dy, kGpu);
  EXPECT_TRUE(gpu_equals("cat forward", gpu.y, cpu.y));
  for (int i = 0; i < 3; ++i)
    EXPECT_TRUE(gpu_equals("cat gradient " + std::to_string(i), gpu.grads[i], cpu.grads[i]));
  // split: pieces are views; the gradient of the input is the pieces' gradients in place, zeros where a
  // piece is not used.
  const Tensor x = randn({2, 97, 5, 5}, gen);
  const Tensor d0 = randn({2, 64, 5, 5}, gen), d2 = randn({2, 1, 5, 5}, gen);
  auto g = [&](Device dev) {
    Variable v(x.to(dev), true);
    std::vector<Variable> pieces = ladnn::split(v, {64, 32, 1}, 1);
    Variable loss = ladnn::add(ladnn::sum(ladnn::mul(pieces[0], Variable(d0.to(dev)))),
                               ladnn::sum(ladnn::mul(pieces[2], Variable(d2.to(dev)))));
    loss.backward(Tensor::ones({}, DType::Float32, dev));
    return v.grad();
  };
  EXPECT_TRUE(gpu_equals("split gradient", g(kGpu), g(kCpu)));
}

// ---- loss and dropout
// -----------------------------------------------------------------------------------------------

TEST(CudaLoss, BceWithLogitsMatchesTheCpu) {
  LADNN_REQUIRE_GPU();
  FillNanScope nan_fill;
  Generator gen(51);
  const std::vector<Shape> shapes = {{1, 6}, {32, 6}, {7, 1}, {3, 5, 7}};
  for (const Shape& shape : shapes) {
    const Tensor x = randu(shape, gen, -30, 30);
    const Tensor y = randu(shape, gen, 0, 1);  // soft labels: the general case
    // Weights: none, full, broadcast along the batch (LA-DNN's per-output weights), a 0/1 mask.
    std::vector<Tensor> weights = {Tensor(), randu(shape, gen, 0, 5), randu({shape.back()}, gen, 0, 5)};
    std::vector<double> mask(shape_numel(shape));
    for (double& m : mask) m = gen.uniform01() < 0.5 ? 0.0 : 1.0;
    weights.push_back(Tensor::from_vector(mask, shape));
    for (std::size_t wi = 0; wi < weights.size(); ++wi) {
      const Tensor& w = weights[wi];
      const Tensor wg = w.defined() ? w.to(kGpu) : Tensor();
      for (ops::Reduction r : {ops::Reduction::None, ops::Reduction::Mean, ops::Reduction::Sum}) {
        SCOPED_TRACE(shape_str(shape) + " weight " + std::to_string(wi) + " reduction " +
                     std::to_string(static_cast<int>(r)));
        const Tensor ref = ops::bce_with_logits(x, y, w, r);
        EXPECT_TRUE(
            gpu_matches("loss", ops::bce_with_logits(x.to(kGpu), y.to(kGpu), wg, r), ref, {0.0, kEps32}));
        const Tensor dout = r == ops::Reduction::None ? randn(shape, gen) : randn({}, gen);
        EXPECT_TRUE(gpu_matches("gradient",
                                ops::bce_with_logits_backward(dout.to(kGpu), x.to(kGpu), y.to(kGpu), wg, r),
                                ops::bce_with_logits_backward(dout, x, y, w, r), {1e-12, kEps32}));
      }
    }
  }
  // Extreme logits stay finite, and through autograd the upstream gradient stays on the device.
  const Tensor x = Tensor::from_vector({-100, -1e4, 0, 1e4, 100, 3}, {1, 6});
  const Tensor y = Tensor::from_vector({1, 0, 0.5, 1, 0, 1}, {1, 6});
  auto f = [&](const std::vector<Variable>& v) {
    return ladnn::bce_with_logits(v[0], y.to(v[0].tensor().device()), Tensor(), ops::Reduction::Mean);
  };
  const Tensor one = Tensor::ones({});
  const AutogradRun cpu = run_autograd(f, {x}, one, kCpu), gpu = run_autograd(f, {x}, one, kGpu);
  EXPECT_TRUE(gpu_matches("extreme loss", gpu.y, cpu.y, {0.0, kEps32}));
  EXPECT_TRUE(gpu_matches("extreme gradient", gpu.grads[0], cpu.grads[0], {1e-12, kEps32}));
}

TEST(CudaDropout, TheSameSeedGivesTheSameMaskOnBothDevices) {
  LADNN_REQUIRE_GPU();
  FillNanScope nan_fill;
  Generator data(61);
  const Tensor x = randn({4, 1664}, data), dy = randn({4, 1664}, data);
  for (double p : {0.2, 0.5, 1.0}) {
    auto run = [&](Device dev) {
      Generator gen(7);
      Variable v(x.to(dev), true);
      Variable y = ladnn::dropout(v, p, true, gen);
      y.backward(dy.to(dev));
      return std::make_pair(y.tensor(), v.grad());
    };
    const auto cpu = run(kCpu), gpu = run(kGpu);
    EXPECT_TRUE(gpu_equals("dropout output p=" + std::to_string(p), gpu.first, cpu.first));
    EXPECT_TRUE(gpu_equals("dropout gradient p=" + std::to_string(p), gpu.second, cpu.second));
  }
}

// ---- fused optimizer updates
// ---------------------------------------------------------------------------------------

TEST(CudaOptim, FusedAdamAndSgdStepsMatchTheCpu) {
  LADNN_REQUIRE_GPU();
  FillNanScope nan_fill;
  Generator gen(71);
  const Shape shape = {1664, 6};  // LA-DNN's lesion head weight
  const Tol tol{0.0, 2 * kEps32};
  std::vector<ops::AdamStep> adams(4);
  adams[0].lr = 1e-2;  // Adam defaults but lr
  adams[1].lr = 5e-2, adams[1].beta1 = 0.8, adams[1].beta2 = 0.99, adams[1].weight_decay = 0.1;  // L2
  adams[2].lr = 1e-2, adams[2].weight_decay = 1e-2, adams[2].decoupled = true;                   // AdamW
  adams[3].lr = 0.3, adams[3].beta1 = 0.3, adams[3].beta2 = 0.5, adams[3].eps = 0.1;  // lerp's other branch
  for (std::size_t ci = 0; ci < adams.size(); ++ci) {
    SCOPED_TRACE("adam config " + std::to_string(ci));
    Tensor p = randn(shape, gen), m = Tensor::zeros(shape), v = Tensor::zeros(shape);
    Tensor pg = p.to(kGpu), mg = m.to(kGpu), vg = v.to(kGpu);
    for (int64_t t = 1; t <= 5; ++t) {
      ops::AdamStep s = adams[ci];
      s.step = t;
      const Tensor g = randn(shape, gen);
      ops::adam_update_(p, g, m, v, s);
      ops::adam_update_(pg, g.to(kGpu), mg, vg, s);
    }
    EXPECT_TRUE(gpu_matches("param", pg, p, tol));
    EXPECT_TRUE(gpu_matches("exp_avg", mg, m, tol));
    EXPECT_TRUE(gpu_matches("exp_avg_sq", vg, v, tol));
  }
  struct SgdCase {
    double lr, momentum, dampening, wd;
    bool nesterov;
  };
  for (const SgdCase& c : {SgdCase{0.1, 0, 0, 0, false}, SgdCase{0.05, 0.9, 0.1, 0.01, false},
                           SgdCase{0.05, 0.9, 0.0, 1e-3, true}}) {
    SCOPED_TRACE("sgd momentum " + std::to_string(c.momentum));
    Tensor p = randn(shape, gen), buf = Tensor::empty(shape);
    Tensor pg = p.to(kGpu), bufg = Tensor::empty(shape, DType::Float32, kGpu);
    for (int t = 1; t <= 5; ++t) {
      ops::SgdStep s{c.lr, c.momentum, c.dampening, c.wd, c.nesterov, t == 1};
      const Tensor g = randn(shape, gen);
      ops::sgd_update_(p, g, buf, s);
      ops::sgd_update_(pg, g.to(kGpu), bufg, s);
    }
    EXPECT_TRUE(gpu_matches("param", pg, p, tol));
    if (c.momentum != 0) {
      EXPECT_TRUE(gpu_matches("momentum buffer", bufg, buf, tol));
    }
  }
}

// The multi-tensor Adam (up to 32 tensors per launch) against one launch per tensor, on the GPU: the same
// element arithmetic, so equal to the bit, for 75 tensors of DenseNet's sizes (three batches, the last
// one partial, an empty tensor among them), with the host's t and with t on the device.
TEST(CudaOptim, MultiTensorAdamEqualsOneLaunchPerTensor) {
  LADNN_REQUIRE_GPU();
  FillNanScope nan_fill;
  Generator gen(72);
  const Shape shapes[] = {{64, 3, 7, 7}, {64}, {128, 256, 1, 1}, {32, 128, 3, 3}, {1664}, {0}, {5, 1664}};
  std::vector<Tensor> p1, m1, v1, p2, m2, v2, g;
  for (int i = 0; i < 75; ++i) {
    const Shape& s = shapes[i % 7];
    const Tensor p = randn(s, gen).to(kGpu);
    p1.push_back(p.clone());
    p2.push_back(p.clone());
    for (auto* st : {&m1, &m2, &v1, &v2}) st->push_back(Tensor::zeros(s, DType::Float32, kGpu));
    g.push_back(randn(s, gen).to(kGpu));
  }
  Tensor device_t = Tensor::zeros({}, DType::Int64, kGpu);
  for (int64_t t = 1; t <= 3; ++t) {
    ops::AdamStep s;
    s.lr = 1e-2;
    s.weight_decay = 1e-3;
    s.step = t;
    if (t == 3) {  // the graph form: t read on the device
      device_t.fill_(3);
      s.device_step = device_t;
    }
    std::vector<ops::AdamTensors> all;
    for (std::size_t i = 0; i < p1.size(); ++i) {
      ops::adam_update_(p1[i], g[i], m1[i], v1[i], s);
      all.push_back({&p2[i], &g[i], &m2[i], &v2[i]});
    }
    ops::adam_update_multi_(all, s);
  }
  for (std::size_t i = 0; i < p1.size(); ++i) {
    EXPECT_TRUE(gpu_equals("param " + std::to_string(i), p2[i], to_cpu(p1[i])));
    EXPECT_TRUE(gpu_equals("exp_avg_sq " + std::to_string(i), v2[i], to_cpu(v1[i])));
  }
}

// ---- errors
// ------------------------------------------------------------------------------------------------------------

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(CudaElementwise, IncrementCountsOnTheDeviceAsOnTheCpu) {
  LADNN_REQUIRE_GPU();
  FillNanScope nan_fill;
  std::vector<double> v(1000);
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = double(i) * 3 - 700;
  Tensor cpu = Tensor::from_vector(v, {1000}, DType::Int64);
  Tensor gpu = cpu.to(kGpu);
  for (int i = 0; i < 3; ++i) {
    ops::increment_(cpu);
    ops::increment_(gpu);
  }
  EXPECT_TRUE(gpu_equals("increment_ x3", gpu, cpu));
}

// 300 counters of 0 to 70 elements: three launches of increment_all_ (128 per launch), as on the CPU;
// a counter on the other device is refused by name before anything changes.
TEST(CudaElementwise, IncrementAllCountsEveryTensorAsOnTheCpu) {
  LADNN_REQUIRE_GPU();
  FillNanScope nan_fill;
  std::vector<Tensor> cpu, gpu;
  for (int i = 0; i < 300; ++i) {
    std::vector<double> v(static_cast<std::size_t>(i % 71));
    for (std::size_t k = 0; k < v.size(); ++k) v[k] = double(i) * 5 - double(k);
    cpu.push_back(Tensor::from_vector(v, {int64_t(v.size())}, DType::Int64));
    gpu.push_back(cpu.back().to(kGpu));
  }
  for (int round = 0; round < 2; ++round) {
    ops::increment_all_(cpu);
    ops::increment_all_(gpu);
  }
  for (int i = 0; i < 300; ++i) EXPECT_TRUE(gpu_equals("counter " + std::to_string(i), gpu[i], cpu[i]));
  EXPECT_THROW_WITH(ops::increment_all_({gpu[1], cpu[2]}), "increment_all_", "counter 1", "counter 0");
}

TEST(CudaOps, MixedDevicesAndFloat64AreClearErrors) {
  LADNN_REQUIRE_GPU();
  const Tensor c = Tensor::ones({2, 3}), g = Tensor::ones({2, 3}, DType::Float32, kGpu);
  EXPECT_EQ(
      error_of([&] { ops::add(c, g); }),
      "add: the left operand is on cpu but the right operand is on cuda:0; move both to one device first");
  EXPECT_EQ(error_of([&] {
              Tensor acc = g.clone();
              ops::add_(acc, c);
            }),
            "add_: the destination is on cuda:0 but the source is on cpu; move both to one device first");
  EXPECT_EQ(error_of([&] { ops::cat({g, c}, 0); }), "cat: part 1 is on cpu but part 0 is on cuda:0");
  EXPECT_EQ(error_of([&] { ops::bce_with_logits(g, c, Tensor(), ops::Reduction::Mean); }),
            "bce_with_logits: target is on cpu but input is on cuda:0");
  EXPECT_NE(error_of([&] {
              Tensor p = g.clone(), m = c.clone(), v = g.clone();
              ops::adam_update_(p, g, m, v, ops::AdamStep{});
            }).find("exp_avg is on cpu but the parameter is on cuda:0"),
            std::string::npos);
  const Tensor d = Tensor::ones({2, 3}, DType::Float64, kGpu);
  EXPECT_EQ(
      error_of([&] { ops::exp(d); }),
      "exp: input is float64 on cuda:0; the GPU computes in float32 only (convert with .to(DType::Float32))");
  // Moving between dtypes on the device works, so the fix the message suggests is available.
  EXPECT_TRUE(gpu_equals("exp after converting", ops::exp(d.to(DType::Float32)), ops::exp(c)));
}

}  // namespace
