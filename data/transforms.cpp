// data/transforms.cpp — the fused resize + affine + flip + normalise sampler, and the plain resize.
#include "data/transforms.h"

#include <algorithm>
#include <cmath>
#include <string>

namespace ladnn::data {

namespace {

// One axis of torch's bilinear (align_corners = false) source lookup: position `src` (already in source
// pixel-index coordinates) -> the two neighbours and the weight of the second. Negative positions clamp
// to 0 (torch's area_pixel_compute_source_index); at the far edge the last pixel is repeated.
struct Tap {
  int i0, i1;
  float l1;  // weight of i1; i0 gets 1 - l1
};

inline Tap tap(float src, int in) {
  if (src < 0.f) src = 0.f;
  int i0 = std::min(static_cast<int>(src), in - 1);  // src >= 0, so the cast floors
  Tap t;
  t.i0 = i0;
  t.i1 = i0 < in - 1 ? i0 + 1 : i0;
  t.l1 = src - static_cast<float>(i0);
  return t;
}

void check_image(const Image& image, const char* op) {
  check(image.channels == 3 && image.width >= 1 && image.height >= 1 &&
            image.pixels.size() == static_cast<size_t>(image.width) * image.height * 3,
        std::string(op) + ": expected a decoded RGB image, got " + std::to_string(image.width) + "x" +
            std::to_string(image.height) + "x" + std::to_string(image.channels) + " with " +
            std::to_string(image.pixels.size()) + " bytes");
}

template <typename T>
void resize_planes(const T* in, T* out, int64_t planes, int64_t h, int64_t w, int64_t oh, int64_t ow) {
  // Arithmetic in T, as torch's CPU kernel does (its opmath type is float for float32, double for float64).
  using acc = T;
  const acc sy = static_cast<acc>(h) / static_cast<acc>(oh);
  const acc sx = static_cast<acc>(w) / static_cast<acc>(ow);
  std::vector<int64_t> x0(ow), x1(ow);
  std::vector<acc> lx(ow);
  for (int64_t u = 0; u < ow; ++u) {
    acc src = sx * (static_cast<acc>(u) + acc(0.5)) - acc(0.5);
    if (src < 0) src = 0;
    x0[u] = std::min<int64_t>(static_cast<int64_t>(src), w - 1);
    x1[u] = x0[u] < w - 1 ? x0[u] + 1 : x0[u];
    lx[u] = src - static_cast<acc>(x0[u]);
  }
  for (int64_t p = 0; p < planes; ++p) {
    const T* plane = in + p * h * w;
    for (int64_t v = 0; v < oh; ++v) {
      acc src = sy * (static_cast<acc>(v) + acc(0.5)) - acc(0.5);
      if (src < 0) src = 0;
      int64_t y0 = std::min<int64_t>(static_cast<int64_t>(src), h - 1);
      int64_t y1 = y0 < h - 1 ? y0 + 1 : y0;
      acc ly = src - static_cast<acc>(y0);
      const T* r0 = plane + y0 * w;
      const T* r1 = plane + y1 * w;
      T* o = out + (p * oh + v) * ow;
      for (int64_t u = 0; u < ow; ++u) {
        acc l = lx[u];
        o[u] = (acc(1) - ly) * ((acc(1) - l) * r0[x0[u]] + l * r0[x1[u]]) +
               ly * ((acc(1) - l) * r1[x0[u]] + l * r1[x1[u]]);
      }
    }
  }
}

}  // namespace

Affine sample_affine(Generator& gen, const AugmentConfig& config) {
  check(config.scale_min > 0.f && config.scale_min <= config.scale_max,
        "sample_affine: need 0 < scale_min <= scale_max, got scale_min " + std::to_string(config.scale_min) +
            ", scale_max " + std::to_string(config.scale_max));
  check(config.shear_range >= 0.f,
        "sample_affine: shear_range must be >= 0, got " + std::to_string(config.shear_range));
  check(config.flip_probability >= 0.f && config.flip_probability <= 1.f,
        "sample_affine: flip_probability must be in [0, 1], got " + std::to_string(config.flip_probability));
  Affine a;
  const double u_scale = gen.uniform01();
  const double u_shear = gen.uniform01();
  const double u_flip = gen.uniform01();
  a.scale = static_cast<float>(config.scale_min + (config.scale_max - config.scale_min) * u_scale);
  a.shear = static_cast<float>(-config.shear_range + 2.0 * config.shear_range * u_shear);
  a.flip = u_flip < config.flip_probability;
  return a;
}

void transform_into(const Image& image, int size, const Affine& affine, const Normalize& norm, float* out) {
  check_image(image, "transform");
  check(size >= 1, "transform: size must be positive, got " + std::to_string(size));
  check(affine.scale > 0.f && std::isfinite(affine.scale) && std::isfinite(affine.shear),
        "transform: affine scale must be positive and finite, got scale " + std::to_string(affine.scale) +
            ", shear " + std::to_string(affine.shear));
  for (int c = 0; c < 3; ++c)
    check(norm.std[c] > 0.f, "transform: normalisation std must be positive, got " +
                                 std::to_string(norm.std[c]) + " for channel " + std::to_string(c));
  const int W = image.width, H = image.height;
  const uint8_t* px = image.pixels.data();
  // out = (v / 255 - mean) / std = v * a + b, with v the interpolated 0..255 value; the fill (v = 0) is b.
  float a[3], b[3];
  for (int c = 0; c < 3; ++c) {
    a[c] = 1.f / (255.f * norm.std[c]);
    b[c] = -norm.mean[c] / norm.std[c];
  }
  const float scale_x = static_cast<float>(W) / static_cast<float>(size);  // resize: source per output pixel
  const float scale_y = static_cast<float>(H) / static_cast<float>(size);
  const float centre = 0.5f * static_cast<float>(size - 1);
  const float inv_k = 1.f / affine.scale;
  const float s = affine.shear;
  const float lo = -0.5f, hi = static_cast<float>(size) - 0.5f;  // the resized image's area
  const size_t plane = static_cast<size_t>(size) * size;

  for (int v = 0; v < size; ++v) {
    const float dy = static_cast<float>(v) - centre;
    // Inverse of p' = c + k [[1, s], [0, 1]] (p - c): p = c + (1/k) [[1, -s], [0, 1]] (p' - c).
    // For k = 1, s = 0 this is exact in float (integers and half-integers below 2^23), so the identity
    // augmentation samples exactly where the plain resize does.
    const float y = centre + dy * inv_k;
    const bool row_inside = y >= lo && y <= hi;
    const Tap ty = tap((y + 0.5f) * scale_y - 0.5f, H);
    const float ly1 = ty.l1, ly0 = 1.f - ty.l1;
    const uint8_t* r0 = px + static_cast<size_t>(ty.i0) * W * 3;
    const uint8_t* r1 = px + static_cast<size_t>(ty.i1) * W * 3;
    for (int u = 0; u < size; ++u) {
      const size_t o = static_cast<size_t>(v) * size + u;
      const int uu = affine.flip ? size - 1 - u : u;  // the mirror is the last forward step: undo it first
      const float x = centre + (static_cast<float>(uu) - centre - s * dy) * inv_k;
      if (!row_inside || x < lo || x > hi) {
        for (int c = 0; c < 3; ++c) out[c * plane + o] = b[c];
        continue;
      }
      const Tap tx = tap((x + 0.5f) * scale_x - 0.5f, W);
      const float lx1 = tx.l1, lx0 = 1.f - tx.l1;
      const uint8_t* p00 = r0 + tx.i0 * 3;
      const uint8_t* p01 = r0 + tx.i1 * 3;
      const uint8_t* p10 = r1 + tx.i0 * 3;
      const uint8_t* p11 = r1 + tx.i1 * 3;
      for (int c = 0; c < 3; ++c) {
        const float val = ly0 * (lx0 * p00[c] + lx1 * p01[c]) + ly1 * (lx0 * p10[c] + lx1 * p11[c]);
        out[c * plane + o] = val * a[c] + b[c];
      }
    }
  }
}

Tensor transform(const Image& image, int size, const Affine& affine, const Normalize& norm) {
  check(size >= 1, "transform: size must be positive, got " + std::to_string(size));
  Tensor t = Tensor::empty({3, size, size}, DType::Float32);
  transform_into(image, size, affine, norm, t.data<float>());
  return t;
}

Tensor image_to_tensor(const Image& image) {
  check_image(image, "image_to_tensor");
  const int64_t W = image.width, H = image.height;
  Tensor t = Tensor::empty({3, H, W}, DType::Float32);
  float* o = t.data<float>();
  for (int64_t y = 0; y < H; ++y)
    for (int64_t x = 0; x < W; ++x)
      for (int64_t c = 0; c < 3; ++c)
        o[(c * H + y) * W + x] = static_cast<float>(image.pixels[(y * W + x) * 3 + c]) / 255.f;
  return t;
}

Tensor resize_bilinear(const Tensor& x, int64_t out_h, int64_t out_w) {
  check(x.defined(), "resize_bilinear: input is undefined");
  check(x.dim() == 3 || x.dim() == 4,
        "resize_bilinear: input must be (C, H, W) or (N, C, H, W), got " + shape_str(x.shape()));
  check(x.dtype() == DType::Float32 || x.dtype() == DType::Float64,
        std::string("resize_bilinear: input must be float32 or float64, got ") + dtype_name(x.dtype()));
  check(x.device().is_cpu(), "resize_bilinear: input must be on the CPU, got " + x.device().str());
  check(out_h >= 1 && out_w >= 1, "resize_bilinear: output size must be positive, got (" +
                                      std::to_string(out_h) + ", " + std::to_string(out_w) + ")");
  const int64_t h = x.size(-2), w = x.size(-1);
  check(h >= 1 && w >= 1, "resize_bilinear: input must have a non-empty image, got " + shape_str(x.shape()));
  Shape out_shape = x.shape();
  out_shape[out_shape.size() - 2] = out_h;
  out_shape[out_shape.size() - 1] = out_w;
  Tensor src = x.contiguous();
  Tensor out = Tensor::empty(out_shape, x.dtype());
  const int64_t planes = x.numel() / (h * w);
  if (x.dtype() == DType::Float32)
    resize_planes(src.data<float>(), out.data<float>(), planes, h, w, out_h, out_w);
  else
    resize_planes(src.data<double>(), out.data<double>(), planes, h, w, out_h, out_w);
  return out;
}

}  // namespace ladnn::data
