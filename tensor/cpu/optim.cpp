// tensor/cpu/optim.cpp — the fused optimizer updates of tensor/ops.h: one pass over a parameter does a
// whole Adam/AdamW or SGD step (optim/ calls these; cuda/optim.cu is the GPU twin).
//
// Each element goes through exactly the float operations torch.optim's single-tensor path performs, in
// the same order and the tensor's own precision (float for float32), scalars rounded to that precision
// first as PyTorch's kernels do:
//   Adam   g = g + wd * p                          (grad.add(param, alpha=wd); AdamW instead p = p * (1 - lr
//   wd))
//          m = lerp(m, g, 1 - b1)                  (torch's lerp: m + w (g - m) for |w| < 0.5, else g - (g -
//          m)(1 - w)) v = v * b2;  v = v + ((1 - b2) * g) * g (mul_, addcmul_) p = p + (-lr / bc1) * (m /
//          (sqrt(v) / sqrt(bc2) + eps))   (addcdiv_; bc_i = 1 - b_i^t in double)
//   SGD    d = g + wd * p;  buf = first ? d : buf * mom + (1 - dampening) * d
//          d = nesterov ? d + mom * buf : buf;  p = p + (-lr) * d
// so a fused step gives the same numbers as the unfused chain of ops it replaces, up to rounding order
// differences far below the optimizer tests' tolerances.
#include <cmath>
#include <string>

#include "cuda/ops.h"
#include "tensor/ops.h"

