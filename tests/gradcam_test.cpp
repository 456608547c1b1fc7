// tests/gradcam_test.cpp — Grad-CAM++ / Grad-CAM (models/gradcam.h): the closed form on hand-made
// maps, the upsampling and normalisation conventions, the gradient plumbing, and pytorch-grad-cam itself
// as the reference (tests/golden/gradcam/, written by tools/make_gradcam_golden.py).
//
// Tolerances (metric of tests/golden_util.h): against pytorch-grad-cam, raw cams and the recorded map
// and gradient to 1e-4 (a float32 forward and backward through a DenseNet against PyTorch's, the same
// budget as tests/densenet_test.cpp; the fixture's own float32-vs-float64 floor is 2e-6), the final
// upsampled maps to 1e-3 (the figure; they are min-max normalised, so the raw error carries
// over unchanged plus the resize's float32 rounding). The cam arithmetic alone, fed the reference's
// own map and gradient, is held to 1e-5: pytorch-grad-cam computes it in float32 numpy, we in float64,
// over sums of at most 32 channels x 35 cells. Measured when written (worst element, that metric):
// activations 1.7e-6, gradients exact, logits 1.5e-7, raw cams 2.0e-6, maps 1.3e-6; the cam
// arithmetic on the reference's own map and gradient 2.9e-7.
#include "models/gradcam.h"

#include <gtest/gtest.h>

#include "tests/test_util.h"

#include <cmath>
#include <string>

#include "autograd/functions.h"
#include "cuda/runtime.h"
#include "tests/cuda_test_util.h"
#include "tensor/safetensors.h"
#include "tests/golden_util.h"

