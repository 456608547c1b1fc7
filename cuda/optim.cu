// cuda/optim.cu — fused optimizer updates on the GPU: one kernel per parameter tensor does the whole
// Adam/AdamW or SGD step, reading p, g and the state once and writing p and the state once (the unfused
// chain of ops read and wrote each parameter-sized tensor ~10 times).
//
// The element formulas are those of tensor/cpu/optim.cpp (torch.optim's single-tensor path, operation
// for operation). Written with the _rn intrinsics (__fadd_rn, __fmul_rn, __fdiv_rn, __fsqrt_rn): they
// round like the plain operators but are never fused into an FMA, so the GPU performs the very same
// roundings as the CPU reference and the two agree to the bit.
//
// Scalars (bias corrections, step size) are computed on the host in double, rounded to float as the
// CPU does, and passed by value. For a CUDA graph (cuda/graph.h) that would freeze step t into the
// graph, so AdamStep::device_step instead hands the kernel a pointer to t in device memory (bumped by a
// kernel each step); each thread then computes the same double expressions before its loop.
//
// adam_update_multi_ runs the same element update over a batch of up to kMultiTensors parameters per
// launch (blockIdx.y picks the tensor, as cuda/join.cu's cat): DenseNet-169's 510 parameter tensors
// were 510 launches per step, most of them a few thousand elements (BatchNorm's gamma and beta).
#include <algorithm>
#include <cmath>
#include <vector>

#include "cuda/kernel_util.cuh"
#include "cuda/launch.h"
#include "cuda/ops.h"

namespace ladnn::cuda {
namespace {

using namespace detail;

struct AdamScalars {
  float wd, decay, w, one_minus_w, b2, one_minus_b2, bc2_sqrt, neg_step, eps;
  bool has_wd, decoupled, small_w;
  const int64_t* step;      // null: bc2_sqrt and neg_step are set; else t lives here (CUDA graphs)
  double lr, beta1, beta2;  // for computing them from *step
};

// The host's bias-corrected scalars, from t in double (as adam_update_ below computes them).
__device__ __forceinline__ void adam_step_scalars(AdamScalars& s) {
  const double t = static_cast<double>(*s.step);
  const double bc1 = 1.0 - ::pow(s.beta1, t);
  const double bc2 = 1.0 - ::pow(s.beta2, t);
  s.bc2_sqrt = static_cast<float>(::sqrt(bc2));
  s.neg_step = static_cast<float>(-(s.lr / bc1));
}

struct SgdScalars {
  float wd, mom, keep, neg_lr;
  bool has_wd, has_momentum, nesterov, first;
};

// The update of element i (both kernels below).
__device__ __forceinline__ void adam_element(float* __restrict__ p, const float* __restrict__ g,
                                             float* __restrict__ m, float* __restrict__ v, int64_t i,
                                             const AdamScalars& s) {
  float pi = p[i], gi = g[i];
  if (s.has_wd) {
    if (s.decoupled)
      pi = __fmul_rn(pi, s.decay);  // AdamW: p * (1 - lr wd)
    else
      gi = __fadd_rn(gi, __fmul_rn(s.wd, pi));  // Adam: g + wd p
  }
  const float m0 = m[i];
  const float mi = s.small_w ? __fadd_rn(m0, __fmul_rn(s.w, __fadd_rn(gi, -m0)))
                             : __fadd_rn(gi, -__fmul_rn(__fadd_rn(gi, -m0), s.one_minus_w));
  float vi = __fmul_rn(v[i], s.b2);
  vi = __fadd_rn(vi, __fmul_rn(__fmul_rn(s.one_minus_b2, gi), gi));
  const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), s.bc2_sqrt), s.eps);
  p[i] = __fadd_rn(pi, __fmul_rn(s.neg_step, __fdiv_rn(mi, denom)));
  m[i] = mi;
  v[i] = vi;
}

__global__ void adam_kernel(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m,
                            float* __restrict__ v, int64_t n, AdamScalars s) {
  pdl_enter();
  if (s.step) adam_step_scalars(s);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    adam_element(p, g, m, v, i, s);
}

constexpr int kMultiTensors = 32;  // 32 * 40 B of pointers and sizes: well under the 4 KiB parameter limit
struct AdamBatch {
  float* p[kMultiTensors];
  const float* g[kMultiTensors];
  float* m[kMultiTensors];
  float* v[kMultiTensors];
  int64_t n[kMultiTensors];
};

// blockIdx.y = the tensor; x a grid-stride loop over its elements.
__global__ void adam_multi_kernel(AdamBatch b, AdamScalars s) {
  pdl_enter();
  if (s.step) adam_step_scalars(s);
  const int t = blockIdx.y;
  const int64_t n = b.n[t];
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    adam_element(b.p[t], b.g[t], b.m[t], b.v[t], i, s);
}

