// models/gradcam.cpp — Grad-CAM++ / Grad-CAM and the LA-DNN driver (see gradcam.h).
//
// The cam arithmetic runs on the CPU in float64: the map of the explained layer is small (1664 x 7 x 7
// per image for DenseNet-169 at 224), so copying it and its gradient off the device costs nothing next
// to the forward and backward that produced them — pytorch-grad-cam does the same in numpy.
#include "models/gradcam.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "autograd/functions.h"
#include "data/transforms.h"
#include "tensor/ops.h"

namespace ladnn {

// ---- names ---------------------------------------------------------------------------------------------

CamMethod cam_method_by_name(const std::string& name) {
  if (name == "gradcampp") return CamMethod::GradCamPlusPlus;
  if (name == "gradcam") return CamMethod::GradCam;
  throw std::invalid_argument("grad-cam: unknown method '" + name + "' (choose gradcampp or gradcam)");
}

const char* cam_method_name(CamMethod method) {
  return method == CamMethod::GradCamPlusPlus ? "gradcampp" : "gradcam";
}

const char* cam_method_title(CamMethod method) {
  return method == CamMethod::GradCamPlusPlus ? "Grad-CAM++" : "Grad-CAM";
}

namespace {
struct TargetName {
  LadnnTarget target;
  const char* name;
  const char* title;
};
constexpr TargetName kTargetNames[] = {
    {LadnnTarget::Covid, "covid", "COVID"},
    {LadnnTarget::GGO, "GGO", "GGO"},
    {LadnnTarget::Csld, "Csld", "Csld"},
    {LadnnTarget::CrPa, "CrPa", "CrPa"},
    {LadnnTarget::AirBr, "AirBr", "AirBr"},
    {LadnnTarget::InSepThi, "InSepThi", "InSepThi"},
    {LadnnTarget::NotCovid, "not-covid", "not COVID"},
};

const TargetName& target_entry(LadnnTarget target) {
  for (const TargetName& t : kTargetNames)
    if (t.target == target) return t;
  throw std::invalid_argument("grad-cam: unknown LA-DNN target");
}

/// The lesion head's column of a lesion target, or -1 for the COVID targets.
int lesion_index(LadnnTarget target) {
  switch (target) {
    case LadnnTarget::GGO:
      return 0;
    case LadnnTarget::Csld:
      return 1;
    case LadnnTarget::CrPa:
      return 2;
    case LadnnTarget::AirBr:
      return 3;
    case LadnnTarget::InSepThi:
      return 4;
    default:
      return -1;
  }
}
}  // namespace

LadnnTarget ladnn_target_by_name(const std::string& name) {
  for (const TargetName& t : kTargetNames)
    if (name == t.name) return t.target;
  std::string all;
  for (const TargetName& t : kTargetNames) all += std::string(all.empty() ? "" : ", ") + t.name;
  throw std::invalid_argument("grad-cam: unknown target '" + name + "' (choose " + all + ")");
}

std::string ladnn_target_name(LadnnTarget target) {
  return target_entry(target).name;
}
std::string ladnn_target_title(LadnnTarget target) {
  return target_entry(target).title;
}

std::vector<LadnnTarget> ladnn_grid_targets() {
  return {LadnnTarget::Covid, LadnnTarget::GGO,   LadnnTarget::Csld,
          LadnnTarget::CrPa,  LadnnTarget::AirBr, LadnnTarget::InSepThi};
}

CamLayer cam_layer_by_name(const std::string& name) {
  if (name == "features") return CamLayer::Features;
  if (name == "norm5") return CamLayer::Norm5;
  throw std::invalid_argument("grad-cam: unknown layer '" + name + "' (choose features or norm5)");
}

const char* cam_layer_name(CamLayer layer) {
  return layer == CamLayer::Features ? "features" : "norm5";
}

// ---- the core ------------------------------------------------------------------------------------------

namespace {
void check_float(const Tensor& t, const char* op, const char* what) {
  check(t.defined(), std::string(op) + ": " + what + " is undefined");
  check(t.dtype() == DType::Float32 || t.dtype() == DType::Float64,
        std::string(op) + ": " + what + " must be float32 or float64, got " + dtype_name(t.dtype()));
}

void check_map_and_grad(const Tensor& a, const Tensor& g, const char* op) {
  check_float(a, op, "activations");
  check_float(g, op, "gradients");
  check(a.dim() == 4 && a.numel() > 0,
        std::string(op) + ": activations must be a non-empty (N, C, h, w) map, got " + shape_str(a.shape()));
  check(g.shape() == a.shape(), std::string(op) + ": gradients " + shape_str(g.shape()) +
                                    " must have the activations' shape " + shape_str(a.shape()));
}

/// A contiguous float64 CPU copy (or view) of `t`.
Tensor host_f64(const Tensor& t) {
  return t.to(Device::cpu()).to(DType::Float64).contiguous();
}
}  // namespace

namespace {
/// The weights (N, C) in float64 from float64 CPU copies of A and g (cam_weights without the final cast).
Tensor weights_f64(const Tensor& a, const Tensor& g, const CamOptions& options) {
  const int64_t n = a.size(0), c = a.size(1), hw = a.size(2) * a.size(3);
  Tensor w = Tensor::empty({n, c}, DType::Float64);
  const double* ap = a.data<double>();
  const double* gp = g.data<double>();
  double* wp = w.data<double>();
  std::vector<double> alpha(static_cast<size_t>(hw));
  for (int64_t k = 0; k < n * c; ++k) {
    const double* ak = ap + k * hw;  // one channel of one image: (h*w)
    const double* gk = gp + k * hw;
    if (options.method == CamMethod::GradCam) {
      double s = 0;
      for (int64_t i = 0; i < hw; ++i) s += gk[i];
      wp[k] = s / static_cast<double>(hw);
      continue;
    }
    double sum_a = 0;  // S_c: the whole channel's activation, multiplying g^3 at every (i, j)
    for (int64_t i = 0; i < hw; ++i) sum_a += ak[i];
    double sum_alpha = 0;
    for (int64_t i = 0; i < hw; ++i) {
      const double g1 = gk[i], g2 = g1 * g1, g3 = g2 * g1;
      alpha[i] = g1 == 0 ? 0.0 : g2 / (2 * g2 + sum_a * g3 + options.eps);
      sum_alpha += alpha[i];
    }
    // The authors' code divides by the sum, keeping a channel whose α sums to 0 as it is.
    const double scale =
        options.alpha == AlphaNormalization::PerChannel && sum_alpha != 0 ? 1.0 / sum_alpha : 1.0;
    double s = 0;
    for (int64_t i = 0; i < hw; ++i) s += alpha[i] * scale * std::max(gk[i], 0.0);
    wp[k] = s;
  }
  return w;
}
}  // namespace

Tensor cam_weights(const Tensor& activations, const Tensor& gradients, const CamOptions& options) {
  check_map_and_grad(activations, gradients, "cam_weights");
  check(options.eps >= 0, "cam_weights: eps must be >= 0, got " + std::to_string(options.eps));
  return weights_f64(host_f64(activations), host_f64(gradients), options).to(activations.dtype());
}

Tensor cam_raw(const Tensor& activations, const Tensor& gradients, const CamOptions& options) {
  check_map_and_grad(activations, gradients, "cam_weights");
  check(options.eps >= 0, "cam_weights: eps must be >= 0, got " + std::to_string(options.eps));
  const Tensor a = host_f64(activations);
  const Tensor w = weights_f64(a, host_f64(gradients), options);  // not rounded to A's dtype
  const int64_t n = a.size(0), c = a.size(1), h = a.size(2), wd = a.size(3), hw = h * wd;
  Tensor cam = Tensor::zeros({n, h, wd}, DType::Float64);
  const double* ap = a.data<double>();
  const double* wp = w.data<double>();
  double* out = cam.data<double>();
  for (int64_t i = 0; i < n; ++i) {
    double* o = out + i * hw;
    for (int64_t ch = 0; ch < c; ++ch) {
      const double wc = wp[i * c + ch];
      const double* src = ap + (i * c + ch) * hw;
      for (int64_t p = 0; p < hw; ++p) o[p] += wc * src[p];
    }
    for (int64_t p = 0; p < hw; ++p) o[p] = std::max(o[p], 0.0);
  }
  return cam.to(activations.dtype());
}

Tensor normalize_cams(const Tensor& cams) {
  check_float(cams, "normalize_cams", "cams");
  check(cams.dim() == 3 && cams.numel() > 0,
        "normalize_cams: cams must be a non-empty (N, h, w) tensor, got " + shape_str(cams.shape()));
  Tensor m = host_f64(cams).clone();
  const int64_t n = m.size(0), hw = m.size(1) * m.size(2);
  double* p = m.data<double>();
  for (int64_t i = 0; i < n; ++i) {
    double* img = p + i * hw;
    const double lo = *std::min_element(img, img + hw);
    for (int64_t j = 0; j < hw; ++j) img[j] -= lo;
    const double hi = *std::max_element(img, img + hw);
    // pytorch-grad-cam's 1e-7: a flat map (all 0 after subtracting its minimum) stays 0.
    for (int64_t j = 0; j < hw; ++j) img[j] /= 1e-7 + hi;
  }
  return m.to(cams.dtype());
}

Tensor upsample_cams(const Tensor& cams, int64_t height, int64_t width) {
  check(height >= 1 && width >= 1, "upsample_cams: output size must be positive, got (" +
                                       std::to_string(height) + ", " + std::to_string(width) + ")");
  Tensor normalized = normalize_cams(cams).to(DType::Float64);
  // (N, h, w) read as (C, H, W) planes: cv2.resize(INTER_LINEAR) = interpolate(align_corners=False).
  Tensor resized = data::resize_bilinear(normalized, height, width);
  return normalize_cams(resized).to(cams.dtype());
}

std::vector<Tensor> layer_gradients(Variable layer, const std::vector<CamTarget>& targets) {
  check(layer.defined() && layer.dim() == 4,
        "layer_gradients: the layer must be an (N, C, h, w) Variable, got " +
            (layer.defined() ? shape_str(layer.shape()) : std::string("an undefined one")));
  check(layer.requires_grad(),
        "layer_gradients: the layer does not require a gradient; make it a leaf "
        "with requires_grad or compute it from one");
  std::vector<Tensor> grads;
  for (size_t t = 0; t < targets.size(); ++t) {
    const CamTarget& target = targets[t];
    check(target.output.defined() && target.seed.defined(),
          "layer_gradients: target " + std::to_string(t) + " has no output or no seed");
    check(target.seed.shape() == target.output.shape(),
          "layer_gradients: target " + std::to_string(t) + "'s seed " + shape_str(target.seed.shape()) +
              " must have its output's shape " + shape_str(target.output.shape()));
    // Non-leaves keep their gradient only when asked; a leaf always does.
    if (!layer.is_leaf()) layer.retain_grad();
    layer.zero_grad();
    Tensor seed = target.seed.to(target.output.tensor().device()).to(target.output.dtype());
    Variable output = target.output;  // a handle: backward is non-const
    output.backward(seed, /*retain_graph=*/true);
    // No path from this target to the layer: its gradient is zero everywhere.
    grads.push_back(layer.has_grad() ? layer.grad()
                                     : Tensor::zeros(layer.shape(), layer.dtype(), layer.tensor().device()));
  }
  layer.zero_grad();
  return grads;
}

CamMaps grad_cams(const Tensor& activations, const std::vector<Tensor>& gradients, int64_t height,
                  int64_t width, const CamOptions& options) {
  check(!gradients.empty(), "grad_cams: no gradients (one per target is needed)");
  std::vector<Tensor> raws, maps;
  for (const Tensor& g : gradients) {
    Tensor raw = cam_raw(activations, g, options);                   // (N, h, w)
    maps.push_back(upsample_cams(raw, height, width).unsqueeze(0));  // (1, N, H, W)
    raws.push_back(raw.unsqueeze(0));                                // (1, N, h, w)
  }
  return {ops::cat(raws, 0), ops::cat(maps, 0)};
}

// ---- the LA-DNN driver ---------------------------------------------------------------------------------

namespace {
/// Eval mode for the call, the previous mode restored after (also on a throw).
class EvalModeGuard {
 public:
  explicit EvalModeGuard(Module& m) : module_(m), was_training_(m.is_training()) { m.eval(); }
  ~EvalModeGuard() { module_.train(was_training_); }
  EvalModeGuard(const EvalModeGuard&) = delete;
  EvalModeGuard& operator=(const EvalModeGuard&) = delete;