namespace ladnn::ops {
namespace {

void check_operand(const std::string& op, const Tensor& t, const Tensor& param, const char* name,
                   bool in_place) {
  check(t.defined(), op + ": " + name + " is undefined");
  check(t.shape() == param.shape(), op + ": " + name + " has shape " + shape_str(t.shape()) +
                                        " but the parameter has shape " + shape_str(param.shape()));
  check(t.dtype() == param.dtype(), op + ": " + name + " is " + dtype_name(t.dtype()) +
                                        " but the parameter is " + dtype_name(param.dtype()));
  check(t.device() == param.device(),
        op + ": " + name + " is on " + t.device().str() + " but the parameter is on " + param.device().str());
  if (in_place) check(t.is_contiguous(), op + ": " + name + " must be contiguous (it is updated in place)");
}

void check_param(const std::string& op, const Tensor& param) {
  check(param.defined(), op + ": parameter is undefined");
  check(param.dtype() == DType::Float32 || param.dtype() == DType::Float64,
        op + ": parameter must be float32 or float64, got " + dtype_name(param.dtype()));
  check(param.is_contiguous(), op + ": parameter must be contiguous (it is updated in place)");
}

template <typename T>
void adam_kernel(T* p, const T* g, T* m, T* v, int64_t n, const AdamStep& s) {
  const bool has_wd = s.weight_decay != 0.0;
  const T wd = static_cast<T>(s.weight_decay);
  const T decay = static_cast<T>(1.0 - s.lr * s.weight_decay);
  const T w = static_cast<T>(1.0 - s.beta1);  // lerp weight
  const bool small_w = std::abs(w) < T(0.5);
  const T b2 = static_cast<T>(s.beta2);
  const T one_minus_b2 = static_cast<T>(1.0 - s.beta2);
  const double bc1 = 1.0 - std::pow(s.beta1, static_cast<double>(s.step));
  const double bc2 = 1.0 - std::pow(s.beta2, static_cast<double>(s.step));
  const T bc2_sqrt = static_cast<T>(std::sqrt(bc2));
  const T neg_step = static_cast<T>(-(s.lr / bc1));
  const T eps = static_cast<T>(s.eps);
#pragma omp parallel for schedule(static) if (n >= (1 << 16))
  for (int64_t i = 0; i < n; ++i) {
    T pi = p[i], gi = g[i];
    if (has_wd) {
      if (s.decoupled)
        pi = pi * decay;
      else
        gi = gi + wd * pi;
    }
    const T mi = small_w ? m[i] + w * (gi - m[i]) : gi - (gi - m[i]) * (T(1) - w);
    T vi = v[i] * b2;
    vi = vi + one_minus_b2 * gi * gi;
    const T denom = std::sqrt(vi) / bc2_sqrt + eps;
    p[i] = pi + neg_step * (mi / denom);
    m[i] = mi;
    v[i] = vi;
  }
}

template <typename T>
void sgd_kernel(T* p, const T* g, T* buf, int64_t n, const SgdStep& s) {
  const bool has_wd = s.weight_decay != 0.0, has_momentum = s.momentum != 0.0;
  const T wd = static_cast<T>(s.weight_decay);
  const T mom = static_cast<T>(s.momentum);
  const T keep = static_cast<T>(1.0 - s.dampening);
  const T neg_lr = static_cast<T>(-s.lr);
#pragma omp parallel for schedule(static) if (n >= (1 << 16))
  for (int64_t i = 0; i < n; ++i) {
    T d = g[i];
    if (has_wd) d = d + wd * p[i];
    if (has_momentum) {
      const T b = s.first ? d : buf[i] * mom + keep * d;
      buf[i] = b;
      d = s.nesterov ? d + mom * b : b;
    }
    p[i] = p[i] + neg_lr * d;
  }
}

}  // namespace

namespace {
void check_adam(const std::string& op, const Tensor& param, const Tensor& grad, const Tensor& exp_avg,
                const Tensor& exp_avg_sq, const AdamStep& s) {
  check_param(op, param);
  check_operand(op, grad, param, "gradient", false);
  check_operand(op, exp_avg, param, "exp_avg", true);
  check_operand(op, exp_avg_sq, param, "exp_avg_sq", true);
  check(s.step >= 1, op + ": step must be >= 1 (counted from 1), got " + std::to_string(s.step));
  if (s.device_step.defined()) {
    check(param.device().is_cuda(), op + ": device_step is for parameters on the GPU (CUDA graphs)");
    check(s.device_step.dtype() == DType::Int64 && s.device_step.numel() == 1 &&
              s.device_step.device() == param.device(),
          op + ": device_step must be one Int64 element on the parameter's device");
  }
}
}  // namespace

void adam_update_(Tensor& param, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq, const AdamStep& s) {
  check_adam(s.decoupled ? "adamw_update_" : "adam_update_", param, grad, exp_avg, exp_avg_sq, s);
  if (param.device().is_cuda()) return cuda::adam_update_(param, grad, exp_avg, exp_avg_sq, s);
  const Tensor g = grad.contiguous();
  if (param.dtype() == DType::Float32)
    adam_kernel<float>(param.data<float>(), g.data<float>(), exp_avg.data<float>(), exp_avg_sq.data<float>(),
                       param.numel(), s);
  else
    adam_kernel<double>(param.data<double>(), g.data<double>(), exp_avg.data<double>(),
                        exp_avg_sq.data<double>(), param.numel(), s);
}

void adam_update_multi_(const std::vector<AdamTensors>& params, const AdamStep& s) {
  const std::string op = s.decoupled ? "adamw_update_multi_" : "adam_update_multi_";
  if (params.empty()) return;
  for (std::size_t i = 0; i < params.size(); ++i) {
    const AdamTensors& t = params[i];
    check(t.param && t.grad && t.exp_avg && t.exp_avg_sq, op + ": entry " + std::to_string(i) + " has a null tensor");
    check_adam(op + " (parameter " + std::to_string(i) + ")", *t.param, *t.grad, *t.exp_avg, *t.exp_avg_sq, s);
    check(t.param->device() == params[0].param->device() && t.param->dtype() == params[0].param->dtype(),
          op + ": parameter " + std::to_string(i) + " is " + dtype_name(t.param->dtype()) + " on " +
              t.param->device().str() + ", parameter 0 " + dtype_name(params[0].param->dtype()) + " on " +
              params[0].param->device().str() + "; one call takes one device and dtype");
  }
  if (params[0].param->device().is_cuda()) return cuda::adam_update_multi_(params, s);
  // The CPU has no launches to save: one pass per parameter, as adam_update_.
  for (const AdamTensors& t : params) adam_update_(*t.param, *t.grad, *t.exp_avg, *t.exp_avg_sq, s);
}

void sgd_update_(Tensor& param, const Tensor& grad, Tensor& momentum_buffer, const SgdStep& s) {
  const std::string op = "sgd_update_";
  check_param(op, param);
  check_operand(op, grad, param, "gradient", false);
  if (s.momentum != 0.0) check_operand(op, momentum_buffer, param, "momentum_buffer", true);
  if (param.device().is_cuda()) return cuda::sgd_update_(param, grad, momentum_buffer, s);
  const Tensor g = grad.contiguous();
  const bool m = s.momentum != 0.0;
  if (param.dtype() == DType::Float32)
    sgd_kernel<float>(param.data<float>(), g.data<float>(), m ? momentum_buffer.data<float>() : nullptr,
                      param.numel(), s);
  else
    sgd_kernel<double>(param.data<double>(), g.data<double>(), m ? momentum_buffer.data<double>() : nullptr,
                       param.numel(), s);
}

}  // namespace ladnn::ops
