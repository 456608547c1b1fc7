// tests/golden_test.cpp — ladnn against PyTorch on fixed inputs (fixtures from tools/make_golden.py).
//
// Each fixture in tests/golden/ (LADNN_GOLDEN_DIR) holds the inputs, the upstream gradient and
// PyTorch's (1.13, CPU, float32) outputs and gradients for one case; its "params" metadata says the
// op's parameters. The test runs the same computation with ladnn's differentiable ops
// (autograd/functions.h) and backward with the same upstream gradient, or the same optimizer steps,
// and compares in float32.
//
// Groups (test suite: ops covered): Conv2dGolden: conv2d | BatchNorm2dGolden: batch_norm2d (train, eval,
// running stats) | MaxPool2dGolden: max_pool2d (+ raw indices) | AvgPool2dGolden: avg_pool2d |
// AdaptiveAvgPool2dGolden: adaptive_avg_pool2d | LinearGolden: linear | BceWithLogitsGolden: bce_with_logits |
// OptimizerGolden: SGD, Adam, AdamW | BinaryGolden: add, sub, mul, div with broadcasting | UnaryGolden:
// add_scalar, mul_scalar, pow_scalar, neg, exp, log, sigmoid, relu | ReductionGolden: sum, mean (Variable and
// raw) | MatmulGolden: matmul (+ raw trans_a/trans_b) | ViewGolden: flatten, reshape | CatGolden: cat |
// SplitGolden: split | DropoutGolden: dropout (statistical, see its section). ops::sqrt has no differentiable
// version and no golden test.
//
// The metric, per element i of a result a against PyTorch's b:
//     err_i = |a_i - b_i| / max(|b_i|, rms(b))        rms(b) = sqrt(mean(b^2)) over the whole tensor
// and a tensor passes when max_i err_i <= tol. Large elements are thus held to a relative error; an
// element much smaller than the tensor's typical size (a near-cancelling sum) to an absolute error of
// tol * rms(b), since float32 rounding in a sum scales with its terms, not with its result. A NaN fails.
// tol = 1e-5 everywhere: tools/make_golden.py prints PyTorch's own float32-vs-float64 error under
// this metric for every fixture, and the largest is 1.3e-6 (sigmoid's dx: y * (1 - y) cancels in float32
// near y = 1; then matmul_13x300x11 at 1.0e-6 and conv2d_7x7_s2_p3_nobias at 7.3e-7), so 1e-5 leaves
// room for a different summation order and still catches a wrong formula. Views, cat and split move
// values without arithmetic and are compared exactly (tol 0).
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
#include <stdexcept>
#include <string>
#include <vector>

#include "autograd/functions.h"
#include "autograd/variable.h"
#include "optim/adam.h"
#include "optim/sgd.h"
#include "tensor/ops.h"
#include "tensor/random.h"
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
const std::vector<std::string> kBinaryCases = {"add_same",      "add_nchw_1c11", "add_nk_k",      "sub_same",
                                               "sub_nchw_c11",  "sub_k_nk",      "mul_same",      "mul_nchw_c11",
                                               "mul_1c11_nchw", "mul_n1_1k",     "div_same",      "div_nchw_1c11",
                                               "div_nk_k",      "div_c11_nchw"};
const std::vector<std::string> kUnaryCases = {"add_scalar",      "mul_scalar",    "neg",     "pow_scalar_2",
                                              "pow_scalar_3",    "pow_scalar_0p5", "pow_scalar_m1p5",
                                              "pow_scalar_m2",   "exp",           "exp_wide", "log",
                                              "log_wide",        "sigmoid",       "relu"};
const std::vector<std::string> kReductionCases = {"sum_all",  "sum_dim1",  "sum_dims023_keepdim", "sum_dimm1_keepdim",
                                                  "mean_all", "mean_dim0", "mean_dim1_keepdim",   "mean_dims23"};