namespace ladnn {
namespace {


Tensor f64(const std::vector<double>& v, const Shape& s) {
  return Tensor::from_vector(v, s, DType::Float64);
}

/// t[k] along dim 0, as a contiguous tensor of the remaining dims.
Tensor pick(const Tensor& t, int64_t k) {
  return t.narrow(0, k, 1).contiguous().reshape(Shape(t.shape().begin() + 1, t.shape().end()));
}

// ---- the closed form -----------------------------------------------------------------------------------

TEST(GradCamCore, PlusPlusConstantGradientHandComputed) {
  // One channel, 2x2, g = 0.5 everywhere, A sums to S = 2:
  //   α = 0.25 / (2*0.25 + 2*0.125 + 1e-6) = 0.25 / 0.750001,   w = 4 * α * 0.5 = 0.5 / 0.750001.
  Tensor a = f64({0.5, 1.0, 0.0, 0.5}, {1, 1, 2, 2});
  Tensor g = Tensor::full({1, 1, 2, 2}, 0.5, DType::Float64);
  const double w = 0.5 / 0.750001;
  EXPECT_NEAR(cam_weights(a, g).item(), w, 1e-15);
  std::vector<double> cam = cam_raw(a, g).to_vector();
  ASSERT_EQ(cam.size(), 4u);
  EXPECT_NEAR(cam[0], w * 0.5, 1e-15);
  EXPECT_NEAR(cam[1], w * 1.0, 1e-15);
  EXPECT_EQ(cam[2], 0.0);
  // Normalising α per channel (the authors' code): α = 1/4 each, w = Σ α relu(g) = 0.5.
  CamOptions authors;
  authors.alpha = AlphaNormalization::PerChannel;
  EXPECT_NEAR(cam_weights(a, g, authors).item(), 0.5, 1e-15);
}

TEST(GradCamCore, PlusPlusMixedGradientsElementByElement) {
  // Channel 0: A = 1 2 3 4 (S = 10), g = 0.1 0 -0.2 0.3. Channel 1: A = -1 0 2 1 (S = 2), g = 0.2 0.2 0 -0.1.
  Tensor a = f64({1, 2, 3, 4, -1, 0, 2, 1}, {1, 2, 2, 2});
  Tensor g = f64({0.1, 0, -0.2, 0.3, 0.2, 0.2, 0, -0.1}, {1, 2, 2, 2});
  auto alpha = [](double gv, double s) {
    return gv == 0 ? 0.0 : gv * gv / (2 * gv * gv + s * gv * gv * gv + 1e-6);
  };
  // Only positive gradients contribute (the relu of eq. 7); a zero gradient has α = 0.
  const double w0 = alpha(0.1, 10) * 0.1 + alpha(0.3, 10) * 0.3;
  const double w1 = alpha(0.2, 2) * 0.2 * 2;
  std::vector<double> w = cam_weights(a, g).to_vector();
  EXPECT_NEAR(w[0], w0, 1e-15);
  EXPECT_NEAR(w[1], w1, 1e-15);
  // cam = relu(w0 A0 + w1 A1): the first cell (w0 - w1) is negative for these numbers -> 0.
  std::vector<double> cam = cam_raw(a, g).to_vector();
  const std::vector<double> a0 = {1, 2, 3, 4}, a1 = {-1, 0, 2, 1};
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(cam[i], std::max(0.0, w0 * a0[i] + w1 * a1[i]), 1e-15) << i;
  ASSERT_LT(w0 - w1, 0.0);
  EXPECT_EQ(cam[0], 0.0);

  // Per-channel normalisation: channel 0's α (0.1 and 0.3 cells; the -0.2 cell has α > 0 too but
  // relu(g) = 0 there) divided by their sum over all four cells.
  CamOptions authors;
  authors.alpha = AlphaNormalization::PerChannel;
  const double sum0 = alpha(0.1, 10) + alpha(-0.2, 10) + alpha(0.3, 10);
  EXPECT_NEAR(cam_weights(a, g, authors).to_vector()[0], w0 / sum0, 1e-14);
}

TEST(GradCamCore, PlusPlusZeroGradientChannelHasZeroWeight) {
  // g = 0 everywhere: the denominator would be S*0 + ε, the numerator 0 — α is 0 by definition, and a
  // channel whose α sums to 0 is left alone by the per-channel normalisation (no 0/0).
  Tensor a = f64({3, 1, 4, 1}, {1, 1, 2, 2});
  Tensor g = Tensor::zeros({1, 1, 2, 2}, DType::Float64);
  EXPECT_EQ(cam_weights(a, g).item(), 0.0);
  CamOptions authors;
  authors.alpha = AlphaNormalization::PerChannel;
  EXPECT_EQ(cam_weights(a, g, authors).item(), 0.0);
  for (double v : cam_raw(a, g).to_vector()) EXPECT_EQ(v, 0.0);
}

TEST(GradCamCore, GradCamWeightsAreMeanGradients) {
  Tensor a = f64({1, 2, 3, 4, 5, 6, 7, 8, 2, 2, 2, 2, 1, 1, 1, 1}, {2, 2, 2, 2});
  Tensor g = f64({0.1, 0.2, 0.3, 0.4, -1, -1, 0, 0, 4, 0, 0, 0, 1, 1, 1, -3}, {2, 2, 2, 2});
  CamOptions gc;
  gc.method = CamMethod::GradCam;
  std::vector<double> w = cam_weights(a, g, gc).to_vector();
  ASSERT_EQ(w.size(), 4u);
  EXPECT_NEAR(w[0], 0.25, 1e-15);
  EXPECT_NEAR(w[1], -0.5, 1e-15);
  EXPECT_NEAR(w[2], 1.0, 1e-15);
  EXPECT_NEAR(w[3], 0.0, 1e-15);
  // Image 0: 0.25*A0 - 0.5*A1 is negative everywhere -> all 0. Image 1: 1*2 + 0*1 = 2 everywhere.
  std::vector<double> cam = cam_raw(a, g, gc).to_vector();
  for (int i = 0; i < 4; ++i) EXPECT_EQ(cam[i], 0.0);
  for (int i = 4; i < 8; ++i) EXPECT_NEAR(cam[i], 2.0, 1e-15);
}

TEST(GradCamCore, KeepsDtypeAndBatchesImagesIndependently) {
  Generator gen(3);
  Tensor a = Tensor::uniform({3, 4, 3, 5}, 0, 2, gen), g = Tensor::uniform({3, 4, 3, 5}, -1, 1, gen);
  Tensor cam = cam_raw(a, g);
  EXPECT_EQ(cam.dtype(), DType::Float32);
  EXPECT_EQ(cam.shape(), (Shape{3, 3, 5}));
  for (int64_t i = 0; i < 3; ++i) {
    Tensor one = cam_raw(a.narrow(0, i, 1).contiguous(), g.narrow(0, i, 1).contiguous());
    EXPECT_EQ(ops::max_abs_diff(one, cam.narrow(0, i, 1).contiguous()), 0.0) << "image " << i;
  }
}

// ---- normalisation and upsampling ----------------------------------------------------------------------

TEST(GradCamMaps, NormalisationIsMinMaxWithPytorchGradCamsEpsilon) {
  Tensor m = f64({1, 3, 2, 5, /*image 2, all zero*/ 0, 0, 0, 0, /*constant*/ 7, 7, 7, 7}, {3, 2, 2});
  std::vector<double> n = normalize_cams(m).to_vector();
  // (m - 1) / (1e-7 + 4)
  EXPECT_NEAR(n[0], 0.0, 1e-15);
  EXPECT_NEAR(n[1], 2 / (4 + 1e-7), 1e-15);
  EXPECT_NEAR(n[3], 4 / (4 + 1e-7), 1e-15);
  // An all-zero cam and a constant one: 0 everywhere, no NaN.
  for (int i = 4; i < 12; ++i) EXPECT_EQ(n[i], 0.0) << i;
}

TEST(GradCamMaps, UpsamplingIsHalfPixelBilinearWithClampedEdges) {
  // One row [0, 1] to width 4: samples at (u + 0.5) * 2/4 - 0.5 = -0.25, 0.25, 0.75, 1.25, clamped to
  // [0, 1] -> 0, 0.25, 0.75, 1 (cv2.resize INTER_LINEAR = interpolate(align_corners=False)). The map
  // already spans [0, 1], so both normalisations keep it (up to their 1e-7).
  Tensor m = f64({0, 1}, {1, 1, 2});
  std::vector<double> up = upsample_cams(m, 1, 4).to_vector();
  const double expect[] = {0, 0.25, 0.75, 1};
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(up[i], expect[i], 1e-6) << i;

  // 2x2 -> 4x4 of a map that is linear in (x, y): m = 2x + 2y on the 2x2 grid, normalised to
  // (x + y) / 2. Bilinear sampling of a linear map is exact, so the output is (cx + cy) / 2 at the
  // clamped sample positions c = 0, 0.25, 0.75, 1 — reaching 0 and 1 at the corners.
  Tensor sq = f64({0, 2, 2, 4}, {1, 2, 2});
  Tensor up2 = upsample_cams(sq, 4, 4);
  EXPECT_EQ(up2.shape(), (Shape{1, 4, 4}));
  const double c[] = {0, 0.25, 0.75, 1};
  for (int64_t v = 0; v < 4; ++v)
    for (int64_t u = 0; u < 4; ++u) EXPECT_NEAR(up2.at({0, v, u}), (c[v] + c[u]) / 2, 1e-6) << v << "," << u;
  // Non-square and all-zero: stays 0.
  Tensor z = upsample_cams(Tensor::zeros({2, 3, 5}), 7, 11);
  EXPECT_EQ(z.shape(), (Shape{2, 7, 11}));
  EXPECT_EQ(z.dtype(), DType::Float32);
  for (double v : z.to_vector()) EXPECT_EQ(v, 0.0);
}

// ---- gradients -----------------------------------------------------------------------------------------

TEST(GradCamGradients, OneBackwardPerTargetReusingTheGraph) {
  // layer A (2, 1, 1, 2); outputs y = (A*A) summed per image, z = 3A summed per image.
  Variable a(f64({1, 2, 3, 4}, {2, 1, 1, 2}), true);
  Variable y = sum(a * a, {1, 2, 3});  // (2)
  Variable z = sum(mul_scalar(a, 3.0), {1, 2, 3});
  std::vector<Tensor> g = layer_gradients(a, {{y, f64({1, 1}, {2})}, {z, f64({1, -1}, {2})}});
  ASSERT_EQ(g.size(), 2u);
  const std::vector<double> gy = g[0].to_vector(), gz = g[1].to_vector();
  for (int i = 0; i < 4; ++i) EXPECT_DOUBLE_EQ(gy[i], 2.0 * (i + 1));  // not accumulated across targets
  EXPECT_EQ(gz, (std::vector<double>{3, 3, -3, -3}));
  EXPECT_FALSE(a.has_grad());  // cleared after the last target

  // A non-leaf layer keeps its gradient for the call.
  Variable x(f64({1, 2, 3, 4}, {1, 1, 2, 2}), true);
  Variable h = mul_scalar(x, 2.0);
  Variable out = sum(h * h);
  std::vector<Tensor> gh = layer_gradients(h, {{out, Tensor::ones({}, DType::Float64)}});
  EXPECT_EQ(gh[0].to_vector(), (std::vector<double>{4, 8, 12, 16}));  // 2h

  // A target that does not reach the layer: zeros.
  Variable other(f64({1}, {1}), true);
  std::vector<Tensor> g0 = layer_gradients(a, {{mul_scalar(other, 2.0), f64({1}, {1})}});
  for (double v : g0[0].to_vector()) EXPECT_EQ(v, 0.0);
}

std::shared_ptr<LaDnn> small_model(uint64_t seed, DType dtype) {
  Generator gen(seed);
  auto m = std::make_shared<LaDnn>(DenseNetConfig{4, {2, 2}, 8, 2, 0.0}, gen);
  // Random BN running statistics and affine parameters, so eval mode is not the identity.
  for (auto& [name, p] : m->named_parameters()) {
    if (p.dim() == 1) p.mutable_tensor().copy_(Tensor::uniform(p.shape(), 0.5, 1.5, gen));
  }
  for (auto& [name, b] : m->named_buffers()) {
    if (name.find("running_mean") != std::string::npos) b.copy_(Tensor::uniform(b.shape(), -0.2, 0.2, gen));
    if (name.find("running_var") != std::string::npos) b.copy_(Tensor::uniform(b.shape(), 0.5, 1.5, gen));
  }
  m->to(dtype);
  return m;
}

TEST(GradCamExplain, CutAtTheLayerEqualsTheWholeGraph) {
  // explain() differentiates only the heads, on the layer held as a leaf. The same gradient through the
  // whole network's graph (retain_grad on the layer) must agree exactly, for both layers and every target.
  auto m = small_model(5, DType::Float64);
  Generator gen(6);
  Tensor x = Tensor::normal({2, 3, 24, 40}, 0, 1, gen, DType::Float64);
  const std::vector<LadnnTarget> targets = {LadnnTarget::Covid, LadnnTarget::CrPa, LadnnTarget::NotCovid};
  for (CamLayer layer : {CamLayer::Features, CamLayer::Norm5}) {
    ExplainConfig cfg;
    cfg.layer = layer;
    Explanation e = explain(*m, x, targets, cfg);
    ASSERT_EQ(e.gradients.size(), targets.size());
    EXPECT_EQ(e.raw.shape(), (Shape{3, 2, 3, 5}));
    EXPECT_EQ(e.maps.shape(), (Shape{3, 2, 24, 40}));

    m->eval();
    Variable fmap = m->features(Variable(x));
    Variable act = relu(fmap);
    Variable held = layer == CamLayer::Features ? act : fmap;
    held.retain_grad();
    LaDnn::Output out = m->heads(act);
    EXPECT_LT(ops::max_abs_diff(e.covid_logit, out.covid.tensor().reshape({2})), 1e-12);
    EXPECT_LT(ops::max_abs_diff(e.activations, held.tensor()), 1e-12);
    std::vector<CamTarget> seeds = {{out.covid, Tensor::ones({2, 1}, DType::Float64)},
                                    {out.lesions, f64({0, 0, 1, 0, 0, 0, 0, 1, 0, 0}, {2, 5})},
                                    {out.covid, Tensor::full({2, 1}, -1.0, DType::Float64)}};
    std::vector<Tensor> whole = layer_gradients(held, seeds);
    for (size_t t = 0; t < targets.size(); ++t)
      EXPECT_TRUE(close_to(std::string(cam_layer_name(layer)) + " " + ladnn_target_name(targets[t]),
                           e.gradients[t], whole[t], 1e-12));
    m->zero_grad();
  }
}

TEST(GradCamExplain, BatchOfImagesEqualsImagesOneByOneAndLeavesTheModelAlone) {
  auto m = small_model(7, DType::Float32);
  m->train();  // explain() must use eval mode and then restore this
  Generator gen(8);
  Tensor x = Tensor::normal({3, 3, 32, 32}, 0, 1, gen);
  const std::vector<LadnnTarget> all = {LadnnTarget::Covid,   LadnnTarget::GGO,   LadnnTarget::Csld,
                                        LadnnTarget::CrPa,    LadnnTarget::AirBr, LadnnTarget::InSepThi,
                                        LadnnTarget::NotCovid};
  StateDict before;
  for (const auto& [k, t] : m->state_dict()) before.insert(k, t.clone());
  Explanation batch = explain(*m, x, all);
  EXPECT_TRUE(m->is_training());
  for (const Variable& p : m->parameters()) {
    EXPECT_TRUE(p.requires_grad());
    EXPECT_FALSE(p.has_grad());
  }
  for (const auto& [k, t] : m->state_dict()) EXPECT_EQ(ops::max_abs_diff(t, before.at(k)), 0.0) << k;

  for (int64_t i = 0; i < 3; ++i) {
    Explanation one = explain(*m, x.narrow(0, i, 1).contiguous(), all);
    for (size_t t = 0; t < all.size(); ++t)
      EXPECT_TRUE(close_to("image " + std::to_string(i) + " " + ladnn_target_name(all[t]), pick(one.raw, t),
                           pick(pick(batch.raw, t), i).unsqueeze(0), 1e-5));
  }
  // Probabilities are the sigmoid of the logits; NotCovid's map differs from COVID's.
  for (int64_t i = 0; i < 3; ++i)
    EXPECT_NEAR(batch.covid_prob.at({i}), 1 / (1 + std::exp(-batch.covid_logit.at({i}))), 1e-6);
  EXPECT_GT(ops::max_abs_diff(batch.raw.narrow(0, 0, 1).contiguous(), batch.raw.narrow(0, 6, 1).contiguous()),
            0.0);
}

TEST(GradCamExplain, CudaMapsEqualCpuMaps) {
  // The device check: the same weights and images on the GPU give the CPU's maps to 1e-4, in
  // float32 math: TF32 (on by default, 10-bit mantissas in the convolutions) is turned off here; with
  // it the first H200 run measured relative errors of 1.2e-4 (Grad-CAM++) to 2e-3 (Grad-CAM, whose
  // mean-gradient weights cancel) against the CPU.
  if (!cuda::available()) GTEST_SKIP() << "no GPU: " << cuda::unavailable_reason();
  cuda_test::Tf32Scope tf32_off(false);
  auto cpu = small_model(13, DType::Float32);
  auto gpu = small_model(13, DType::Float32);
  gpu->to(Device::cuda());
  Generator gen(14);
  Tensor x = Tensor::normal({2, 3, 48, 64}, 0, 1, gen);
  const std::vector<LadnnTarget> all = {LadnnTarget::Covid,   LadnnTarget::GGO,   LadnnTarget::Csld,
                                        LadnnTarget::CrPa,    LadnnTarget::AirBr, LadnnTarget::InSepThi,
                                        LadnnTarget::NotCovid};
  for (CamLayer layer : {CamLayer::Features, CamLayer::Norm5})
    for (CamMethod method : {CamMethod::GradCamPlusPlus, CamMethod::GradCam}) {
      ExplainConfig cfg;
      cfg.layer = layer;
      cfg.cam.method = method;
      Explanation c = explain(*cpu, x, all, cfg), g = explain(*gpu, x, all, cfg);
      const std::string what = std::string(cam_method_name(method)) + " on " + cam_layer_name(layer);
      EXPECT_TRUE(close_to(what + " activations", g.activations, c.activations, 1e-4));
      EXPECT_TRUE(close_to(what + " raw", g.raw, c.raw, 1e-4));
      EXPECT_TRUE(close_to(what + " maps", g.maps, c.maps, 1e-4));
    }
}

TEST(GradCamExplain, Errors) {
  auto m = small_model(9, DType::Float32);
  Tensor x = Tensor::zeros({1, 3, 16, 16});
  EXPECT_THROW_WITH(explain(*m, Tensor::zeros({3, 16, 16}), {LadnnTarget::Covid}), "explain", "(N, 3, H, W)",
                    "(3, 16, 16)");
  EXPECT_THROW_WITH(explain(*m, Tensor::zeros({1, 1, 16, 16}), {LadnnTarget::Covid}), "explain",
                    "(1, 1, 16, 16)");
  EXPECT_THROW_WITH(explain(*m, x, {}), "explain", "no targets");
  {
    NoGradGuard no_grad;
    EXPECT_THROW_WITH(explain(*m, x, {LadnnTarget::Covid}), "explain", "NoGradGuard");
  }
  Tensor a = Tensor::zeros({1, 2, 3, 3});
  EXPECT_THROW_WITH(cam_weights(a, Tensor::zeros({1, 2, 3, 4})), "cam_weights", "(1, 2, 3, 4)",
                    "(1, 2, 3, 3)");
  EXPECT_THROW_WITH(cam_raw(Tensor::zeros({2, 3, 3}), Tensor::zeros({2, 3, 3})), "cam_weights",
                    "(N, C, h, w)", "(2, 3, 3)");
  EXPECT_THROW_WITH(cam_weights(Tensor::zeros({1, 2, 3, 3}, DType::Int64), a), "cam_weights", "int64");
  EXPECT_THROW_WITH(normalize_cams(Tensor::zeros({1, 2, 3, 3})), "normalize_cams", "(N, h, w)",
                    "(1, 2, 3, 3)");
  EXPECT_THROW_WITH(upsample_cams(Tensor::zeros({1, 3, 3}), 0, 5), "upsample_cams", "positive", "(0, 5)");
  EXPECT_THROW_WITH(grad_cams(a, {}, 8, 8), "grad_cams", "no gradients");
  EXPECT_THROW_WITH(layer_gradients(Variable(a, false), {}), "layer_gradients", "does not require");
  Variable leaf(a, true);
  EXPECT_THROW_WITH(layer_gradients(leaf, {{sum(leaf), Tensor::ones({2})}}), "layer_gradients", "seed (2)",
                    "shape ()");
  EXPECT_THROW_WITH(cam_method_by_name("scorecam"), "unknown method 'scorecam'", "gradcampp", "gradcam");
  EXPECT_THROW_WITH(ladnn_target_by_name("ggo"), "unknown target 'ggo'", "covid", "GGO", "InSepThi",
                    "not-covid");
  EXPECT_THROW_WITH(cam_layer_by_name("norm4"), "unknown layer 'norm4'", "features", "norm5");
}

TEST(GradCamNames, RoundTrip) {
  for (LadnnTarget t : {LadnnTarget::Covid, LadnnTarget::GGO, LadnnTarget::Csld, LadnnTarget::CrPa,
                        LadnnTarget::AirBr, LadnnTarget::InSepThi, LadnnTarget::NotCovid})
    EXPECT_EQ(ladnn_target_by_name(ladnn_target_name(t)), t);
  EXPECT_EQ(ladnn_grid_targets().size(), 6u);
  EXPECT_EQ(ladnn_grid_targets()[0], LadnnTarget::Covid);
  for (int k = 0; k < 5; ++k) EXPECT_EQ(ladnn_target_name(ladnn_grid_targets()[k + 1]), kLesionNames[k]);
  for (CamMethod m : {CamMethod::GradCamPlusPlus, CamMethod::GradCam})
    EXPECT_EQ(cam_method_by_name(cam_method_name(m)), m);
  for (CamLayer l : {CamLayer::Features, CamLayer::Norm5}) EXPECT_EQ(cam_layer_by_name(cam_layer_name(l)), l);
}

// ---- against pytorch-grad-cam --------------------------------------------------------------------------

struct Fixture {
  SafetensorsFile file;
  std::shared_ptr<LaDnn> model;
  Tensor x;  // (N, 3, H, W)
};

std::vector<int64_t> parse_ints(const std::string& csv) {
  std::vector<int64_t> out;
  size_t pos = 0;
  while (pos <= csv.size()) {
    size_t comma = csv.find(',', pos);
    if (comma == std::string::npos) comma = csv.size();
    out.push_back(std::stoll(csv.substr(pos, comma - pos)));
    pos = comma + 1;
  }
  return out;
}

Fixture load_fixture() {
  Fixture f{
      load_safetensors(std::string(LADNN_GOLDEN_DIR) + "/gradcam/tiny_gradcam.safetensors"), nullptr, {}};
  const auto& meta = f.file.metadata;
  DenseNetConfig cfg{std::stoll(meta.at("growth_rate")), parse_ints(meta.at("block_config")),
                     std::stoll(meta.at("num_init_features")), std::stoll(meta.at("bn_size")), 0.0};
  f.model = std::make_shared<LaDnn>(cfg);
  StateDict sd;
  const std::string prefix = "weights.";
  for (const auto& [name, t] : f.file.tensors)
    if (name.rfind(prefix, 0) == 0) sd.insert(name.substr(prefix.size()), t);
  f.model->load_state_dict(sd);       // strict
  Tensor grey = f.file.at("x_grey");  // (N, 1, H, W), replicated to 3 channels as a CT slice
  f.x = ops::cat({grey, grey, grey}, 1);
  return f;
}

TEST(GradCamGolden, CamArithmeticOnTheReferencesOwnMapsMatches) {
  Fixture f = load_fixture();
  for (const char* layer : {"features", "norm5"}) {
    const Tensor& a = f.file.at(std::string("act.") + layer);
    const Tensor& g = f.file.at(std::string("grad.") + layer + ".covid");
    for (CamMethod method : {CamMethod::GradCamPlusPlus, CamMethod::GradCam}) {
      CamOptions opt;
      opt.method = method;
      const std::string key = std::string("raw.") + cam_method_name(method) + "." + layer + ".covid";
      EXPECT_TRUE(close_to(key, cam_raw(a, g, opt), f.file.at(key), 1e-5));
    }
  }
}

TEST(GradCamGolden, MatchesPytorchGradCamForEveryTargetLayerAndMethod) {
  Fixture f = load_fixture();
  std::vector<LadnnTarget> targets;
  for (const char* name : {"covid", "GGO", "Csld", "CrPa", "AirBr", "InSepThi", "not-covid"})
    targets.push_back(ladnn_target_by_name(name));
  int maps_checked = 0;
  for (CamLayer layer : {CamLayer::Features, CamLayer::Norm5}) {
    for (CamMethod method : {CamMethod::GradCamPlusPlus, CamMethod::GradCam}) {
      ExplainConfig cfg;
      cfg.layer = layer;
      cfg.cam.method = method;
      Explanation e = explain(*f.model, f.x, targets, cfg);
      const std::string l = cam_layer_name(layer), m = cam_method_name(method);
      Tensor logits = ops::cat({e.covid_logit.reshape({-1, 1}), e.lesion_logits}, 1);
      EXPECT_TRUE(close_to("logits", logits, f.file.at("logits"), 1e-4));
      EXPECT_TRUE(close_to("act." + l, e.activations, f.file.at("act." + l), 1e-4));
      EXPECT_TRUE(close_to("grad." + l + ".covid", e.gradients[0], f.file.at("grad." + l + ".covid"), 1e-4));
      for (size_t t = 0; t < targets.size(); ++t) {
        const std::string suffix = m + "." + l + "." + ladnn_target_name(targets[t]);
        EXPECT_TRUE(close_to("raw." + suffix, pick(e.raw, t), f.file.at("raw." + suffix), 1e-4));
        if (f.file.contains("map." + suffix)) {
          ++maps_checked;
          EXPECT_TRUE(close_to("map." + suffix, pick(e.maps, t), f.file.at("map." + suffix), 1e-3));
        }
      }
    }
  }
  EXPECT_EQ(maps_checked, 9);  // MAP_KEYS of tools/make_gradcam_golden.py
}

}  // namespace
}  // namespace ladnn
