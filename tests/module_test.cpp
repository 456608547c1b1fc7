// tests/module_test.cpp — the Module tree: PyTorch names, registration checks, train/eval, state dicts
// (order, shared storage, round trip, one error listing every bad key) and PyTorch's initialisations.
#include "layers/module.h"

#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "autograd/functions.h"
#include "layers/activation.h"
#include "layers/batchnorm2d.h"
#include "layers/conv2d.h"
#include "layers/dropout.h"
#include "layers/linear.h"
#include "layers/pool.h"
#include "layers/sequential.h"
#include "tensor/ops.h"

using namespace ladnn;

namespace {

// torchvision's _DenseLayer naming, shrunk: norm1, relu1, conv1, norm2, relu2, conv2; the output is
// the input with the new features appended (cat along channels).
struct DenseLayer : Module {
  std::vector<std::shared_ptr<Module>> chain;
  DenseLayer(int64_t in, int64_t growth, Generator& g) : Module("DenseLayer") {
    chain.push_back(register_module("norm1", std::make_shared<BatchNorm2d>(in)));
    chain.push_back(register_module("relu1", std::make_shared<ReLU>()));
    chain.push_back(register_module("conv1", std::make_shared<Conv2d>(in, 4 * growth, 1, 1, 0, false, g)));
    chain.push_back(register_module("norm2", std::make_shared<BatchNorm2d>(4 * growth)));
    chain.push_back(register_module("relu2", std::make_shared<ReLU>()));
    chain.push_back(
        register_module("conv2", std::make_shared<Conv2d>(4 * growth, growth, 3, 1, 1, false, g)));
  }
  Variable forward(const Variable& x) override {
    Variable h = x;
    for (auto& m : chain) h = m->forward(h);
    return cat({x, h}, 1);
  }
};

// A two-level tree: Net { features: Sequential { conv0, norm0, denseblock1: Sequential { denselayer1 } },
// classifier: Linear }.
struct Net : Module {
  std::shared_ptr<Sequential> features;
  std::shared_ptr<Linear> classifier;
  explicit Net(uint64_t seed, int64_t classes = 3) : Module("Net") {
    Generator g(seed);
    features = register_module("features", std::make_shared<Sequential>());
    features->push_back("conv0", std::make_shared<Conv2d>(3, 4, 3, 1, 1, false, g));
    features->push_back("norm0", std::make_shared<BatchNorm2d>(4));
    auto block = std::make_shared<Sequential>();
    block->push_back("denselayer1", std::make_shared<DenseLayer>(4, 2, g));
    features->push_back("denseblock1", block);
    classifier = register_module("classifier", std::make_shared<Linear>(6, classes, true, g));
  }
};

std::vector<std::string> names_of(const std::vector<std::pair<std::string, Variable>>& v) {
  std::vector<std::string> out;
  for (auto& p : v) out.push_back(p.first);
  return out;
}
template <typename T>
std::vector<std::string> first_of(const std::vector<std::pair<std::string, T>>& v) {
  std::vector<std::string> out;
  for (auto& p : v) out.push_back(p.first);
  return out;
}

// Runs `fn`, expects std::invalid_argument, and returns its message.
template <typename Fn>
std::string error_of(Fn&& fn) {
  try {
    fn();
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected std::invalid_argument";
  return "";
}

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

}  // namespace

TEST(Module, ParameterNamesFollowPyTorch) {
  auto net = std::make_shared<Net>(1);
  const std::vector<std::string> expected = {
      "features.conv0.weight",
      "features.norm0.weight",
      "features.norm0.bias",
      "features.denseblock1.denselayer1.norm1.weight",
      "features.denseblock1.denselayer1.norm1.bias",
      "features.denseblock1.denselayer1.conv1.weight",
      "features.denseblock1.denselayer1.norm2.weight",
      "features.denseblock1.denselayer1.norm2.bias",
      "features.denseblock1.denselayer1.conv2.weight",
      "classifier.weight",
      "classifier.bias",
  };
  EXPECT_EQ(names_of(net->named_parameters()), expected);
  EXPECT_EQ(net->parameters().size(), expected.size());
  for (const Variable& p : net->parameters()) {
    EXPECT_TRUE(p.requires_grad());
    EXPECT_TRUE(p.is_leaf());
  }
  EXPECT_EQ(net->named_parameters()[0].second.shape(), (Shape{4, 3, 3, 3}));
  EXPECT_EQ(net->named_parameters()[5].second.shape(), (Shape{8, 4, 1, 1}));

  const std::vector<std::string> buffers = {
      "features.norm0.running_mean",
      "features.norm0.running_var",
      "features.norm0.num_batches_tracked",
      "features.denseblock1.denselayer1.norm1.running_mean",
      "features.denseblock1.denselayer1.norm1.running_var",
      "features.denseblock1.denselayer1.norm1.num_batches_tracked",
      "features.denseblock1.denselayer1.norm2.running_mean",
      "features.denseblock1.denselayer1.norm2.running_var",
      "features.denseblock1.denselayer1.norm2.num_batches_tracked",
  };
  EXPECT_EQ(first_of(net->named_buffers()), buffers);

  const std::vector<std::string> modules = {
      "",
      "features",
      "features.conv0",
      "features.norm0",
      "features.denseblock1",
      "features.denseblock1.denselayer1",
      "features.denseblock1.denselayer1.norm1",
      "features.denseblock1.denselayer1.relu1",
      "features.denseblock1.denselayer1.conv1",
      "features.denseblock1.denselayer1.norm2",
      "features.denseblock1.denselayer1.relu2",
      "features.denseblock1.denselayer1.conv2",
      "classifier",
  };
  auto named = net->named_modules();
  EXPECT_EQ(first_of(named), modules);
  EXPECT_EQ(named[0].second.get(), net.get());
  EXPECT_EQ(named[3].second->type_name(), "BatchNorm2d");
  EXPECT_EQ(first_of(net->named_children()), (std::vector<std::string>{"features", "classifier"}));
}

TEST(Module, StateDictOrderIsParamsThenBuffersPerModule) {
  auto net = std::make_shared<Net>(1);
  const std::vector<std::string> expected = {
      "features.conv0.weight",
      "features.norm0.weight",
      "features.norm0.bias",
      "features.norm0.running_mean",
      "features.norm0.running_var",
      "features.norm0.num_batches_tracked",
      "features.denseblock1.denselayer1.norm1.weight",
      "features.denseblock1.denselayer1.norm1.bias",
      "features.denseblock1.denselayer1.norm1.running_mean",
      "features.denseblock1.denselayer1.norm1.running_var",
      "features.denseblock1.denselayer1.norm1.num_batches_tracked",
      "features.denseblock1.denselayer1.conv1.weight",
      "features.denseblock1.denselayer1.norm2.weight",
      "features.denseblock1.denselayer1.norm2.bias",
      "features.denseblock1.denselayer1.norm2.running_mean",
      "features.denseblock1.denselayer1.norm2.running_var",
      "features.denseblock1.denselayer1.norm2.num_batches_tracked",
      "features.denseblock1.denselayer1.conv2.weight",
      "classifier.weight",
      "classifier.bias",
  };
  StateDict sd = net->state_dict();
  EXPECT_EQ(sd.keys(), expected);
  EXPECT_EQ(sd.at("features.norm0.num_batches_tracked").dtype(), DType::Int64);
  EXPECT_EQ(sd.at("features.norm0.num_batches_tracked").dim(), 0);
}

TEST(Module, StateDictSharesStorage) {
  auto net = std::make_shared<Net>(2);
  StateDict sd = net->state_dict();
  EXPECT_TRUE(sd.at("classifier.weight").shares_storage(net->classifier->weight().tensor()));
  // Writing through the state dict writes into the model.
  sd.at("classifier.bias").fill_(0.25);
  for (double v : net->classifier->bias().tensor().to_vector()) EXPECT_EQ(v, 0.25);
  auto bn = std::dynamic_pointer_cast<BatchNorm2d>(net->submodule("features.norm0"));
  ASSERT_NE(bn, nullptr);
  EXPECT_TRUE(sd.at("features.norm0.running_var").shares_storage(bn->running_var()));
}

TEST(Module, SubmoduleLookupByPath) {
  auto net = std::make_shared<Net>(1);
  auto conv = net->submodule("features.denseblock1.denselayer1.conv2");
  EXPECT_EQ(conv->type_name(), "Conv2d");
  EXPECT_EQ(net->child("classifier").get(), net->classifier.get());
  try {
    net->submodule("features.denseblock2.denselayer1");
    ADD_FAILURE() << "expected std::out_of_range";
  } catch (const std::out_of_range& e) {
    EXPECT_TRUE(contains(e.what(), "'features' (Sequential) has no submodule 'denseblock2'")) << e.what();
  }
  EXPECT_THROW(net->child("nope"), std::out_of_range);
  EXPECT_THROW(net->classifier->parameter("nope"), std::out_of_range);
  EXPECT_THROW(net->classifier->buffer("running_mean"), std::out_of_range);
}

TEST(Module, RegistrationValidatesNames) {
  Module m("Custom");
  m.register_parameter("w", Tensor::zeros({2}));
  m.register_buffer("b", Tensor::zeros({2}));
  m.register_module("c", std::make_shared<ReLU>());

  EXPECT_TRUE(contains(error_of([&] { m.register_parameter("", Tensor::zeros({1})); }),
                       "Custom::register_parameter: name must not be empty"));
  EXPECT_TRUE(contains(error_of([&] { m.register_buffer("a.b", Tensor::zeros({1})); }),
                       "name 'a.b' must not contain '.'"));
  EXPECT_TRUE(contains(error_of([&] { m.register_parameter("w", Tensor::zeros({1})); }),
                       "'w' is already a parameter"));
  EXPECT_TRUE(
      contains(error_of([&] { m.register_parameter("b", Tensor::zeros({1})); }), "'b' is already a buffer"));
  EXPECT_TRUE(
      contains(error_of([&] { m.register_buffer("c", Tensor::zeros({1})); }), "'c' is already a submodule"));
  EXPECT_TRUE(contains(error_of([&] { m.register_module("w", std::make_shared<ReLU>()); }),
                       "'w' is already a parameter"));
  EXPECT_TRUE(contains(error_of([&] { m.register_parameter("u", Tensor()); }), "undefined"));
  EXPECT_TRUE(contains(error_of([&] { m.register_parameter("i", Tensor::zeros({1}, DType::Int64)); }),
                       "parameters must be floating"));
  EXPECT_TRUE(contains(error_of([&] { m.register_module("n", std::shared_ptr<Module>()); }), "is null"));
  // The registered set is unchanged by the failures.
  EXPECT_EQ(m.named_parameters().size(), 1u);
  EXPECT_EQ(m.named_buffers().size(), 1u);
  EXPECT_EQ(m.named_children().size(), 1u);
}

TEST(Module, RefusesCycles) {
  auto a = std::make_shared<Sequential>();
  auto b = std::make_shared<Sequential>();
  a->push_back(b);
  EXPECT_TRUE(contains(error_of([&] { b->push_back(a); }), "cycle"));
  EXPECT_TRUE(contains(error_of([&] { a->push_back(a); }), "cycle"));
}

TEST(Module, SharedSubmoduleIsListedOnceButSavedUnderEachName) {
  auto lin = std::make_shared<Linear>(2, 2);
  auto seq = std::make_shared<Sequential>();
  seq->push_back(lin);
  seq->push_back(std::make_shared<ReLU>());
  seq->push_back(lin);
  EXPECT_EQ(names_of(seq->named_parameters()), (std::vector<std::string>{"0.weight", "0.bias"}));
  EXPECT_EQ(first_of(seq->named_modules()), (std::vector<std::string>{"", "0", "1"}));
  EXPECT_EQ(seq->state_dict().keys(), (std::vector<std::string>{"0.weight", "0.bias", "2.weight", "2.bias"}));
}

TEST(Module, NamedModulesNeedsSharedOwnership) {
  Linear lin(2, 2);
  EXPECT_TRUE(contains(error_of([&] { lin.named_modules(); }), "std::shared_ptr"));
}

TEST(Module, BaseForwardThrows) {
  Module m("Container");
  Variable x(Tensor::zeros({1}));
  try {
    m(x);
    ADD_FAILURE() << "expected std::logic_error";
  } catch (const std::logic_error& e) {
    EXPECT_TRUE(contains(e.what(), "Container::forward")) << e.what();
  }
}

TEST(Module, TrainAndEvalRecurse) {
  auto net = std::make_shared<Net>(1);
  for (auto& m : net->named_modules()) EXPECT_TRUE(m.second->is_training()) << m.first;
  net->eval();
  for (auto& m : net->named_modules()) EXPECT_FALSE(m.second->is_training()) << m.first;
  net->features->train();
  EXPECT_FALSE(net->is_training());
  EXPECT_FALSE(net->classifier->is_training());
  EXPECT_TRUE(net->submodule("features.denseblock1.denselayer1.norm2")->is_training());
  net->train(true);
  for (auto& m : net->named_modules()) EXPECT_TRUE(m.second->is_training()) << m.first;
}

TEST(Module, ParametersAreSharedWithTheModel) {
  auto lin = std::make_shared<Linear>(3, 2);
  std::vector<Variable> params = lin->parameters();
  ASSERT_EQ(params.size(), 2u);
  EXPECT_TRUE(params[0].same(lin->weight()));
  // An in-place update through the list (what an optimizer does) is seen by the layer.
  params[0].mutable_tensor().fill_(0.5);
  EXPECT_EQ(lin->weight().tensor().at({1, 2}), 0.5);
  // And gradients from a forward reach the same Variables; zero_grad clears them tree-wide.
  Variable x(Tensor::ones({4, 3}));
  sum((*lin)(x)).backward();
  EXPECT_TRUE(params[0].has_grad());
  EXPECT_TRUE(params[1].has_grad());
  lin->zero_grad();
  EXPECT_FALSE(params[0].has_grad());
  EXPECT_FALSE(params[1].has_grad());
}

TEST(Module, StateDictRoundTripReproducesTheModel) {
  auto a = std::make_shared<Net>(1);
  auto b = std::make_shared<Net>(2);
  // Give a's BatchNorms non-trivial running statistics and counters first.
  Generator g(7);
  Variable x(Tensor::normal({2, 3, 5, 5}, 0.3, 2.0, g));
  a->features->forward(x);
  a->features->forward(x);

  StateDict sa = a->state_dict();
  ASSERT_GT(ops::max_abs_diff(sa.at("classifier.weight"), b->state_dict().at("classifier.weight")), 0.0);
  b->load_state_dict(sa);
  StateDict sb = b->state_dict();
  ASSERT_EQ(sb.keys(), sa.keys());
  for (const auto& item : sa) {
    EXPECT_FALSE(sb.at(item.first).shares_storage(item.second)) << item.first << " must be copied";
    EXPECT_EQ(sb.at(item.first).to_vector(), item.second.to_vector()) << item.first;
  }
  EXPECT_EQ(sb.at("features.norm0.num_batches_tracked").item(), 2.0);

  a->eval();
  b->eval();
  Variable ya = a->features->forward(x);
  Variable yb = b->features->forward(x);
  EXPECT_EQ(ops::max_abs_diff(ya.tensor(), yb.tensor()), 0.0);
}

TEST(Module, LoadConvertsDtype) {
  auto a = std::make_shared<Net>(1);
  auto b = std::make_shared<Net>(2);
  StateDict sd;
  for (const auto& item : a->state_dict())
    sd.insert(item.first, item.second.dtype() == DType::Int64 ? item.second : item.second.to(DType::Float64));
  b->load_state_dict(sd);
  EXPECT_EQ(b->classifier->weight().dtype(), DType::Float32);
  EXPECT_EQ(b->classifier->weight().tensor().to_vector(), a->classifier->weight().tensor().to_vector());
}

TEST(Module, LoadErrorListsEveryBadKeyAndCopiesNothing) {
  auto net = std::make_shared<Net>(1);
  const std::vector<double> before = net->classifier->weight().tensor().to_vector();

  StateDict sd = std::make_shared<Net>(2)->state_dict();
  sd.erase("features.norm0.running_var");
  sd.erase("classifier.bias");
  sd.insert("features.norm9.weight", Tensor::zeros({4}));
  sd.insert("extra", Tensor::zeros({1}));
  sd.set("classifier.weight", Tensor::zeros({5, 6}));
  sd.set("features.conv0.weight", Tensor::zeros({4, 3, 1, 1}));

  std::string msg = error_of([&] { net->load_state_dict(sd); });
  EXPECT_TRUE(contains(msg, "Error(s) in loading state_dict for Net")) << msg;
  EXPECT_TRUE(contains(msg, "2 missing key(s): features.norm0.running_var, classifier.bias.")) << msg;
  EXPECT_TRUE(contains(msg, "2 unexpected key(s): features.norm9.weight, extra.")) << msg;
  EXPECT_TRUE(
      contains(msg,
               "2 shape mismatch(es): "
               "features.conv0.weight: checkpoint has shape (4, 3, 1, 1), model has shape (4, 3, 3, 3); "
               "classifier.weight: checkpoint has shape (5, 6), model has shape (3, 6)."))
      << msg;
  // Checked before copying: the valid entries were not loaded either.
  EXPECT_EQ(net->classifier->weight().tensor().to_vector(), before);
}

TEST(Module, NonStrictLoadIgnoresKeysButNotShapes) {
  auto net = std::make_shared<Net>(1);
  auto other = std::make_shared<Net>(2);
  StateDict sd = other->state_dict();
  sd.erase("classifier.bias");
  sd.insert("extra", Tensor::zeros({1}));
  const std::vector<double> bias_before = net->classifier->bias().tensor().to_vector();
  net->load_state_dict(sd, /*strict=*/false);
  EXPECT_EQ(net->classifier->weight().tensor().to_vector(), other->classifier->weight().tensor().to_vector());
  EXPECT_EQ(net->classifier->bias().tensor().to_vector(), bias_before);
  EXPECT_THROW(net->load_state_dict(sd, /*strict=*/true), std::invalid_argument);

  sd.set("classifier.weight", Tensor::zeros({6, 3}));
  std::string msg = error_of([&] { net->load_state_dict(sd, /*strict=*/false); });
  EXPECT_TRUE(contains(msg, "classifier.weight: checkpoint has shape (6, 3), model has shape (3, 6)")) << msg;
  EXPECT_FALSE(contains(msg, "missing")) << msg;
}

TEST(Module, ToDtypeConvertsFloatsAndKeepsCounters) {
  auto net = std::make_shared<Net>(1);
  std::vector<Variable> handles = net->parameters();
  const std::vector<double> w = net->classifier->weight().tensor().to_vector();
  net->to(DType::Float64);
  for (const auto& item : net->state_dict()) {
    if (item.first.find("num_batches_tracked") != std::string::npos)
      EXPECT_EQ(item.second.dtype(), DType::Int64) << item.first;
    else
      EXPECT_EQ(item.second.dtype(), DType::Float64) << item.first;
  }
  // Handles taken before the move (an optimizer's) see the converted data.
  EXPECT_EQ(handles.back().dtype(), DType::Float64);
  EXPECT_EQ(net->classifier->weight().tensor().to_vector(), w);
  // The model runs in float64.
  Generator g(3);
  Variable x(Tensor::normal({2, 3, 4, 4}, 0, 1, g, DType::Float64));
  EXPECT_EQ(net->features->forward(x).dtype(), DType::Float64);
}

TEST(StateDict, OrderedLookupAndErrors) {
  StateDict sd;
  sd.insert("b", Tensor::zeros({1}));
  sd.insert("a", Tensor::ones({2}));
  EXPECT_EQ(sd.keys(), (std::vector<std::string>{"b", "a"}));
  EXPECT_EQ(sd.at("a").numel(), 2);
  EXPECT_TRUE(sd.contains("b"));
  EXPECT_FALSE(sd.contains("c"));
  EXPECT_THROW(sd.insert("a", Tensor::zeros({1})), std::invalid_argument);
  EXPECT_THROW(sd.at("c"), std::out_of_range);
  sd.set("a", Tensor::zeros({3}));
  EXPECT_EQ(sd.at("a").numel(), 3);
  EXPECT_TRUE(sd.erase("b"));
  EXPECT_FALSE(sd.erase("b"));
  EXPECT_EQ(sd.keys(), (std::vector<std::string>{"a"}));
  EXPECT_EQ(sd.at("a").numel(), 3);
}

// ---- initialisation -------------------------------------------------------------------------------

namespace {
struct Moments {
  double min, max, mean, var;
};
Moments moments(const Tensor& t) {
  std::vector<double> v = t.to_vector();
  Moments m{v[0], v[0], 0, 0};
  for (double x : v) {
    m.min = std::min(m.min, x);
    m.max = std::max(m.max, x);
    m.mean += x;
  }
  m.mean /= static_cast<double>(v.size());
  for (double x : v) m.var += (x - m.mean) * (x - m.mean);
  m.var /= static_cast<double>(v.size());
  return m;
}
// U(-b, b): all values inside, extremes near b, mean 0 and variance b^2 / 3. With n samples the
// sample mean has std b / sqrt(3n) and the sample variance relative std sqrt(0.8 / n); the checks use
// 5 of those standard deviations, and the extremes lie within b * 20 / n of +-b except with
// probability ~2e-9.
void expect_uniform(const Tensor& t, double b, const std::string& what) {
  const double n = static_cast<double>(t.numel());
  Moments m = moments(t);
  EXPECT_GE(m.min, -b) << what;
  EXPECT_LE(m.max, b) << what;
  EXPECT_LT(m.min, -b + b * 20.0 / n) << what;
  EXPECT_GT(m.max, b - b * 20.0 / n) << what;
  EXPECT_NEAR(m.mean, 0.0, 5.0 * b / std::sqrt(3.0 * n)) << what;
  EXPECT_NEAR(m.var / (b * b / 3.0), 1.0, 5.0 * std::sqrt(0.8 / n)) << what;
}
}  // namespace

TEST(ModuleInit, Conv2dFollowsPyTorch) {
  Generator g(11);
  Conv2d conv(16, 64, 3, 1, 1, true, g);  // fan_in = 16 * 3 * 3 = 144
  ASSERT_EQ(conv.weight().shape(), (Shape{64, 16, 3, 3}));
  // kaiming_uniform(a = sqrt 5): sqrt(3) * sqrt(2 / 6) / sqrt(fan_in) = 1 / sqrt(fan_in).
  expect_uniform(conv.weight().tensor(), 1.0 / 12.0, "conv weight");
  Conv2d wide(64, 512, 1, 1, 0, true, g);  // bias: 512 samples of U(-1/8, 1/8)
  expect_uniform(wide.bias().tensor(), 1.0 / 8.0, "conv bias");
  EXPECT_EQ(wide.bias().shape(), (Shape{512}));
  Conv2d nobias(3, 4, 3, 1, 0, false, g);
  EXPECT_FALSE(nobias.bias().defined());
  EXPECT_EQ(nobias.named_parameters().size(), 1u);
}

TEST(ModuleInit, LinearFollowsPyTorch) {
  Generator g(12);
  Linear lin(100, 300, true, g);
  ASSERT_EQ(lin.weight().shape(), (Shape{300, 100}));
  expect_uniform(lin.weight().tensor(), 0.1, "linear weight");
  expect_uniform(Linear(400, 1000, true, g).bias().tensor(), 0.05, "linear bias");
}

TEST(ModuleInit, BatchNormStartsAtIdentity) {
  BatchNorm2d bn(5);
  for (double v : bn.weight().tensor().to_vector()) EXPECT_EQ(v, 1.0);
  for (double v : bn.bias().tensor().to_vector()) EXPECT_EQ(v, 0.0);
  for (double v : bn.running_mean().to_vector()) EXPECT_EQ(v, 0.0);
  for (double v : bn.running_var().to_vector()) EXPECT_EQ(v, 1.0);
  EXPECT_EQ(bn.num_batches_tracked(), 0);
  EXPECT_EQ(bn.eps(), 1e-5);
  EXPECT_EQ(bn.momentum(), 0.1);
}

TEST(ModuleInit, SameSeedSameWeights) {
  Generator g1(5), g2(5), g3(6);
  Conv2d a(3, 8, 3, 1, 0, true, g1), b(3, 8, 3, 1, 0, true, g2), c(3, 8, 3, 1, 0, true, g3);
  EXPECT_EQ(a.weight().tensor().to_vector(), b.weight().tensor().to_vector());
  EXPECT_EQ(a.bias().tensor().to_vector(), b.bias().tensor().to_vector());
  EXPECT_GT(ops::max_abs_diff(a.weight().tensor(), c.weight().tensor()), 0.0);
  // The default generator is used when none is passed, and manual_seed makes it repeatable.
  manual_seed(42);
  Linear d(4, 4);
  manual_seed(42);
  Linear e(4, 4);
  EXPECT_EQ(d.weight().tensor().to_vector(), e.weight().tensor().to_vector());
}
