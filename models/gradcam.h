// models/gradcam.h — Grad-CAM++ and Grad-CAM: where a network looks when it scores one output.
//
// Chattopadhyay et al., "Grad-CAM++: Improved Visual Explanations for Deep Convolutional Networks"
// (arXiv 1710.11063); Selvaraju et al., "Grad-CAM" (arXiv 1610.02391). Both explain a scalar target
// y (a logit) by a weighted sum of the channels of one layer's map A (N, C, h, w), the weights read off
// the gradient g = dy/dA:
//
//   Grad-CAM    w_c = mean_ij g_cij
//   Grad-CAM++  α_cij = g² / (2 g² + S_c g³ + ε)        S_c = Σ_ab A_cab, g = g_cij, ε = 1e-6
//               α_cij = 0 where g_cij = 0
//               w_c   = Σ_ij α_cij · relu(g_cij)
//   both        cam   = relu(Σ_c w_c A_c)               (h, w), one per image
//
// The Grad-CAM++ α is the paper's closed form (its eq. 19) for an exponential of the score, written as
// pytorch-grad-cam writes it: the sum of the activations S_c is over the whole map and multiplies g³ at
// (i, j). The target must be a logit (before any sigmoid or softmax), as the closed form assumes.
// `AlphaNormalization::PerChannel` also divides each channel's α by its sum over (i, j) (a channel whose
// α sums to 0 is left as is), as the authors' own code does; the default, `None`, is pytorch-grad-cam's.
//
// Maps at the input's size (`upsample_cams`) follow pytorch-grad-cam's scale_cam_image exactly: per
// image, (1) m ← (m − min m) / (1e-7 + max(m − min m)); (2) bilinear resize with half-pixel centres and
// edge clamping — OpenCV's cv2.resize(INTER_LINEAR) on float32, which equals
// F.interpolate(mode='bilinear', align_corners=False) without antialiasing: output pixel u samples the
// map at (u + 0.5)·h/H − 0.5, clamped to [0, h − 1]; (3) the normalisation (1) again. A cam that is 0
// everywhere (no channel has a positive weighted response: the layer holds no evidence FOR the target)
// stays 0 everywhere after both normalisations, and so does a constant cam: an empty map, never a
// division by zero. Every other map ends with min 0 and max 1 − O(1e-7).
//
// Any model: compute the layer's map as a Variable that keeps its gradient (a leaf that requires one,
// or `retain_grad()`), build the targets from it, and call `layer_gradients` then `grad_cams`. The
// LA-DNN driver `explain` does this for the COVID and lesion logits, reusing one forward for all targets.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "autograd/variable.h"
#include "models/ladnn.h"
#include "tensor/tensor.h"

