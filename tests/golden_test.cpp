// tests/golden_test.cpp — ladnn against PyTorch on fixed inputs (fixtures from tools/make_golden.py).
//
// Each fixture in tests/golden/ (LADNN_GOLDEN_DIR) holds the inputs, the upstream gradient and
// PyTorch's (1.13, CPU, float32) outputs and gradients for one case; its "params" metadata says the
// op's parameters. The test runs the same computation with ladnn's differentiable ops
// (autograd/functions.h) and backward with the same upstream gradient, or the same optimizer steps,
// and compares in float32.
//
// The metric, per element i of a result a against PyTorch's b:
//     err_i = |a_i - b_i| / max(|b_i|, rms(b))        rms(b) = sqrt(mean(b^2)) over the whole tensor
// and a tensor passes when max_i err_i <= tol. Large elements are thus held to a relative error; an
// element much smaller than the tensor's typical size (a near-cancelling sum) to an absolute error of
// tol * rms(b), since float32 rounding in a sum scales with its terms, not with its result. A NaN fails.
// tol = 1e-5 everywhere: tools/make_golden.py prints PyTorch's own float32-vs-float64 error under
// this metric for every fixture, and the largest is 7.3e-7 (conv2d_7x7_s2_p3_nobias), so 1e-5 leaves an
// order of magnitude for a different summation order and still catches a wrong formula.
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "autograd/functions.h"
#include "autograd/variable.h"
#include "optim/adam.h"
#include "optim/sgd.h"
#include "tensor/ops.h"
#include "tensor/safetensors.h"
#include "tests/golden_util.h"

