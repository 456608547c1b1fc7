// data/transforms.h — from a decoded image to the network's input: resize, augment, normalise.
//
// The pipeline is the LA-DNN paper's torchvision one,
//
//   Resize((S, S)) -> RandomAffine(shear, scale) -> RandomHorizontalFlip -> ToTensor -> Normalize,
//
// computed as ONE inverse-mapped bilinear sample per output pixel: for each pixel of the (S, S)
// output we undo the flip and the affine to find where it comes from in the resized image, and map
// that position to the source image as the resize would. The resized image is never materialised, so
// an augmented image is interpolated once, not twice.
//
// Resize semantics. The resize is bilinear with align_corners = false and NO antialiasing, exactly
// torch.nn.functional.interpolate(x, (S, S), mode='bilinear', align_corners=False) on the float image
// (= torchvision's Resize((S, S), antialias=False) on a float tensor): output pixel u samples the
// source at (u + 0.5) * in / S - 0.5, clamped below at 0, with the last pixel repeated at the far edge.
// It is NOT PIL's resize, which the LA-DNN code used (PIL images) and which low-pass filters when
// shrinking; CT slices here are 120 to 1,600 pixels a side, so downscaled images alias slightly more
// than under PIL. For pretrained-weight golden tests, compare against interpolate, not PIL.
//
// Augmentation geometry (applied to the (S, S) resized image, about its centre c = ((S-1)/2, (S-1)/2)
// in pixel-index coordinates, x to the right and y DOWN the rows):
//   p' = c + k * [[1, s], [0, 1]] * (p - c)         i.e. x' = x + s*y, y' = y, then both scaled by k,
// with k ~ U(0.8, 1.2) and s ~ U(-0.2, 0.2), then a left-right mirror with probability 0.5. Positions
// that map outside the resized image are filled with 0 (black, before normalisation, so they become
// -mean/std after it, as torchvision's fill=0 does).
//
// The shear convention — read this before comparing with another framework. `s` is a shear FACTOR
// (Keras' shear_range = 0.2: Keras up to 2.1 drew a shear angle θ in radians and used the matrix
// [[1, -sin θ], [0, cos θ]], i.e. a factor of about 0.2 for θ = 0.2). torchvision's
// RandomAffine(degrees=0, shear=0.2) reads 0.2 as DEGREES: a factor of tan(0.2°) = 0.0035, no visible
// shear at all — and that is what the LA-DNN reference code (Code/train.py) wrote. We follow the
// brief: a factor of 0.2, which is torchvision's shear = atan(0.2) = 11.3 degrees. (Which way a
// positive shear leans differs between libraries; the draw is symmetric, so training does not care.)
//
// Sampling and edges. The affine is sampled bilinearly (torchvision's RandomAffine defaults to
// nearest-neighbour). Inside the resized image's area (x, y in [-0.5, S - 0.5]) sampling clamps to the
// border pixels, as the resize does, so the identity augmentation samples exactly the plain resize's
// positions. Outside it the fill is used, giving a hard edge (torchvision's bilinear mode blends the
// fill over the one-pixel border).
#pragma once

#include <array>
#include <cstdint>

#include "data/image.h"
#include "tensor/random.h"
#include "tensor/tensor.h"

namespace ladnn::data {

/// Per-channel (v - mean) / std, applied after scaling pixels to [0, 1].
struct Normalize {
  std::array<float, 3> mean{0.485f, 0.456f, 0.406f};
  std::array<float, 3> std{0.229f, 0.224f, 0.225f};
  /// ImageNet statistics (torchvision's pretrained models expect these).
  static Normalize imagenet() { return {}; }
  /// mean 0, std 1: the output is the [0, 1] image itself.
  static Normalize none() { return {{0.f, 0.f, 0.f}, {1.f, 1.f, 1.f}}; }
};

/// One draw of the augmentation: the geometry applied to the (S, S) resized image.
struct Affine {
  float scale = 1.f;  // k: isotropic zoom about the centre, > 1 enlarges
  float shear = 0.f;  // s: shear factor, x' = x + s * y (y down, from the centre)
  bool flip = false;  // mirror left-right after the affine
  bool is_identity() const { return scale == 1.f && shear == 0.f && !flip; }
};

/// The ranges the augmentation draws from (the paper's values by default).
struct AugmentConfig {
  float shear_range = 0.2f;  // s ~ U(-shear_range, shear_range)
  float scale_min = 0.8f;    // k ~ U(scale_min, scale_max)
  float scale_max = 1.2f;
  float flip_probability = 0.5f;
};

/// Draws scale, then shear, then flip from `gen` (three uniform01 calls, always in that order).
Affine sample_affine(Generator& gen, const AugmentConfig& config = {});

/// Resizes `image` to (size, size), applies `affine` and `norm`, and writes the (3, size, size) float
/// CHW result to `out` (3 * size * size floats). The loader's kernel: no allocation.
void transform_into(const Image& image, int size, const Affine& affine, const Normalize& norm, float* out);

/// transform_into into a new (3, size, size) float32 tensor.
Tensor transform(const Image& image, int size = 224, const Affine& affine = {},
                 const Normalize& norm = Normalize::imagenet());

/// torchvision's ToTensor: the (3, H, W) float32 image with values p / 255 in [0, 1].
Tensor image_to_tensor(const Image& image);

/// F.interpolate(x, (out_h, out_w), mode='bilinear', align_corners=False), no antialias, for a float32
/// or float64 tensor of shape (C, H, W) or (N, C, H, W). The reference the fused transform is tested
/// against.
Tensor resize_bilinear(const Tensor& x, int64_t out_h, int64_t out_w);

}  // namespace ladnn::data