__global__ void sgd_kernel(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ buf,
                           int64_t n, SgdScalars s) {
  pdl_enter();
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float pi = p[i];
    float d = g[i];
    if (s.has_wd) d = __fadd_rn(d, __fmul_rn(s.wd, pi));
    if (s.has_momentum) {
      const float b = s.first ? d : __fadd_rn(__fmul_rn(buf[i], s.mom), __fmul_rn(s.keep, d));
      buf[i] = b;
      d = s.nesterov ? __fadd_rn(d, __fmul_rn(s.mom, b)) : b;
    }
    p[i] = __fadd_rn(pi, __fmul_rn(s.neg_lr, d));
  }
}

// The kernels' scalars, computed on the host in double and rounded once (see the file header).
AdamScalars adam_scalars(const ops::AdamStep& s) {
  AdamScalars a;
  a.has_wd = s.weight_decay != 0.0;
  a.decoupled = s.decoupled;
  a.wd = static_cast<float>(s.weight_decay);
  a.decay = static_cast<float>(1.0 - s.lr * s.weight_decay);
  a.w = static_cast<float>(1.0 - s.beta1);
  a.one_minus_w = 1.0f - a.w;  // in float, as torch's lerp (and the CPU) computes it
  a.small_w = std::fabs(a.w) < 0.5f;
  a.b2 = static_cast<float>(s.beta2);
  a.one_minus_b2 = static_cast<float>(1.0 - s.beta2);
  const double bc1 = 1.0 - std::pow(s.beta1, static_cast<double>(s.step));
  const double bc2 = 1.0 - std::pow(s.beta2, static_cast<double>(s.step));
  a.bc2_sqrt = static_cast<float>(std::sqrt(bc2));
  a.neg_step = static_cast<float>(-(s.lr / bc1));
  a.eps = static_cast<float>(s.eps);
  a.step = s.device_step.defined() ? static_cast<const int64_t*>(s.device_step.raw_data()) : nullptr;
  a.lr = s.lr;
  a.beta1 = s.beta1;
  a.beta2 = s.beta2;
  return a;
}

}  // namespace

void adam_update_(Tensor& param, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq,
                  const ops::AdamStep& s) {
  // tensor/ops.h has checked shapes, dtypes, devices, contiguity and the step.
  const char* op = s.decoupled ? "adamw_update_" : "adam_update_";
  require_float32(param, op, "parameter");
  const int64_t n = param.numel();
  if (n == 0) return;
  const Tensor g = grad.contiguous();
  const AdamScalars a = adam_scalars(s);
  launch_kernel(adam_kernel, grid_for(n), kThreads, 0, current_stream(), param.data<float>(), g.data<float>(),
                exp_avg.data<float>(), exp_avg_sq.data<float>(), n, a);
  CUDA_CHECK_LAUNCH();
}

void adam_update_multi_(const std::vector<ops::AdamTensors>& params, const ops::AdamStep& s) {
  // tensor/ops.h has checked every parameter and that they share a device and dtype.
  const char* op = s.decoupled ? "adamw_update_multi_" : "adam_update_multi_";
  const AdamScalars a = adam_scalars(s);
  std::vector<Tensor> keep;  // contiguous gradients, alive until their launch is queued
  keep.reserve(params.size());
  AdamBatch batch{};
  int count = 0;
  int64_t longest = 0;
  auto launch = [&] {
    if (count == 0) return;
    const dim3 grid(grid_for(longest), static_cast<unsigned>(count));
    launch_kernel(adam_multi_kernel, grid, kThreads, 0, current_stream(), batch, a);
    CUDA_CHECK_LAUNCH();
    batch = AdamBatch{};
    count = 0;
    longest = 0;
  };
  for (const ops::AdamTensors& t : params) {
    require_float32(*t.param, op, "parameter");
    const int64_t n = t.param->numel();
    if (n == 0) continue;
    keep.push_back(t.grad->contiguous());
    batch.p[count] = t.param->data<float>();
    batch.g[count] = keep.back().data<float>();
    batch.m[count] = t.exp_avg->data<float>();
    batch.v[count] = t.exp_avg_sq->data<float>();
    batch.n[count] = n;
    longest = std::max(longest, n);
    if (++count == kMultiTensors) launch();
  }
  launch();
}

void sgd_update_(Tensor& param, const Tensor& grad, Tensor& momentum_buffer, const ops::SgdStep& s) {
  require_float32(param, "sgd_update_", "parameter");
  const int64_t n = param.numel();
  if (n == 0) return;
  const Tensor g = grad.contiguous();
  SgdScalars a;
  a.has_wd = s.weight_decay != 0.0;
  a.has_momentum = s.momentum != 0.0;
  a.nesterov = s.nesterov;
  a.first = s.first;
  a.wd = static_cast<float>(s.weight_decay);
  a.mom = static_cast<float>(s.momentum);
  a.keep = static_cast<float>(1.0 - s.dampening);
  a.neg_lr = static_cast<float>(-s.lr);
  launch_kernel(sgd_kernel, grid_for(n), kThreads, 0, current_stream(), param.data<float>(), g.data<float>(),
                a.has_momentum ? momentum_buffer.data<float>() : nullptr, n, a);
  CUDA_CHECK_LAUNCH();
}

}  // namespace ladnn::cuda