namespace ladnn {
namespace {

constexpr double kTol = 1e-5;  // see the file header

::testing::AssertionResult close(const std::string& what, const Tensor& actual, const Tensor& expected,
                                 double tol = kTol) {
  return close_to(what, actual, expected, tol);
}

std::string fixture_path(const std::string& name) {
  return std::string(LADNN_GOLDEN_DIR) + "/" + name + ".safetensors";
}

SafetensorsFile load_fixture(const std::string& name) { return load_safetensors(fixture_path(name)); }

nlohmann::json params_of(const SafetensorsFile& f) { return nlohmann::json::parse(f.metadata.at("params")); }

::testing::AssertionResult close_grad(const std::string& what, const Variable& v, const Tensor& expected) {
  if (!v.has_grad()) return ::testing::AssertionFailure() << what << ": no gradient reached it";
  return close(what, v.grad(), expected);
}

/// Turns a fixture name into a test-name suffix ("conv2d_3x3" stays; other characters become '_').
std::string param_name(const ::testing::TestParamInfo<std::string>& info) {
  std::string s = info.param;
  for (char& c : s)
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
  return s;
}

const std::vector<std::string> kConvCases = {"conv2d_3x3_s1_p1_bias", "conv2d_1x1_nobias_b1",
                                             "conv2d_7x7_s2_p3_nobias", "conv2d_7x7_s2_p3_bias_b1",
                                             "conv2d_3x2_s21_p10_bias"};
const std::vector<std::string> kBatchNormCases = {"batchnorm2d_b2", "batchnorm2d_b1_m03_eps1e-3"};
const std::vector<std::string> kMaxPoolCases = {"max_pool2d_k3_s2_p1", "max_pool2d_k2_s2_odd",
                                                "max_pool2d_k3_s2_p1_ceil"};
const std::vector<std::string> kAvgPoolCases = {"avg_pool2d_k2_s2", "avg_pool2d_k3_s1_p1_incpad",
                                                "avg_pool2d_k3_s1_p1_excpad", "avg_pool2d_k3_s2_p1_ceil_excpad",
                                                "avg_pool2d_k3_s2_p1_ceil_incpad"};
const std::vector<std::string> kAdaptiveCases = {"adaptive_avg_pool2d_7to1", "adaptive_avg_pool2d_7to3",
                                                 "adaptive_avg_pool2d_5x7to3x2"};
const std::vector<std::string> kLinearCases = {"linear_bias", "linear_nobias_b1"};
const std::vector<std::string> kBceCases = {"bce_with_logits_weight_none", "bce_with_logits_weight_mean",
                                            "bce_with_logits_weight_sum", "bce_with_logits_noweight_mean",
                                            "bce_with_logits_bcastweight_sum"};
const std::vector<std::string> kOptimizerCases = {"adam_wd", "adamw", "sgd_nesterov_wd", "sgd_momentum_dampening"};

// ---- the fixtures themselves ------------------------------------------------------------------------

TEST(GoldenFixtures, EveryFixtureIsTestedAndRecordsItsOrigin) {
  std::set<std::string> known;
  for (const auto* list : {&kConvCases, &kBatchNormCases, &kMaxPoolCases, &kAvgPoolCases, &kAdaptiveCases,
                           &kLinearCases, &kBceCases, &kOptimizerCases})
    known.insert(list->begin(), list->end());
  std::set<std::string> found;
  for (const auto& e : std::filesystem::directory_iterator(LADNN_GOLDEN_DIR)) {
    if (e.path().extension() != ".safetensors") continue;
    const std::string name = e.path().stem().string();
    found.insert(name);
    EXPECT_TRUE(known.count(name)) << name << " has no golden test";
    const SafetensorsFile f = load_safetensors(e.path().string());
    EXPECT_EQ(f.metadata.at("case"), name);
    EXPECT_FALSE(f.metadata.at("torch_version").empty()) << name;
    EXPECT_NO_THROW(params_of(f)) << name;
  }
  for (const std::string& k : known)
    EXPECT_TRUE(found.count(k)) << fixture_path(k) << " is missing: run /usr/bin/python3 tools/make_golden.py";
}

// ---- conv2d -----------------------------------------------------------------------------------------------

class Conv2dGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(Conv2dGolden, ForwardAndBackwardMatchPyTorch) {
  const SafetensorsFile f = load_fixture(GetParam());
  const nlohmann::json p = params_of(f);
  ops::Conv2dParams cp;
  cp.stride_h = p["stride"][0];
  cp.stride_w = p["stride"][1];
  cp.pad_h = p["padding"][0];
  cp.pad_w = p["padding"][1];
  const bool has_bias = p["bias"];
  Variable x(f.at("x").clone(), true), w(f.at("weight").clone(), true);
  Variable b = has_bias ? Variable(f.at("bias").clone(), true) : Variable();
  Variable y = conv2d(x, w, b, cp);
  EXPECT_TRUE(close("y", y.tensor(), f.at("y")));
  y.backward(f.at("dy"));
  EXPECT_TRUE(close_grad("dx", x, f.at("dx")));
  EXPECT_TRUE(close_grad("dweight", w, f.at("dweight")));
  if (has_bias) {
    EXPECT_TRUE(close_grad("dbias", b, f.at("dbias")));
  }
}

INSTANTIATE_TEST_SUITE_P(Golden, Conv2dGolden, ::testing::ValuesIn(kConvCases), param_name);

// ---- batch_norm2d -------------------------------------------------------------------------------------------

class BatchNorm2dGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(BatchNorm2dGolden, TwoTrainingStepsThenEvalMatchPyTorch) {
  const SafetensorsFile f = load_fixture(GetParam());
  const nlohmann::json p = params_of(f);
  const double momentum = p["momentum"], eps = p["eps"];
  Tensor running_mean = f.at("running_mean0").clone(), running_var = f.at("running_var0").clone();
  for (int step = 1; step <= 3; ++step) {
    const bool training = step < 3;
    SCOPED_TRACE(std::string(training ? "training" : "eval") + " step " + std::to_string(step));
    const std::string k = std::to_string(step);
    Variable x(f.at("x" + k).clone(), true);
    Variable gamma(f.at("gamma").clone(), true), beta(f.at("beta").clone(), true);
    Variable y = batch_norm2d(x, gamma, beta, running_mean, running_var, training, momentum, eps);
    EXPECT_TRUE(close("y" + k, y.tensor(), f.at("y" + k)));
    if (training) {
      EXPECT_TRUE(close("running_mean" + k, running_mean, f.at("running_mean" + k)));
      EXPECT_TRUE(close("running_var" + k, running_var, f.at("running_var" + k)));
    }
    y.backward(f.at("dy" + k));
    EXPECT_TRUE(close_grad("dx" + k, x, f.at("dx" + k)));
    EXPECT_TRUE(close_grad("dgamma" + k, gamma, f.at("dgamma" + k)));
    EXPECT_TRUE(close_grad("dbeta" + k, beta, f.at("dbeta" + k)));
  }
  // Eval must leave the running statistics as step 2 left them.
  EXPECT_TRUE(close("running_mean after eval", running_mean, f.at("running_mean2")));
  EXPECT_TRUE(close("running_var after eval", running_var, f.at("running_var2")));
}

INSTANTIATE_TEST_SUITE_P(Golden, BatchNorm2dGolden, ::testing::ValuesIn(kBatchNormCases), param_name);

// ---- pooling -------------------------------------------------------------------------------------------------

ops::Pool2dParams pool_params(const nlohmann::json& p) {
  ops::Pool2dParams pp;
  pp.kernel_h = p["kernel"][0];
  pp.kernel_w = p["kernel"][1];
  pp.stride_h = p["stride"][0];
  pp.stride_w = p["stride"][1];
  pp.pad_h = p["padding"][0];
  pp.pad_w = p["padding"][1];
  pp.ceil_mode = p["ceil_mode"];
  pp.count_include_pad = p.value("count_include_pad", true);
  return pp;
}

class MaxPool2dGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(MaxPool2dGolden, ForwardIndicesAndBackwardMatchPyTorch) {
  const SafetensorsFile f = load_fixture(GetParam());
  const ops::Pool2dParams pp = pool_params(params_of(f));
  Variable x(f.at("x").clone(), true);
  Variable y = max_pool2d(x, pp);
  EXPECT_TRUE(close("y", y.tensor(), f.at("y")));
  y.backward(f.at("dy"));
  EXPECT_TRUE(close_grad("dx", x, f.at("dx")));
  // The raw op's indices: flat h * W + w into each input plane, exactly PyTorch's.
  const ops::MaxPoolForward raw = ops::max_pool2d_forward(f.at("x"), pp);
  ASSERT_EQ(raw.indices.dtype(), DType::Int64);
  ASSERT_EQ(raw.indices.shape(), f.at("indices").shape());
  EXPECT_EQ(raw.indices.to_vector(), f.at("indices").to_vector());
}

INSTANTIATE_TEST_SUITE_P(Golden, MaxPool2dGolden, ::testing::ValuesIn(kMaxPoolCases), param_name);

class AvgPool2dGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(AvgPool2dGolden, ForwardAndBackwardMatchPyTorch) {
  const SafetensorsFile f = load_fixture(GetParam());
  const ops::Pool2dParams pp = pool_params(params_of(f));
  Variable x(f.at("x").clone(), true);
  Variable y = avg_pool2d(x, pp);
  EXPECT_TRUE(close("y", y.tensor(), f.at("y")));
  y.backward(f.at("dy"));
  EXPECT_TRUE(close_grad("dx", x, f.at("dx")));
}

INSTANTIATE_TEST_SUITE_P(Golden, AvgPool2dGolden, ::testing::ValuesIn(kAvgPoolCases), param_name);

class AdaptiveAvgPool2dGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(AdaptiveAvgPool2dGolden, ForwardAndBackwardMatchPyTorch) {
  const SafetensorsFile f = load_fixture(GetParam());
  const nlohmann::json p = params_of(f);
  Variable x(f.at("x").clone(), true);
  Variable y = adaptive_avg_pool2d(x, p["output_size"][0], p["output_size"][1]);
  EXPECT_TRUE(close("y", y.tensor(), f.at("y")));
  y.backward(f.at("dy"));
  EXPECT_TRUE(close_grad("dx", x, f.at("dx")));
}

INSTANTIATE_TEST_SUITE_P(Golden, AdaptiveAvgPool2dGolden, ::testing::ValuesIn(kAdaptiveCases), param_name);

// ---- linear ---------------------------------------------------------------------------------------------------

class LinearGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(LinearGolden, ForwardAndBackwardMatchPyTorch) {
  const SafetensorsFile f = load_fixture(GetParam());
  const bool has_bias = params_of(f)["bias"];
  Variable x(f.at("x").clone(), true), w(f.at("weight").clone(), true);
  Variable b = has_bias ? Variable(f.at("bias").clone(), true) : Variable();
  Variable y = linear(x, w, b);
  EXPECT_TRUE(close("y", y.tensor(), f.at("y")));
  y.backward(f.at("dy"));
  EXPECT_TRUE(close_grad("dx", x, f.at("dx")));
  EXPECT_TRUE(close_grad("dweight", w, f.at("dweight")));
  if (has_bias) {
    EXPECT_TRUE(close_grad("dbias", b, f.at("dbias")));
  }
}

INSTANTIATE_TEST_SUITE_P(Golden, LinearGolden, ::testing::ValuesIn(kLinearCases), param_name);

// ---- bce_with_logits -------------------------------------------------------------------------------------------

class BceWithLogitsGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(BceWithLogitsGolden, LossAndGradientMatchPyTorch) {
  const SafetensorsFile f = load_fixture(GetParam());
  const nlohmann::json p = params_of(f);
  const std::string r = p["reduction"];
  const ops::Reduction reduction =
      r == "none" ? ops::Reduction::None : (r == "sum" ? ops::Reduction::Sum : ops::Reduction::Mean);
  ASSERT_TRUE(r == "none" || r == "sum" || r == "mean") << r;
  const Tensor weight = p["weight"].get<bool>() ? f.at("weight") : Tensor();
  Variable x(f.at("x").clone(), true);
  Variable loss = bce_with_logits(x, f.at("target"), weight, reduction);
  EXPECT_TRUE(close("loss", loss.tensor(), f.at("loss")));
  loss.backward(f.at("dy"));
  EXPECT_TRUE(close_grad("dx", x, f.at("dx")));
}

INSTANTIATE_TEST_SUITE_P(Golden, BceWithLogitsGolden, ::testing::ValuesIn(kBceCases), param_name);

// ---- optimizers ------------------------------------------------------------------------------------------------

class OptimizerGolden : public ::testing::TestWithParam<std::string> {};

std::unique_ptr<Optimizer> make_optimizer(const std::string& name, const nlohmann::json& p,
                                          std::vector<Variable> params) {
  const double lr = p["lr"];
  if (name.rfind("sgd", 0) == 0)
    return std::make_unique<SGD>(std::move(params), lr, p["momentum"].get<double>(), p["dampening"].get<double>(),
                                 p["weight_decay"].get<double>(), p["nesterov"].get<bool>());
  if (name == "adamw")
    return std::make_unique<AdamW>(std::move(params), lr, p["beta1"].get<double>(), p["beta2"].get<double>(),
                                   p["eps"].get<double>(), p["weight_decay"].get<double>());
  return std::make_unique<Adam>(std::move(params), lr, p["beta1"].get<double>(), p["beta2"].get<double>(),
                                p["eps"].get<double>(), p["weight_decay"].get<double>());
}

TEST_P(OptimizerGolden, TwoStepsMatchPyTorch) {
  const SafetensorsFile f = load_fixture(GetParam());
  const nlohmann::json p = params_of(f);
  const bool frozen = p["frozen"];
  std::vector<Variable> params = {Variable(f.at("param0").clone(), true), Variable(f.at("param1").clone(), true)};
  if (frozen) params.emplace_back(f.at("param2").clone(), true);  // never gets a gradient: skipped
  std::unique_ptr<Optimizer> opt = make_optimizer(GetParam(), p, params);
  for (int step = 1; step <= 2; ++step) {
    SCOPED_TRACE("step " + std::to_string(step));
    opt->zero_grad();
    // Gradient g exactly: d/dp sum(p * g) = g (the backward multiplies g by ones, no rounding).
    Variable loss;
    for (int i = 0; i < 2; ++i) {
      Variable term = sum(mul(params[i], Variable(f.at("grad" + std::to_string(i) + "_step" + std::to_string(step)))));
      loss = i == 0 ? term : add(loss, term);
    }
    loss.backward();
    for (int i = 0; i < 2; ++i) {
      const std::string g = "grad" + std::to_string(i) + "_step" + std::to_string(step);
      ASSERT_TRUE(close(g + " (as set up)", params[i].grad(), f.at(g), 0.0));
    }
    opt->step();
    for (std::size_t i = 0; i < params.size(); ++i) {
      const std::string k = "param" + std::to_string(i) + "_step" + std::to_string(step);
      EXPECT_TRUE(close(k, params[i].tensor(), f.at(k)));
    }
  }
  // The state after step 2, under PyTorch's names ("0.exp_avg", "1.momentum_buffer", ...).
  const OptimizerState state = opt->state_dict();
  int compared = 0;
  for (const auto& [name, t] : f.tensors) {
    if (name.empty() || !std::isdigit(static_cast<unsigned char>(name[0]))) continue;
    auto it = state.tensors.find(name);
    if (it == state.tensors.end()) {
      ADD_FAILURE() << "state_dict() has no tensor '" << name << "' (PyTorch's state has it)";
      continue;
    }
    EXPECT_TRUE(close("state " + name, it->second, t));
    ++compared;
  }
  EXPECT_GT(compared, 0) << "the fixture holds no optimizer state";
  if (frozen) {
    EXPECT_EQ(state.tensors.count("2.exp_avg") + state.tensors.count("2.momentum_buffer"), 0u)
        << "a parameter without a gradient gets no state";
  }
}

INSTANTIATE_TEST_SUITE_P(Golden, OptimizerGolden, ::testing::ValuesIn(kOptimizerCases), param_name);

}  // namespace
}  // namespace ladnn