 private:
  Module& module_;
  bool was_training_;
};

/// Parameters stop requiring a gradient for the call, so a backward reaches only the explained layer
/// and never writes into the parameters' gradients; restored after (also on a throw).
class FrozenParameters {
 public:
  explicit FrozenParameters(std::vector<Variable> params) : params_(std::move(params)) {
    for (Variable& p : params_) {
      was_.push_back(p.requires_grad());
      p.set_requires_grad(false);
    }
  }
  ~FrozenParameters() {
    for (size_t i = 0; i < params_.size(); ++i) params_[i].set_requires_grad(was_[i]);
  }
  FrozenParameters(const FrozenParameters&) = delete;
  FrozenParameters& operator=(const FrozenParameters&) = delete;

 private:
  std::vector<Variable> params_;
  std::vector<bool> was_;
};
}  // namespace

Explanation explain(LaDnn& model, const Tensor& images, const std::vector<LadnnTarget>& targets,
                    const ExplainConfig& config) {
  check(images.defined() && images.dim() == 4 && images.size(1) == 3 && images.numel() > 0,
        "explain: images must be (N, 3, H, W), got " +
            (images.defined() ? shape_str(images.shape()) : std::string("an undefined tensor")));
  check(!targets.empty(), "explain: no targets to explain");
  check(grad_enabled(),
        "explain: called with grad mode off (inside a NoGradGuard); Grad-CAM needs "
        "the heads' graph to differentiate");
  std::vector<Variable> params = model.parameters();
  check(!params.empty(), "explain: the model has no parameters");
  const Device device = params.front().tensor().device();
  const DType dtype = params.front().dtype();
  const int64_t n = images.size(0), height = images.size(2), width = images.size(3);

  EvalModeGuard eval(model);
  FrozenParameters frozen(std::move(params));

  // One forward of the backbone, without a graph: nothing below the explained layer is differentiated.
  Tensor fmap;  // (N, F, h, w) after norm5
  {
    NoGradGuard no_grad;
    fmap = model.features(Variable(images.to(device).to(dtype))).tensor();
  }
  // The explained map as a leaf that keeps its gradient; the heads are recorded on top of it.
  Variable layer(config.layer == CamLayer::Features ? ops::relu(fmap) : fmap, /*requires_grad=*/true);
  LaDnn::Output out = model.heads(config.layer == CamLayer::Features ? layer : relu(layer));

  std::vector<CamTarget> seeds;
  for (LadnnTarget t : targets) {
    const int k = lesion_index(t);
    if (k < 0) {
      const double sign = t == LadnnTarget::NotCovid ? -1.0 : 1.0;
      seeds.push_back({out.covid, Tensor::full({n, 1}, sign, dtype, out.covid.tensor().device())});
    } else {
      std::vector<double> onehot(static_cast<size_t>(n * 5), 0.0);
      for (int64_t i = 0; i < n; ++i) onehot[static_cast<size_t>(i * 5 + k)] = 1.0;
      seeds.push_back({out.lesions, Tensor::from_vector(onehot, {n, 5}, dtype).to(out.lesions.tensor().device())});
    }
  }
  std::vector<Tensor> grads = layer_gradients(layer, seeds);

  Explanation e;
  e.targets = targets;
  e.covid_logit = out.covid.tensor().to(Device::cpu()).reshape({n});
  e.lesion_logits = out.lesions.tensor().to(Device::cpu()).contiguous();
  e.covid_prob = ops::sigmoid(e.covid_logit);
  e.lesion_prob = ops::sigmoid(e.lesion_logits);
  e.activations = layer.tensor().to(Device::cpu());
  for (Tensor& g : grads) e.gradients.push_back(g.to(Device::cpu()));
  CamMaps cams = grad_cams(e.activations, e.gradients, height, width, config.cam);
  e.raw = cams.raw;
  e.maps = cams.maps;
  return e;
}

}  // namespace ladnn