const std::vector<std::string> kMatmulCases = {"matmul_5x7x3", "matmul_1x6x4", "matmul_4x1x3", "matmul_13x300x11"};
const std::vector<std::string> kViewCases = {"flatten_1", "flatten_1_2", "flatten_0", "flatten_1_b1_c11",
                                             "reshape_m1"};
const std::vector<std::string> kCatCases = {"cat_c_3parts", "cat_c_b1_2parts", "cat_lastdim"};
const std::vector<std::string> kSplitCases = {"split_c_3", "split_c_unused"};
const std::vector<std::string> kDropoutCases = {"dropout_p0p3", "dropout_p0p5", "dropout_p1", "dropout_p0",
                                                "dropout_eval"};

// ---- the fixtures themselves ------------------------------------------------------------------------

TEST(GoldenFixtures, EveryFixtureIsTestedAndRecordsItsOrigin) {
  std::set<std::string> known;
  for (const auto* list : {&kConvCases, &kBatchNormCases, &kMaxPoolCases, &kAvgPoolCases, &kAdaptiveCases,
                           &kLinearCases, &kBceCases, &kOptimizerCases, &kBinaryCases, &kUnaryCases,
                           &kReductionCases, &kMatmulCases, &kViewCases, &kCatCases, &kSplitCases, &kDropoutCases})
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

// ---- add/sub/mul/div with broadcasting -----------------------------------------------------------------------

Variable binary_op(const std::string& op, const Variable& a, const Variable& b) {
  if (op == "add") return add(a, b);
  if (op == "sub") return sub(a, b);
  if (op == "mul") return mul(a, b);
  if (op == "div") return div(a, b);
  throw std::invalid_argument("golden: the fixture names an unknown binary op '" + op + "'");
}

class BinaryGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(BinaryGolden, ForwardAndBothGradientsMatchPyTorch) {
  const SafetensorsFile f = load_fixture(GetParam());
  const std::string op = params_of(f)["op"];
  Variable a(f.at("a").clone(), true), b(f.at("b").clone(), true);
  Variable y = binary_op(op, a, b);
  EXPECT_TRUE(close("y", y.tensor(), f.at("y")));
  y.backward(f.at("dy"));
  // A broadcast input's gradient is summed back to its own shape (close() checks the shape first).
  EXPECT_TRUE(close_grad("da", a, f.at("da")));
  EXPECT_TRUE(close_grad("db", b, f.at("db")));
}

INSTANTIATE_TEST_SUITE_P(Golden, BinaryGolden, ::testing::ValuesIn(kBinaryCases), param_name);

// ---- one-input ops: scalar arithmetic, neg, exp, log, sigmoid, relu -----------------------------------------

Variable unary_op(const std::string& op, const Variable& x, const nlohmann::json& scalar) {
  if (op == "add_scalar") return add_scalar(x, scalar.get<double>());
  if (op == "mul_scalar") return mul_scalar(x, scalar.get<double>());
  if (op == "pow_scalar") return pow_scalar(x, scalar.get<double>());
  if (op == "neg") return neg(x);
  if (op == "exp") return exp(x);
  if (op == "log") return log(x);
  if (op == "sigmoid") return sigmoid(x);
  if (op == "relu") return relu(x);
  throw std::invalid_argument("golden: the fixture names an unknown one-input op '" + op + "'");
}

class UnaryGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(UnaryGolden, ForwardAndBackwardMatchPyTorch) {
  const SafetensorsFile f = load_fixture(GetParam());
  const nlohmann::json p = params_of(f);
  Variable x(f.at("x").clone(), true);
  Variable y = unary_op(p["op"], x, p["scalar"]);
  EXPECT_TRUE(close("y", y.tensor(), f.at("y")));
  y.backward(f.at("dy"));
  EXPECT_TRUE(close_grad("dx", x, f.at("dx")));
}

INSTANTIATE_TEST_SUITE_P(Golden, UnaryGolden, ::testing::ValuesIn(kUnaryCases), param_name);

// ---- sum and mean ----------------------------------------------------------------------------------------------

class ReductionGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(ReductionGolden, ForwardAndBackwardMatchPyTorch) {
  const SafetensorsFile f = load_fixture(GetParam());
  const nlohmann::json p = params_of(f);
  const std::string op = p["op"];
  ASSERT_TRUE(op == "sum" || op == "mean") << op;
  const bool all = p["dims"].is_null();
  const std::vector<int64_t> dims = all ? std::vector<int64_t>{} : p["dims"].get<std::vector<int64_t>>();
  const bool keepdim = p["keepdim"];
  Variable x(f.at("x").clone(), true);
  Variable y = op == "sum" ? (all ? sum(x) : sum(x, dims, keepdim)) : (all ? mean(x) : mean(x, dims, keepdim));
  EXPECT_TRUE(close("y", y.tensor(), f.at("y")));
  // The raw op too: the differentiable mean is built on sum, so ops::mean is not otherwise compared.
  const Tensor raw = op == "sum" ? (all ? ops::sum(f.at("x")) : ops::sum(f.at("x"), dims, keepdim))
                                 : (all ? ops::mean(f.at("x")) : ops::mean(f.at("x"), dims, keepdim));
  EXPECT_TRUE(close("ops::" + op, raw, f.at("y")));
  y.backward(f.at("dy"));
  EXPECT_TRUE(close_grad("dx", x, f.at("dx")));
}

INSTANTIATE_TEST_SUITE_P(Golden, ReductionGolden, ::testing::ValuesIn(kReductionCases), param_name);

// ---- matmul ----------------------------------------------------------------------------------------------------

class MatmulGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(MatmulGolden, ForwardBackwardAndTransposedOperandsMatchPyTorch) {
  const SafetensorsFile f = load_fixture(GetParam());
  Variable a(f.at("a").clone(), true), b(f.at("b").clone(), true);
  Variable y = matmul(a, b);
  EXPECT_TRUE(close("y", y.tensor(), f.at("y")));
  y.backward(f.at("dy"));
  EXPECT_TRUE(close_grad("da", a, f.at("da")));
  EXPECT_TRUE(close_grad("db", b, f.at("db")));
  // The raw op reading stored-transposed operands (trans_a / trans_b) gives the same product.
  const Tensor at = f.at("a").transpose(0, 1).contiguous(), bt = f.at("b").transpose(0, 1).contiguous();
  EXPECT_TRUE(close("ops::matmul(a^T, b, trans_a)", ops::matmul(at, f.at("b"), true, false), f.at("y")));
  EXPECT_TRUE(close("ops::matmul(a, b^T, trans_b)", ops::matmul(f.at("a"), bt, false, true), f.at("y")));
  EXPECT_TRUE(close("ops::matmul(a^T, b^T, both)", ops::matmul(at, bt, true, true), f.at("y")));
}

INSTANTIATE_TEST_SUITE_P(Golden, MatmulGolden, ::testing::ValuesIn(kMatmulCases), param_name);

// ---- flatten and reshape ---------------------------------------------------------------------------------------

class ViewGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(ViewGolden, ForwardAndBackwardMatchPyTorch) {
  const SafetensorsFile f = load_fixture(GetParam());
  const nlohmann::json p = params_of(f);
  const std::string op = p["op"];
  ASSERT_TRUE(op == "flatten" || op == "reshape") << op;
  Variable x(f.at("x").clone(), true);
  Variable y = op == "flatten" ? flatten(x, p["start"].get<int64_t>(), p["end"].get<int64_t>())
                               : reshape(x, p["shape"].get<Shape>());
  EXPECT_TRUE(close("y", y.tensor(), f.at("y"), 0.0));  // a view moves no value: exact
  y.backward(f.at("dy"));
  EXPECT_TRUE(x.has_grad() && close("dx", x.grad(), f.at("dx"), 0.0));
}

INSTANTIATE_TEST_SUITE_P(Golden, ViewGolden, ::testing::ValuesIn(kViewCases), param_name);

// ---- cat and split ---------------------------------------------------------------------------------------------

class CatGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(CatGolden, ForwardAndEveryPartsGradientMatchPyTorch) {
  const SafetensorsFile f = load_fixture(GetParam());
  const nlohmann::json p = params_of(f);
  const int parts = p["parts"];
  std::vector<Variable> xs;
  for (int i = 0; i < parts; ++i) xs.emplace_back(f.at("part" + std::to_string(i)).clone(), true);
  Variable y = cat(xs, p["dim"].get<int64_t>());
  EXPECT_TRUE(close("y", y.tensor(), f.at("y"), 0.0));  // copies only: exact
  y.backward(f.at("dy"));
  for (int i = 0; i < parts; ++i) {
    const std::string k = "dpart" + std::to_string(i);
    EXPECT_TRUE(xs[i].has_grad() && close(k, xs[i].grad(), f.at(k), 0.0)) << k;
  }
}

INSTANTIATE_TEST_SUITE_P(Golden, CatGolden, ::testing::ValuesIn(kCatCases), param_name);

class SplitGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(SplitGolden, PiecesAndGradientFromTheUsedPiecesMatchPyTorch) {
  const SafetensorsFile f = load_fixture(GetParam());
  const nlohmann::json p = params_of(f);
  const std::vector<int64_t> sizes = p["sizes"].get<std::vector<int64_t>>();
  const std::vector<int> used = p["used"].get<std::vector<int>>();
  Variable x(f.at("x").clone(), true);
  std::vector<Variable> ys = split(x, sizes, p["dim"].get<int64_t>());
  ASSERT_EQ(ys.size(), sizes.size());
  for (std::size_t i = 0; i < ys.size(); ++i) {
    const std::string k = "y" + std::to_string(i);
    EXPECT_TRUE(close(k, ys[i].tensor(), f.at(k), 0.0));
  }
  // PyTorch ran backward([y_i for i in used], [dy_i]). Here: loss = sum over used i of sum(y_i * dy_i),
  // whose gradient with respect to y_i is ones * dy_i = dy_i exactly, so x gets the same gradient; the
  // slices of the unused pieces must come out zero.
  Variable loss;
  for (int i : used) {
    Variable term = sum(mul(ys[i], Variable(f.at("dy" + std::to_string(i)))));
    loss = loss.defined() ? add(loss, term) : term;
  }
  loss.backward();
  EXPECT_TRUE(x.has_grad() && close("dx", x.grad(), f.at("dx"), 0.0));
}

INSTANTIATE_TEST_SUITE_P(Golden, SplitGolden, ::testing::ValuesIn(kSplitCases), param_name);

// ---- dropout -----------------------------------------------------------------------------------------------------
// PyTorch's generator is not ladnn's, so for 0 < p < 1 in training the two masks differ and no value can be
// compared. The test checks instead the properties PyTorch's dropout has, first on PyTorch's own result from
// the fixture (so the checks are known to describe PyTorch) and then on ladnn's, for the same x and dy:
//   - every output is 0 (dropped) or exactly x * s, s = 1 / (1 - p) rounded to float32, bit for bit;
//   - the kept count is within 5 binomial standard deviations, sqrt(n p (1 - p)), of n (1 - p), and the
//     two counts are within 5 standard deviations of their difference of each other;
//   - the backward uses the same mask: dx = dy * s where kept and exactly 0 where dropped;
//   - the mask is per element (no N, C plane is kept or dropped whole, as Dropout2d would);
//   - a second call draws a fresh mask.
// p = 0, p = 1 and eval are deterministic and compared value for value.

::testing::AssertionResult dropout_properties(const std::string& who, const Tensor& x, const Tensor& dy,
                                              const Tensor& y, const Tensor& dx, double p, int64_t* kept_out) {
  for (const Tensor* t : {&y, &dx})
    if (t->dtype() != DType::Float32 || t->shape() != x.shape())
      return ::testing::AssertionFailure() << who << ": result " << shape_str(t->shape()) << " "
                                           << dtype_name(t->dtype()) << ", x is " << shape_str(x.shape())
                                           << " float32";
  const Tensor xc = x.contiguous(), dyc = dy.contiguous(), yc = y.contiguous(), dxc = dx.contiguous();
  const float *xv = xc.data<float>(), *dyv = dyc.data<float>(), *yv = yc.data<float>(), *dxv = dxc.data<float>();
  const float s = static_cast<float>(1.0 / (1.0 - p));
  const int64_t n = x.numel();
  const int64_t plane = x.size(-1) * x.size(-2);
  int64_t kept = 0, plane_kept = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (xv[i] == 0.0f) return ::testing::AssertionFailure() << who << ": x has a zero at " << i << " (fixture)";
    const bool keep = yv[i] != 0.0f;
    if (keep && yv[i] != xv[i] * s)
      return ::testing::AssertionFailure() << who << ": y at " << index_str(i, x.shape()) << " is " << yv[i]
                                           << ", neither 0 nor x * s = " << xv[i] * s;
    const float want_dx = keep ? dyv[i] * s : 0.0f;
    if (dxv[i] != want_dx)
      return ::testing::AssertionFailure() << who << ": dx at " << index_str(i, x.shape()) << " is " << dxv[i]
                                           << ", the forward's mask gives " << want_dx
                                           << (keep ? " (kept)" : " (dropped)");
    kept += keep;
    plane_kept += keep;
    if ((i + 1) % plane == 0) {
      if (plane_kept == 0 || plane_kept == plane)
        return ::testing::AssertionFailure() << who << ": the plane ending at " << index_str(i, x.shape())
                                             << " is " << (plane_kept ? "kept" : "dropped")
                                             << " whole (a per-channel mask?)";
      plane_kept = 0;
    }
  }
  const double expect = static_cast<double>(n) * (1.0 - p), sd = std::sqrt(static_cast<double>(n) * p * (1.0 - p));
  if (std::fabs(static_cast<double>(kept) - expect) > 5.0 * sd)
    return ::testing::AssertionFailure() << who << ": kept " << kept << " of " << n << " at p = " << p
                                         << "; expected " << expect << " +- " << 5.0 * sd << " (5 sd)";
  *kept_out = kept;
  return ::testing::AssertionSuccess();
}

class DropoutGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(DropoutGolden, MatchesPyTorchValuesOrPyTorchsProperties) {
  const SafetensorsFile f = load_fixture(GetParam());
  const nlohmann::json p = params_of(f);
  const double rate = p["p"];
  const bool training = p["training"];
  Generator gen(p["seed"].get<uint64_t>());
  Variable x(f.at("x").clone(), true);
  Variable y = dropout(x, rate, training, gen);
  y.backward(f.at("dy"));
  ASSERT_TRUE(x.has_grad());
  if (!training || rate == 0.0 || rate == 1.0) {
    EXPECT_TRUE(close("y", y.tensor(), f.at("y"), 0.0));
    EXPECT_TRUE(close("dx", x.grad(), f.at("dx"), 0.0));
    return;
  }
  int64_t torch_kept = 0, ladnn_kept = 0;
  ASSERT_TRUE(dropout_properties("PyTorch", f.at("x"), f.at("dy"), f.at("y"), f.at("dx"), rate, &torch_kept));
  EXPECT_TRUE(dropout_properties("ladnn", f.at("x"), f.at("dy"), y.tensor(), x.grad(), rate, &ladnn_kept));
  const double n = static_cast<double>(f.at("x").numel());
  EXPECT_LE(std::fabs(static_cast<double>(torch_kept - ladnn_kept)), 5.0 * std::sqrt(2.0 * n * rate * (1.0 - rate)))
      << "kept: PyTorch " << torch_kept << ", ladnn " << ladnn_kept << " of " << n;
  Variable again = dropout(Variable(f.at("x")), rate, true, gen);
  EXPECT_NE(again.tensor().to_vector(), y.tensor().to_vector()) << "a second call replayed the same mask";
}

INSTANTIATE_TEST_SUITE_P(Golden, DropoutGolden, ::testing::ValuesIn(kDropoutCases), param_name);

}  // namespace
}  // namespace ladnn
