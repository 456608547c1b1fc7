// tensor/cpu/batchnorm.cpp — BatchNorm2d forward and backward on the CPU, as PyTorch computes them.
//
// Per channel c of x (N, C, H, W), with n = N*H*W values per channel:
//   mean_c = sum(x) / n,  var_c = sum((x - mean_c)^2) / n         (biased; two passes, for accuracy)
//   invstd_c = 1 / sqrt(var_c + eps),  y = (x - mean_c) * invstd_c * gamma_c + beta_c
// Training also updates the running statistics in place:
//   running_mean = (1 - m) * running_mean + m * mean_c
//   running_var  = (1 - m) * running_var  + m * var_c * n / (n - 1)  (unbiased, as PyTorch)
//
// Backward in training, with xhat = (x - mean) * invstd (mean and invstd depend on x):
//   dbeta = sum(dy),  dgamma = sum(dy * xhat)
//   dx = gamma * invstd * (dy - dbeta / n - xhat * dgamma / n)
// The two subtracted terms are the paths through the mean and through the variance. In eval mode the
// statistics are constants, so dx = dy * gamma * invstd.
//
// gamma/beta may be undefined (affine=False: gamma = 1, beta = 0); running stats may be undefined in
// training (track_running_stats=False). Statistics accumulate in double even for float32 input.
// batch_norm_batch_stats returns them (mean, var) as they are, and a training forward given them skips its
// own two passes: the same loops, so the same bits.
//
// Fused ReLU (BnAct::Relu): y = max(x * scale + shift, 0), computed from the same value the plain
// kernel writes, so it equals relu(batch_norm(x)) bit for bit. Backward with relu_y (the fused output)
// reads dy as 0 wherever relu_y <= 0, which is exactly relu_backward's gradient fed to the plain
// backward; both the sums and dx see the masked value.
// Every kernel works on one channel at a time, so channels run in parallel with no shared writes.
//
// Devices: the argument checks below are device-agnostic (plus "every operand on the input's device");
// CUDA tensors then go to cuda/batchnorm.cu (cuDNN or native, cuda/context.h's LADNN_BN switch).
#include <cmath>
#include <stdexcept>
#include <string>

#include "cuda/ops.h"
#include "tensor/ops.h"