namespace ladnn {

enum class CamMethod {
  GradCamPlusPlus,  // "gradcampp"
  GradCam,          // "gradcam"
};
/// "gradcampp" | "gradcam"; throws naming the value otherwise.
CamMethod cam_method_by_name(const std::string& name);
/// "gradcampp" | "gradcam".
const char* cam_method_name(CamMethod method);
/// "Grad-CAM++" | "Grad-CAM" (for legends).
const char* cam_method_title(CamMethod method);

enum class AlphaNormalization {
  None,        // pytorch-grad-cam (the default)
  PerChannel,  // the authors' code: α_c /= Σ_ij α_cij
};

struct CamOptions {
  CamMethod method = CamMethod::GradCamPlusPlus;
  AlphaNormalization alpha = AlphaNormalization::None;  // Grad-CAM++ only
  double eps = 1e-6;                                    // Grad-CAM++ only: pytorch-grad-cam's ε
};

// ---- the core: from a map and its gradient to a cam (any model, any device; results on the CPU) ------

/// The channel weights w (N, C) of `activations` A (N, C, h, w) given `gradients` g = dy/dA (same shape).
/// Computed in float64; the result has A's dtype.
Tensor cam_weights(const Tensor& activations, const Tensor& gradients, const CamOptions& options = {});
/// relu(Σ_c w_c A_c): (N, h, w), not normalised, A's dtype.
Tensor cam_raw(const Tensor& activations, const Tensor& gradients, const CamOptions& options = {});
/// pytorch-grad-cam's per-image min-max: (m − min) / (1e-7 + max(m − min)), for cams (N, h, w).
Tensor normalize_cams(const Tensor& cams);
/// Normalise, bilinear-resize to (height, width), normalise again (see the header comment): (N, H, W).
Tensor upsample_cams(const Tensor& cams, int64_t height, int64_t width);

/// One target: the output Variable to differentiate and the seed gradient for it (same shape), so the
/// target is Σ seed · output. For a per-image scalar y_i the seed is 1 in y_i's element (or −1 to
/// explain "not y"): image i's gradient is then dy_i/dA_i, provided the images do not interact
/// (BatchNorm in eval mode).
struct CamTarget {
  Variable output;
  Tensor seed;
};

/// One backward per target, each with retain_graph (the forward is reused), returning the gradient
/// that reaches `layer` (N, C, h, w) — which must be a leaf that requires a gradient or a Variable
/// with retain_grad(). The layer's gradient is cleared before each target and after the last.
std::vector<Tensor> layer_gradients(Variable layer, const std::vector<CamTarget>& targets);

struct CamMaps {
  Tensor raw;   // (T, N, h, w) relu(Σ_c w_c A_c), not normalised
  Tensor maps;  // (T, N, H, W) upsampled and normalised to [0, 1]
};
/// Cams for T targets of the same map: `gradients[t]` has `activations`' shape.
CamMaps grad_cams(const Tensor& activations, const std::vector<Tensor>& gradients, int64_t height,
                  int64_t width, const CamOptions& options = {});

// ---- the LA-DNN driver ------------------------------------------------------------------------------

/// What to explain: the COVID logit, one lesion logit, or the negated COVID logit ("why not COVID").
enum class LadnnTarget { Covid, GGO, Csld, CrPa, AirBr, InSepThi, NotCovid };
/// "covid" | "GGO" | "Csld" | "CrPa" | "AirBr" | "InSepThi" | "not-covid"; throws listing them otherwise.
LadnnTarget ladnn_target_by_name(const std::string& name);
/// The name ladnn_target_by_name reads ("covid", "GGO", …, "not-covid").
std::string ladnn_target_name(LadnnTarget target);
/// For legends: "COVID", "GGO", …, "not COVID".
std::string ladnn_target_title(LadnnTarget target);
/// COVID then the five lesions: the columns of the explain grid (and `--target all`).
std::vector<LadnnTarget> ladnn_grid_targets();

/// The layer whose map is explained.
enum class CamLayer {
  Features,  // "features": the final map after norm5's ReLU — what the heads pool (default)
  Norm5,     // "norm5": before that ReLU — the output of `features`, what pytorch-grad-cam users hook
};
/// "features" | "norm5"; throws naming the value otherwise.
CamLayer cam_layer_by_name(const std::string& name);
const char* cam_layer_name(CamLayer layer);

struct ExplainConfig {
  CamOptions cam;
  CamLayer layer = CamLayer::Features;
};

/// Everything `explain` computed, on the CPU (float32).
struct Explanation {
  std::vector<LadnnTarget> targets;
  Tensor covid_logit;             // (N)
  Tensor lesion_logits;           // (N, 5)
  Tensor covid_prob;              // (N)    sigmoid
  Tensor lesion_prob;             // (N, 5) sigmoid
  Tensor activations;             // (N, C, h, w) the layer's map
  std::vector<Tensor> gradients;  // per target, (N, C, h, w)
  Tensor raw;                     // (T, N, h, w)
  Tensor maps;                    // (T, N, H, W) at the input's size, in [0, 1]
};

/// Explains `targets` for `images` (N, 3, H, W, normalised as the model expects): one forward of the
/// backbone without a graph, then the heads on the chosen layer's map held as a leaf, and one backward
/// per target with retain_graph — only the heads are walked again, never the backbone. Runs on the
/// model's device. The model is put in eval mode for the call (its previous mode is restored after) and
/// its parameters' gradients are neither computed nor touched. Throws under a NoGradGuard.
Explanation explain(LaDnn& model, const Tensor& images, const std::vector<LadnnTarget>& targets,
                    const ExplainConfig& config = {});

}  // namespace ladnn
