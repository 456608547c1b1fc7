// tests/conv_bn_reference.h — ops::conv2d_bn_eval in float64 by plain loops, for the tests of the op
// (tests/conv2d_test.cpp), of its fused kernel on the CPU (tests/cuda_tile_emulation_test.cpp) and on
// the GPU (tests/cuda_fused_conv_test.cpp). It calls no op of the library, so it checks them.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "tensor/ops.h"
#include "tensor/tensor.h"

namespace ladnn::test {

struct ConvBnReference {
  Tensor y;      // (N, K, P, Q) float64
  Tensor scale;  // per element: what a float32 result's rounding error follows (|post scale| * sum |terms| +
                 // |y|)
};

/// One channel's eval BatchNorm: y = (x - mean) * gamma / sqrt(var + eps) + beta, then the activation.
struct BnChannel {
  double mean = 0, scale = 1, shift = 0;
  bool relu = false;
  double operator()(double v) const {
    const double y = (v - mean) * scale + shift;
    return relu ? (y > 0 ? y : 0.0) : y;
  }
};

inline std::vector<BnChannel> bn_channels(const ops::BnEval* bn, int64_t channels) {
  std::vector<BnChannel> out(static_cast<std::size_t>(channels));
  if (!bn) return out;
  const std::vector<double> mean = bn->running_mean.to_vector(), var = bn->running_var.to_vector();
  const std::vector<double> gamma = bn->gamma.defined() ? bn->gamma.to_vector() : std::vector<double>();
  const std::vector<double> beta = bn->beta.defined() ? bn->beta.to_vector() : std::vector<double>();
  for (int64_t c = 0; c < channels; ++c) {
    const std::size_t i = static_cast<std::size_t>(c);
    out[i].mean = mean[i];
    out[i].scale = (gamma.empty() ? 1.0 : gamma[i]) / std::sqrt(var[i] + bn->eps);
    out[i].shift = beta.empty() ? 0.0 : beta[i];
    out[i].relu = bn->act == ops::BnAct::Relu;
  }
  return out;
}

/// post(conv2d(pre(x), w)) with zero padding of the normalised map; any strides in, float64 out.
inline ConvBnReference conv_bn_eval_reference(const Tensor& x, const ops::BnEval* pre, const Tensor& w,
                                              const ops::Conv2dParams& p, const ops::BnEval* post) {
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t K = w.size(0), R = w.size(2), S = w.size(3);
  const int64_t P = (H + 2 * p.pad_h - R) / p.stride_h + 1, Q = (W + 2 * p.pad_w - S) / p.stride_w + 1;
  const std::vector<double> xv = x.contiguous().to_vector(), wv = w.contiguous().to_vector();
  const std::vector<BnChannel> in = bn_channels(pre, C), out = bn_channels(post, K);
  std::vector<double> t(xv.size());  // pre(x)
  for (std::size_t i = 0; i < xv.size(); ++i) t[i] = pre ? in[(i / (H * W)) % C](xv[i]) : xv[i];
  std::vector<double> y(static_cast<std::size_t>(N * K * P * Q)), sc(y.size());
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k)
      for (int64_t pp = 0; pp < P; ++pp)
        for (int64_t q = 0; q < Q; ++q) {
          double sum = 0, abs_sum = 0;
          for (int64_t c = 0; c < C; ++c)
            for (int64_t r = 0; r < R; ++r)
              for (int64_t s = 0; s < S; ++s) {
                const int64_t ih = pp * p.stride_h - p.pad_h + r, iw = q * p.stride_w - p.pad_w + s;
                if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
                const double term = wv[((k * C + c) * R + r) * S + s] * t[((n * C + c) * H + ih) * W + iw];
                sum += term;
                abs_sum += std::fabs(term);
              }
          const std::size_t i = static_cast<std::size_t>(((n * K + k) * P + pp) * Q + q);
          y[i] = post ? out[static_cast<std::size_t>(k)](sum) : sum;
          sc[i] =
              (post ? std::fabs(out[static_cast<std::size_t>(k)].scale) : 1.0) * abs_sum + std::fabs(y[i]);
        }
  return {Tensor::from_vector(y, {N, K, P, Q}, DType::Float64),
          Tensor::from_vector(sc, {N, K, P, Q}, DType::Float64)};
}

/// A BatchNorm with random statistics and affine parameters of `channels` (var in [0.5, 2]).
inline ops::BnEval random_bn_eval(int64_t channels, ops::BnAct act, Generator& gen,
                                  DType dtype = DType::Float32, bool affine = true) {
  ops::BnEval bn;
  if (affine) {
    bn.gamma = Tensor::uniform({channels}, 0.5, 1.5, gen, dtype);
    bn.beta = Tensor::uniform({channels}, -0.5, 0.5, gen, dtype);
  }
  bn.running_mean = Tensor::uniform({channels}, -0.3, 0.3, gen, dtype);
  bn.running_var = Tensor::uniform({channels}, 0.5, 2.0, gen, dtype);
  bn.eps = 1e-5;
  bn.act = act;
  return bn;
}

/// The same BatchNorm's tensors on another device.
inline ops::BnEval bn_eval_to(const ops::BnEval& bn, Device device) {
  ops::BnEval out = bn;
  for (Tensor* t : {&out.gamma, &out.beta, &out.running_mean, &out.running_var})
    if (t->defined()) *t = t->to(device);
  return out;
}

/// A convolution's backward passes in float64, by scattering each (dy element, weight tap) product —
/// the other order from the kernels' gathers. value: dx (N, C, H, W) or dW (K, C, R, S); scale: the
/// sum of |products| behind each element (what its float32/TF32 rounding error follows).
struct ConvGradReference {
  Tensor value, scale;
};
inline ConvGradReference conv_backward_reference(const Tensor& dy, const Tensor& x_or_w, const Shape& x_shape,
                                                 const Shape& w_shape, const ops::Conv2dParams& p, bool weight) {
  const int64_t N = x_shape[0], C = x_shape[1], H = x_shape[2], W = x_shape[3];
  const int64_t K = w_shape[0], R = w_shape[2], S = w_shape[3], P = dy.size(2), Q = dy.size(3);
  const std::vector<double> dyv = dy.contiguous().to_vector(), ov = x_or_w.contiguous().to_vector();
  std::vector<double> v(static_cast<std::size_t>(weight ? K * C * R * S : N * C * H * W), 0.0), sc(v.size(), 0.0);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k)
      for (int64_t pp = 0; pp < P; ++pp)
        for (int64_t q = 0; q < Q; ++q) {
          const double d = dyv[static_cast<std::size_t>(((n * K + k) * P + pp) * Q + q)];
          for (int64_t c = 0; c < C; ++c)
            for (int64_t r = 0; r < R; ++r)
              for (int64_t s = 0; s < S; ++s) {
                const int64_t ih = pp * p.stride_h - p.pad_h + r, iw = q * p.stride_w - p.pad_w + s;
                if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
                const std::size_t wi = static_cast<std::size_t>(((k * C + c) * R + r) * S + s);
                const std::size_t xi = static_cast<std::size_t>(((n * C + c) * H + ih) * W + iw);
                const double term = d * ov[weight ? xi : wi];
                v[weight ? wi : xi] += term;
                sc[weight ? wi : xi] += std::fabs(term);
              }
        }
  const Shape out = weight ? w_shape : x_shape;
  return {Tensor::from_vector(v, out, DType::Float64), Tensor::from_vector(sc, out, DType::Float64)};
}

}  // namespace ladnn::test