namespace ladnn::ops {
namespace {

// Below this many elements the OpenMP fork/join costs more than the work.
constexpr int64_t kParallelMin = 1 << 15;

bool is_float(DType d) {
  return d == DType::Float32 || d == DType::Float64;
}

// Checks x and returns (N, C, H*W).
struct BnDims {
  int64_t N, C, HW;
};
BnDims check_bn_input(const std::string& op, const Tensor& x, const char* name = "input") {
  check(x.defined(), op + ": " + name + " is undefined");
  check(x.dim() == 4, op + ": " + name + " must be 4-D (N, C, H, W), got " + shape_str(x.shape()));
  check(is_float(x.dtype()), op + ": " + name + " must be float32 or float64, got " + dtype_name(x.dtype()));
  return {x.size(0), x.size(1), x.size(2) * x.size(3)};
}

// A per-channel vector (gamma, beta, running stats, saved stats): shape (C), x's dtype and device.
void check_channel_vector(const std::string& op, const char* name, const Tensor& t, const Tensor& x,
                          bool required) {
  if (!t.defined()) {
    check(!required, op + ": " + name + " is undefined");
    return;
  }
  check(t.dim() == 1 && t.size(0) == x.size(1), op + ": " + name + " must have shape (" +
                                                    std::to_string(x.size(1)) + ") for input " +
                                                    shape_str(x.shape()) + ", got " + shape_str(t.shape()));
  check(t.dtype() == x.dtype(),
        op + ": " + name + " is " + dtype_name(t.dtype()) + " but the input is " + dtype_name(x.dtype()));
  check(t.device() == x.device(),
        op + ": " + name + " is on " + t.device().str() + " but the input is on " + x.device().str());
}

// Per-channel batch statistics (batch_norm_batch_stats): (C, 2) float64 on x's device.
void check_batch_stats(const std::string& op, const char* name, const Tensor& t, const Tensor& x) {
  check(t.defined(), op + ": " + name + " is undefined");
  check(t.dim() == 2 && t.size(0) == x.size(1) && t.size(1) == 2,
        op + ": " + name + " must have shape (" + std::to_string(x.size(1)) +
            ", 2) (mean and variance per channel of input " + shape_str(x.shape()) + "), got " +
            shape_str(t.shape()));
  check(t.dtype() == DType::Float64, op + ": " + name + " must be float64, got " + dtype_name(t.dtype()));
  check(t.device() == x.device(),
        op + ": " + name + " is on " + t.device().str() + " but the input is on " + x.device().str());
}

// A training forward's arguments (batch_norm_forward_train, bn_avg_pool2d_train).
BnDims check_train_forward(const std::string& op, const Tensor& x, const Tensor& gamma, const Tensor& beta,
                           const Tensor& running_mean, const Tensor& running_var, const Tensor& batch_stats) {
  const BnDims d = check_bn_input(op, x);
  if (batch_stats.defined()) check_batch_stats(op, "batch_stats", batch_stats, x);
  check_channel_vector(op, "gamma", gamma, x, false);
  check_channel_vector(op, "beta", beta, x, false);
  check_channel_vector(op, "running_mean", running_mean, x, false);
  check_channel_vector(op, "running_var", running_var, x, false);
  check(d.N * d.HW > 1, op + ": expected more than 1 value per channel when training, got input of shape " +
                            shape_str(x.shape()));
  return d;
}

// batch_norm_forward_train's `fresh`: the last channels' statistics to compute into batch_stats first.
void check_fresh(const std::string& op, int64_t fresh, const Tensor& batch_stats, int64_t C) {
  if (fresh == 0) return;
  check(batch_stats.defined(), op + ": fresh = " + std::to_string(fresh) + " needs batch_stats to fill");
  check(fresh > 0 && fresh <= C, op + ": fresh = " + std::to_string(fresh) + " is not in [0, " +
                                     std::to_string(C) + "], the input's channels");
  check(batch_stats.is_contiguous(), op + ": fresh > 0 writes into batch_stats, which must be contiguous");
}

// Strided read/write access to a (C) vector, or a constant when it is undefined.
template <typename T>
struct ChannelVec {
  T* p = nullptr;
  int64_t stride = 0;
  double fallback = 0.0;
  ChannelVec(const Tensor& t, double value_if_undefined) : fallback(value_if_undefined) {
    if (t.defined()) {
      p = t.data<T>();
      stride = t.strides()[0];
    }
  }
  double get(int64_t c) const { return p ? static_cast<double>(p[c * stride]) : fallback; }
  void set(int64_t c, double v) const { p[c * stride] = static_cast<T>(v); }
  bool defined() const { return p != nullptr; }
};

// The written value: the normalised one, rectified when the ReLU is fused (NaN -> 0, as ops::relu).
template <typename T>
inline T activate(double v, bool relu) {
  const T t = static_cast<T>(v);
  return relu && !(t > 0) ? T(0) : t;
}

// Channel c of y = act(x * scale + shift): the map of every forward here (x's samples sN apart, y packed).
template <typename T>
void map_channel(const T* px, int64_t sN, T* py, int64_t c, int64_t N, int64_t C, int64_t HW, double scale,
                 double shift, bool relu) {
  for (int64_t i = 0; i < N; ++i) {
    const T* xp = px + i * sN + c * HW;
    T* yp = py + (i * C + c) * HW;
    for (int64_t k = 0; k < HW; ++k) yp[k] = activate<T>(xp[k] * scale + shift, relu);
  }
}

// The training forward's y = x * scale + shift per channel, from gamma, beta and the saved statistics
// as stored (rounded to T): the forward writes y with it and a backward recomputes the ReLU's zeros
// from x with it (this file builds with -ffp-contract=off: the same two roundings both times).
template <typename T>
inline std::pair<double, double> relu_scale_shift(double gamma, double beta, T mean, T invstd) {
  const double scale = gamma * static_cast<double>(invstd);
  return {scale, beta - static_cast<double>(mean) * scale};
}

// Channel c's batch mean and biased variance, two passes in double. x's samples are sN apart.
struct MeanVar {
  double mean, var;
};
template <typename T>
MeanVar channel_mean_var(const T* px, int64_t sN, int64_t N, int64_t HW, int64_t c) {
  const double n = static_cast<double>(N * HW);
  double sum = 0.0;
  for (int64_t i = 0; i < N; ++i) {
    const T* xp = px + i * sN + c * HW;
    for (int64_t k = 0; k < HW; ++k) sum += xp[k];
  }
  const double mean = sum / n;
  double sq = 0.0;
  for (int64_t i = 0; i < N; ++i) {
    const T* xp = px + i * sN + c * HW;
    for (int64_t k = 0; k < HW; ++k) {
      const double d = xp[k] - mean;
      sq += d * d;
    }
  }
  return {mean, sq / n};
}

// x sample-contiguous (its samples sN apart); `stats` (undefined: reduce x here) the (C, 2) float64
// [mean, var] rows of batch_norm_batch_stats.
template <typename T>
void forward_train_kernel(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                          const Tensor& running_mean, const Tensor& running_var, double momentum, double eps,
                          bool relu, const Tensor& stats, const BatchNormForward& out) {
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  const int64_t sN = N > 1 ? x.strides()[0] : C * HW;  // x sample-contiguous (a channel prefix read in place)
  const double n = static_cast<double>(N * HW);
  const T* px = x.data<T>();
  T* py = out.y.defined() ? out.y.data<T>() : nullptr;  // undefined: the statistics only (record_train)
  T* pmean = out.save_mean.data<T>();
  T* pinvstd = out.save_invstd.data<T>();
  const ChannelVec<T> g(gamma, 1.0), b(beta, 0.0), rm(running_mean, 0.0), rv(running_var, 0.0);
  const double* ps = stats.defined() ? stats.data<double>() : nullptr;
  const int64_t s0 = ps ? stats.strides()[0] : 0, s1 = ps ? stats.strides()[1] : 0;

#pragma omp parallel for schedule(static) if (N * C * HW >= kParallelMin)
  for (int64_t c = 0; c < C; ++c) {
    const MeanVar mv = ps ? MeanVar{ps[c * s0], ps[c * s0 + s1]} : channel_mean_var(px, sN, N, HW, c);
    const double mean = mv.mean, var = mv.var;
    const double invstd = 1.0 / std::sqrt(var + eps);
    // y = x * scale + shift folds the four per-element operations into two. scale and shift come from
    // the saved (T-rounded) statistics, so that a backward can redo the ReLU's decisions from x with
    // the same arithmetic (relu_scale_shift; BnReluFromX).
    const auto [scale, shift] = relu_scale_shift(g.get(c), b.get(c), static_cast<T>(mean), static_cast<T>(invstd));
    if (py) map_channel(px, sN, py, c, N, C, HW, scale, shift, relu);
    pmean[c] = static_cast<T>(mean);
    pinvstd[c] = static_cast<T>(invstd);
    if (rm.defined()) rm.set(c, (1.0 - momentum) * rm.get(c) + momentum * mean);
    if (rv.defined()) rv.set(c, (1.0 - momentum) * rv.get(c) + momentum * var * n / (n - 1.0));
  }
}

// x sample-contiguous (its samples sN apart), y contiguous.
template <typename T>
void forward_eval_kernel(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& running_mean,
                         const Tensor& running_var, double eps, bool relu, const Tensor& y) {
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  const int64_t sN = x.strides()[0];
  const T* px = x.data<T>();
  T* py = y.data<T>();
  const ChannelVec<T> g(gamma, 1.0), b(beta, 0.0), rm(running_mean, 0.0), rv(running_var, 1.0);

#pragma omp parallel for schedule(static) if (N * C * HW >= kParallelMin)
  for (int64_t c = 0; c < C; ++c) {
    const double invstd = 1.0 / std::sqrt(rv.get(c) + eps);
    const double scale = g.get(c) * invstd;
    const double shift = b.get(c) - rm.get(c) * scale;
    map_channel(px, sN, py, c, N, C, HW, scale, shift, relu);
  }
}

// One kernel for both modes: `mean`/`invstd` per channel come from the batch (training) or the running
// stats (eval); `through_stats` adds the terms for the statistics' dependence on x. `relu_y`, when
// defined (contiguous), masks dy: the gradient of the fused BatchNorm-ReLU.
template <typename T>
void backward_kernel(const Tensor& dy, const Tensor& x, const Tensor& gamma, const std::vector<double>& mean,
                     const std::vector<double>& invstd, bool through_stats, const Tensor& relu_y,
                     const BatchNormGrads& out, const Tensor& dx_into = Tensor(),
                     const BnReluFromX& relu_from_x = {}) {
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  const int64_t sN = N > 1 ? x.strides()[0] : C * HW;  // x sample-contiguous; dy, relu_y, dx contiguous
  // dx_into (sample-contiguous, samples sD apart) takes dx added in; otherwise out.dx is written.
  const bool add = dx_into.defined();
  const int64_t sD = add && N > 1 ? dx_into.strides()[0] : C * HW;
  const double n = static_cast<double>(N * HW);
  const T* px = x.data<T>();
  const T* pdy = dy.data<T>();
  T* pdx = add ? dx_into.data<T>() : out.dx.data<T>();
  T* pdgamma = out.dgamma.data<T>();
  T* pdbeta = out.dbeta.data<T>();
  const T* pmask = relu_y.defined() ? relu_y.data<T>() : nullptr;
  const ChannelVec<T> g(gamma, 1.0), beta(relu_from_x.beta, 0.0);
  const bool from_x = relu_from_x.on;

#pragma omp parallel for schedule(static) if (N * C * HW >= kParallelMin)
  for (int64_t c = 0; c < C; ++c) {
    const double mu = mean[c];
    const double is = invstd[c];
    // dy where the ReLU let the value through, else 0: the forward's y > 0, read or recomputed from x
    // (mean and invstd hold the saved T values exactly, so relu_scale_shift gives the forward's).
    const auto [scale, shift] =
        from_x ? relu_scale_shift(g.get(c), beta.get(c), static_cast<T>(mu), static_cast<T>(is))
               : std::pair<double, double>{0.0, 0.0};
    auto grad_at = [&](int64_t i, T xv) {
      if (pmask) return pmask[i] > 0 ? pdy[i] : T(0);
      if (from_x) return activate<T>(xv * scale + shift, true) > 0 ? pdy[i] : T(0);
      return pdy[i];
    };
    double sum_dy = 0.0, sum_dy_xmu = 0.0;  // sum(dy), sum(dy * (x - mean))
    for (int64_t i = 0; i < N; ++i) {
      const int64_t base = (i * C + c) * HW;
      const T* xp = px + i * sN + c * HW;
      for (int64_t k = 0; k < HW; ++k) {
        const double d = grad_at(base + k, xp[k]);
        sum_dy += d;
        sum_dy_xmu += d * (xp[k] - mu);
      }
    }
    pdbeta[c] = static_cast<T>(sum_dy);
    pdgamma[c] = static_cast<T>(sum_dy_xmu * is);
    const double k_dy = g.get(c) * is;
    // dx = k_dy * (dy - mean_dy - (x - mean) * proj); both terms vanish in eval mode.
    const double mean_dy = through_stats ? sum_dy / n : 0.0;
    const double proj = through_stats ? sum_dy_xmu * is * is / n : 0.0;
    for (int64_t i = 0; i < N; ++i) {
      const int64_t base = (i * C + c) * HW;
      const T* xp = px + i * sN + c * HW;
      if (add) {
        T* dp = pdx + i * sD + c * HW;
        for (int64_t k = 0; k < HW; ++k)
          dp[k] = dp[k] + static_cast<T>(k_dy * (grad_at(base + k, xp[k]) - mean_dy - (xp[k] - mu) * proj));
      } else {
        for (int64_t k = 0; k < HW; ++k)
          pdx[base + k] = static_cast<T>(k_dy * (grad_at(base + k, xp[k]) - mean_dy - (xp[k] - mu) * proj));
      }
    }
  }
}

void check_dy(const std::string& op, const Tensor& dy, const Tensor& x) {
  check_bn_input(op, dy, "grad_output");
  check(dy.shape() == x.shape(), op + ": grad_output has shape " + shape_str(dy.shape()) +
                                     " but the input has shape " + shape_str(x.shape()));
  check(dy.dtype() == x.dtype(), op + ": grad_output is " + std::string(dtype_name(dy.dtype())) +
                                     " but the input is " + dtype_name(x.dtype()));
  check(dy.device() == x.device(),
        op + ": grad_output is on " + dy.device().str() + " but the input is on " + x.device().str());
}

// relu_y, when given, is the fused forward's output: x's shape, dtype and device.
void check_relu_y(const std::string& op, const Tensor& relu_y, const Tensor& x) {
  if (!relu_y.defined()) return;
  check(relu_y.shape() == x.shape() && relu_y.dtype() == x.dtype() && relu_y.device() == x.device(),
        op + ": relu_y (the fused BatchNorm-ReLU output) must match the input " + shape_str(x.shape()) + " " +
            dtype_name(x.dtype()) + " on " + x.device().str() + ", got " + shape_str(relu_y.shape()) + " " +
            dtype_name(relu_y.dtype()) + " on " + relu_y.device().str());
}

std::vector<double> to_doubles(const Tensor& t) {
  return t.to_vector();
}

BatchNormGrads alloc_grads(const Tensor& x, bool with_dx = true) {
  const Shape c_shape{x.size(1)};
  return {with_dx ? Tensor::empty(x.shape(), x.dtype(), x.device()) : Tensor(),
          Tensor::empty(c_shape, x.dtype(), x.device()), Tensor::empty(c_shape, x.dtype(), x.device())};
}

// dx_into, when given: x's shape, dtype and device, samples each contiguous, no memory shared with the
// tensors the backward reads.
void check_dx_into(const std::string& op, const Tensor& dx_into, const Tensor& dy, const Tensor& x,
                   const Tensor& relu_y) {
  if (!dx_into.defined()) return;
  check(dx_into.shape() == x.shape() && dx_into.dtype() == x.dtype() && dx_into.device() == x.device(),
        op + ": dx_into must match the input " + shape_str(x.shape()) + " " + dtype_name(x.dtype()) + " on " +
            x.device().str() + ", got " + shape_str(dx_into.shape()) + " " + dtype_name(dx_into.dtype()) + " on " +
            dx_into.device().str());
  check(sample_contiguous(dx_into), op + ": dx_into must hold each sample's values contiguously (strides " +
                                        shape_str(dx_into.strides()) + ")");
  for (const Tensor* t : {&dy, &x, &relu_y})
    check(!t->defined() || !dx_into.shares_storage(*t),
          op + ": dx_into shares memory with an input of the backward; the gradient is added into it in place");
}

}  // namespace

bool sample_contiguous(const Tensor& x) {
  if (x.dim() != 4) return false;
  const Shape& s = x.shape();
  const Shape& st = x.strides();
  // A dim of size 1 is never stepped over, so its stride does not matter.
  return (s[3] == 1 || st[3] == 1) && (s[2] == 1 || st[2] == s[3]) && (s[1] == 1 || st[1] == s[2] * s[3]);
}

BatchNormForward batch_norm_forward_train(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                          Tensor& running_mean, Tensor& running_var, double momentum,
                                          double eps, BnAct act, const Tensor& batch_stats, int64_t fresh) {
  const std::string op = "batch_norm_forward_train";
  const BnDims d = check_train_forward(op, x, gamma, beta, running_mean, running_var, batch_stats);
  check_fresh(op, fresh, batch_stats, d.C);
  if (x.device().is_cuda())
    return cuda::batch_norm_forward_train(x, gamma, beta, running_mean, running_var, momentum, eps, act,
                                          batch_stats, fresh);
  if (fresh > 0)
    batch_norm_batch_stats_into(x.narrow(1, d.C - fresh, fresh), batch_stats.narrow(0, d.C - fresh, fresh));
  const Tensor xc = sample_contiguous(x) ? x : x.contiguous();
  const Shape c_shape{d.C};
  BatchNormForward out{Tensor::empty(x.shape(), x.dtype(), x.device()),
                       Tensor::empty(c_shape, x.dtype(), x.device()),
                       Tensor::empty(c_shape, x.dtype(), x.device()), act == BnAct::Relu};
  if (x.dtype() == DType::Float32)
    forward_train_kernel<float>(xc, gamma, beta, running_mean, running_var, momentum, eps, act == BnAct::Relu,
                                batch_stats, out);
  else
    forward_train_kernel<double>(xc, gamma, beta, running_mean, running_var, momentum, eps,
                                 act == BnAct::Relu, batch_stats, out);
  return out;
}

BatchNormForward batch_norm_record_train(const Tensor& x, Tensor& running_mean, Tensor& running_var,
                                         double momentum, double eps, BnAct act, const Tensor& batch_stats,
                                         int64_t fresh) {
  const std::string op = "batch_norm_record_train";
  check(batch_stats.defined(), op + ": batch_stats is undefined (the op records given statistics; "
                                    "batch_norm_forward_train reduces x itself)");
  const BnDims d = check_train_forward(op, x, Tensor(), Tensor(), running_mean, running_var, batch_stats);
  check_fresh(op, fresh, batch_stats, d.C);
  if (x.device().is_cuda())
    return cuda::batch_norm_record_train(x, running_mean, running_var, momentum, eps, act, batch_stats,
                                         fresh);
  if (fresh > 0)
    batch_norm_batch_stats_into(x.narrow(1, d.C - fresh, fresh), batch_stats.narrow(0, d.C - fresh, fresh));
  const Shape c_shape{d.C};
  // y undefined: forward_train_kernel records the statistics and maps nothing.
  BatchNormForward out{Tensor(), Tensor::empty(c_shape, x.dtype(), x.device()),
                       Tensor::empty(c_shape, x.dtype(), x.device()), act == BnAct::Relu};
  // (x's values are not read: the statistics are given)
  if (x.dtype() == DType::Float32)
    forward_train_kernel<float>(x, Tensor(), Tensor(), running_mean, running_var, momentum, eps, false,
                                batch_stats, out);
  else
    forward_train_kernel<double>(x, Tensor(), Tensor(), running_mean, running_var, momentum, eps, false,
                                 batch_stats, out);
  return out;
}

void batch_norm_batch_stats_into(const Tensor& x, const Tensor& out) {
  const std::string op = "batch_norm_batch_stats";
  const BnDims d = check_bn_input(op, x);
  check(d.N * d.HW > 0, op + ": no values per channel in input of shape " + shape_str(x.shape()));
  check_batch_stats(op, "out", out, x);
  check(out.is_contiguous(), op + ": out must be contiguous, got strides " + shape_str(out.strides()));
  if (x.device().is_cuda()) return cuda::batch_norm_batch_stats_into(x, out);
  const Tensor xc = sample_contiguous(x) ? x : x.contiguous();
  const int64_t sN = d.N > 1 ? xc.strides()[0] : d.C * d.HW;
  double* po = out.data<double>();
  auto run = [&](const auto* px) {
#pragma omp parallel for schedule(static) if (d.N * d.C * d.HW >= kParallelMin)
    for (int64_t c = 0; c < d.C; ++c) {
      const MeanVar mv = channel_mean_var(px, sN, d.N, d.HW, c);
      po[2 * c] = mv.mean;
      po[2 * c + 1] = mv.var;
    }
  };
  if (x.dtype() == DType::Float32)
    run(xc.data<float>());
  else
    run(xc.data<double>());
}

namespace {
// The fused training BatchNorm-ReLU-pools' arguments checked (the window too, in op's name), and the
// batch statistics they normalise with: given, or computed here. Either way the BatchNorm then runs the
// native arithmetic, so the backward may recompute the ReLU's mask from x (relu_from_x).
Tensor fused_pool_statistics(const std::string& op, const Tensor& x, const Tensor& gamma, const Tensor& beta,
                             const Tensor& running_mean, const Tensor& running_var, const Pool2dParams& p,
                             const Tensor& batch_stats) {
  check_train_forward(op, x, gamma, beta, running_mean, running_var, batch_stats);
  try {
    pool2d_output_shape(x.shape(), p);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(op + ": " + e.what());
  }
  return batch_stats.defined() ? batch_stats : batch_norm_batch_stats(x);
}
}  // namespace

BatchNormForward bn_avg_pool2d_train(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                     Tensor& running_mean, Tensor& running_var, double momentum, double eps,
                                     BnAct act, const Pool2dParams& p, const Tensor& batch_stats) {
  const Tensor stats =
      fused_pool_statistics("bn_avg_pool2d_train", x, gamma, beta, running_mean, running_var, p, batch_stats);
  if (x.device().is_cuda()) {
    BatchNormForward out;
    if (cuda::bn_avg_pool2d_train(x, gamma, beta, running_mean, running_var, momentum, eps, act, stats, p,
                                  out))
      return out;
  }
  BatchNormForward f =
      batch_norm_forward_train(x, gamma, beta, running_mean, running_var, momentum, eps, act, stats);
  f.y = avg_pool2d_forward(f.y, p);
  return f;
}

BnMaxPoolForward bn_max_pool2d_train(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                     Tensor& running_mean, Tensor& running_var, double momentum, double eps,
                                     BnAct act, const Pool2dParams& p, const Tensor& batch_stats) {
  const Tensor stats =
      fused_pool_statistics("bn_max_pool2d_train", x, gamma, beta, running_mean, running_var, p, batch_stats);
  if (x.device().is_cuda()) {
    BnMaxPoolForward out;
    if (cuda::bn_max_pool2d_train(x, gamma, beta, running_mean, running_var, momentum, eps, act, stats, p,
                                  out))
      return out;
  }
  BnMaxPoolForward f{
      batch_norm_forward_train(x, gamma, beta, running_mean, running_var, momentum, eps, act, stats),
      Tensor()};
  MaxPoolForward m = max_pool2d_forward(f.bn.y, p);
  f.bn.y = std::move(m.y);
  f.indices = std::move(m.indices);
  return f;
}

BatchNormGrads bn_max_pool2d_backward_train(const Tensor& dy, const Tensor& indices, const Tensor& x,
                                            const Tensor& gamma, const Tensor& beta, const Tensor& save_mean,
                                            const Tensor& save_invstd, BnAct act, const Pool2dParams& p) {
  const std::string op = "bn_max_pool2d_backward_train";
  check_bn_input(op, x);
  check(dy.defined(), op + ": grad_output is undefined");
  const Tensor dfull = max_pool2d_backward(dy, indices, x.shape(), p);
  return batch_norm_backward_train(dfull, x, gamma, save_mean, save_invstd, Tensor(), Tensor(),
                                   act == BnAct::Relu ? BnReluFromX{true, beta} : BnReluFromX{});
}

BatchNormGrads bn_avg_pool2d_backward_train(const Tensor& dy, const Tensor& x, const Tensor& gamma,
                                            const Tensor& beta, const Tensor& save_mean,
                                            const Tensor& save_invstd, BnAct act, const Pool2dParams& p) {
  const std::string op = "bn_avg_pool2d_backward_train";
  check_bn_input(op, x);
  check(dy.defined(), op + ": grad_output is undefined");
  // (avg_pool2d_backward checks dy against the window's output shape on x; the BatchNorm backward the rest)
  if (dy.device().is_cuda() && x.device().is_cuda() && dy.shape() == pool2d_output_shape(x.shape(), p)) {
    check_channel_vector(op, "gamma", gamma, x, false);
    check_channel_vector(op, "beta", beta, x, false);
    check_channel_vector(op, "save_mean", save_mean, x, true);
    check_channel_vector(op, "save_invstd", save_invstd, x, true);
    BatchNormGrads out;
    if (cuda::bn_avg_pool2d_backward_train(dy, x, gamma, beta, save_mean, save_invstd, act, p, out))
      return out;
  }
  const Tensor dfull = avg_pool2d_backward(dy, x.shape(), p);
  return batch_norm_backward_train(dfull, x, gamma, save_mean, save_invstd, Tensor(), Tensor(),
                                   act == BnAct::Relu ? BnReluFromX{true, beta} : BnReluFromX{});
}

Tensor batch_norm_batch_stats(const Tensor& x) {
  check(x.defined() && x.dim() == 4, "batch_norm_batch_stats: input must be 4-D (N, C, H, W), got " +
                                         (x.defined() ? shape_str(x.shape()) : std::string("undefined")));
  Tensor out = Tensor::empty({x.size(1), 2}, DType::Float64, x.device());
  batch_norm_batch_stats_into(x, out);
  return out;
}

Tensor batch_norm_forward_eval(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                               const Tensor& running_mean, const Tensor& running_var, double eps, BnAct act) {
  const std::string op = "batch_norm_forward_eval";
  check_bn_input(op, x);
  check_channel_vector(op, "gamma", gamma, x, false);
  check_channel_vector(op, "beta", beta, x, false);
  check_channel_vector(op, "running_mean", running_mean, x, true);
  check_channel_vector(op, "running_var", running_var, x, true);
  if (x.device().is_cuda())
    return cuda::batch_norm_forward_eval(x, gamma, beta, running_mean, running_var, eps, act);
  const Tensor xc = sample_contiguous(x) ? x : x.contiguous();
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (x.dtype() == DType::Float32)
    forward_eval_kernel<float>(xc, gamma, beta, running_mean, running_var, eps, act == BnAct::Relu, y);
  else
    forward_eval_kernel<double>(xc, gamma, beta, running_mean, running_var, eps, act == BnAct::Relu, y);
  return y;
}

Tensor batch_norm_map_saved(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& save_mean,
                            const Tensor& save_invstd, BnAct act) {
  const std::string op = "batch_norm_map_saved";
  check_bn_input(op, x);
  check_channel_vector(op, "gamma", gamma, x, false);
  check_channel_vector(op, "beta", beta, x, false);
  check_channel_vector(op, "save_mean", save_mean, x, true);
  check_channel_vector(op, "save_invstd", save_invstd, x, true);
  if (x.device().is_cuda()) return cuda::batch_norm_map_saved(x, gamma, beta, save_mean, save_invstd, act);
  const Tensor xc = sample_contiguous(x) ? x : x.contiguous();
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  auto run = [&](auto zero) {
    using T = decltype(zero);
    const int64_t N = xc.size(0), C = xc.size(1), HW = xc.size(2) * xc.size(3);
    const int64_t sN = N > 1 ? xc.strides()[0] : C * HW;
    const T* px = xc.data<T>();
    T* py = y.data<T>();
    const ChannelVec<T> g(gamma, 1.0), b(beta, 0.0), m(save_mean, 0.0), is(save_invstd, 0.0);
    const bool relu = act == BnAct::Relu;
#pragma omp parallel for schedule(static) if (N * C * HW >= kParallelMin)
    for (int64_t c = 0; c < C; ++c) {
      // The forward's scale and shift from the same stored values (relu_scale_shift): its bits.
      const auto [scale, shift] =
          relu_scale_shift(g.get(c), b.get(c), static_cast<T>(m.get(c)), static_cast<T>(is.get(c)));
      map_channel(px, sN, py, c, N, C, HW, scale, shift, relu);
    }
  };
  if (x.dtype() == DType::Float32)
    run(0.0f);
  else
    run(0.0);
  return y;
}

BatchNormGrads batch_norm_backward_train(const Tensor& dy, const Tensor& x, const Tensor& gamma,
                                         const Tensor& save_mean, const Tensor& save_invstd, const Tensor& relu_y,
                                         const Tensor& dx_into, const BnReluFromX& relu_from_x) {
  const std::string op = "batch_norm_backward_train";
  check_bn_input(op, x);
  check_dy(op, dy, x);
  check_channel_vector(op, "gamma", gamma, x, false);
  check_channel_vector(op, "save_mean", save_mean, x, true);
  check_channel_vector(op, "save_invstd", save_invstd, x, true);
  check_relu_y(op, relu_y, x);
  check_dx_into(op, dx_into, dy, x, relu_y);
  if (relu_from_x.on) {
    check(!relu_y.defined(), op + ": the ReLU's mask comes from relu_y or from x (BnReluFromX), not both");
    check_channel_vector(op, "beta", relu_from_x.beta, x, false);
  }
  if (x.device().is_cuda())
    return cuda::batch_norm_backward_train(dy, x, gamma, save_mean, save_invstd, relu_y, dx_into, relu_from_x);
  const Tensor xc = sample_contiguous(x) ? x : x.contiguous(), dyc = dy.contiguous();
  const Tensor mask = relu_y.defined() ? relu_y.contiguous() : Tensor();
  BatchNormGrads out = alloc_grads(x, !dx_into.defined());
  const std::vector<double> mean = to_doubles(save_mean), invstd = to_doubles(save_invstd);
  if (x.dtype() == DType::Float32)
    backward_kernel<float>(dyc, xc, gamma, mean, invstd, true, mask, out, dx_into, relu_from_x);
  else
    backward_kernel<double>(dyc, xc, gamma, mean, invstd, true, mask, out, dx_into, relu_from_x);
  return out;
}

BatchNormGrads batch_norm_backward_eval(const Tensor& dy, const Tensor& x, const Tensor& gamma,
                                        const Tensor& running_mean, const Tensor& running_var, double eps,
                                        const Tensor& relu_y) {
  const std::string op = "batch_norm_backward_eval";
  check_bn_input(op, x);
  check_dy(op, dy, x);
  check_channel_vector(op, "gamma", gamma, x, false);
  check_channel_vector(op, "running_mean", running_mean, x, true);
  check_channel_vector(op, "running_var", running_var, x, true);
  check_relu_y(op, relu_y, x);
  if (x.device().is_cuda())
    return cuda::batch_norm_backward_eval(dy, x, gamma, running_mean, running_var, eps, relu_y);
  const Tensor xc = sample_contiguous(x) ? x : x.contiguous(), dyc = dy.contiguous();
  const Tensor mask = relu_y.defined() ? relu_y.contiguous() : Tensor();
  BatchNormGrads out = alloc_grads(x);
  const std::vector<double> mean = to_doubles(running_mean);
  std::vector<double> invstd = to_doubles(running_var);
  for (double& v : invstd) v = 1.0 / std::sqrt(v + eps);
  if (x.dtype() == DType::Float32)
    backward_kernel<float>(dyc, xc, gamma, mean, invstd, false, mask, out);
  else
    backward_kernel<double>(dyc, xc, gamma, mean, invstd, false, mask, out);
  return out;
}

}  // namespace ladnn::ops
