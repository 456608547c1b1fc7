// tests/layers_test.cpp — each layer computes its functional op with its own parameters; BatchNorm's
// buffers and counter; Dropout's modes; Sequential's chaining and names; argument and shape errors.
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "autograd/functions.h"
#include "autograd/gradcheck.h"
#include "layers/activation.h"
#include "layers/batchnorm2d.h"
#include "layers/conv2d.h"
#include "layers/dropout.h"
#include "layers/flatten.h"
#include "layers/linear.h"
#include "layers/pool.h"
#include "layers/sequential.h"
#include "tensor/ops.h"

using namespace ladnn;

namespace {

Variable randn(const Shape& s, Generator& g, DType dtype = DType::Float32) {
  return Variable(Tensor::normal(s, 0.0, 1.0, g, dtype));
}

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

// Exact equality: a layer must run the very same op on the very same tensors.
void expect_same(const Variable& a, const Tensor& b) {
  ASSERT_EQ(a.shape(), b.shape());
  EXPECT_EQ(ops::max_abs_diff(a.tensor(), b), 0.0);
}

}  // namespace

TEST(Layers, Conv2dComputesConv2d) {
  Generator g(1);
  for (auto [stride, pad, bias] :
       std::vector<std::tuple<int, int, bool>>{{1, 0, true}, {2, 1, true}, {1, 1, false}}) {
    Conv2d conv(3, 5, 3, stride, pad, bias, g);
    Variable x = randn({2, 3, 7, 6}, g);
    ops::Conv2dParams p;
    p.stride_h = p.stride_w = stride;
    p.pad_h = p.pad_w = pad;
    Tensor ref =
        ops::conv2d_forward(x.tensor(), conv.weight().tensor(), bias ? conv.bias().tensor() : Tensor(), p);
    expect_same(conv(x), ref);
    EXPECT_EQ(conv(x).shape(), (Shape{2, 5, (7 + 2 * pad - 3) / stride + 1, (6 + 2 * pad - 3) / stride + 1}));
  }
}

TEST(Layers, Conv2dGradientsReachItsParameters) {
  Generator g(2);
  Conv2d conv(2, 3, 3, 1, 1, true, g);
  conv.to(DType::Float64);
  Variable x(Tensor::normal({1, 2, 4, 5}, 0, 1, g, DType::Float64), true);
  sum(conv(x)).backward();
  ASSERT_TRUE(conv.weight().has_grad());
  ASSERT_TRUE(conv.bias().has_grad());
  // d sum(y) / d bias_k = number of output positions.
  for (double v : conv.bias().grad().to_vector()) EXPECT_DOUBLE_EQ(v, 20.0);
  EXPECT_EQ(conv.weight().grad().shape(), conv.weight().shape());
  // And the whole layer passes gradcheck with respect to its input.
  GradcheckResult r =
      gradcheck([&](const std::vector<Variable>& in) { return conv(in[0]); }, {Variable(x.tensor(), true)});
  EXPECT_TRUE(r.ok) << r.message;
}

TEST(Layers, Conv2dErrors) {
  EXPECT_TRUE(contains(error_of([] { Conv2d(0, 4, 3); }), "Conv2d: channel counts must be positive"));
  EXPECT_TRUE(contains(error_of([] { Conv2d(3, 4, 0); }), "Conv2d: kernel_size must be positive, got 0"));
  EXPECT_TRUE(contains(error_of([] { Conv2d(3, 4, 3, 0); }), "Conv2d: stride must be positive, got 0"));
  EXPECT_TRUE(contains(error_of([] { Conv2d(3, 4, 3, 1, -1); }), "Conv2d: padding must be non-negative"));
  Conv2d conv(3, 4, 3);
  EXPECT_EQ(error_of([&] {
              conv(Variable(Tensor::zeros({3, 8, 8})));
            }),
            "Conv2d: expected input (N, 3, H, W), got (3, 8, 8)");
  EXPECT_EQ(error_of([&] {
              conv(Variable(Tensor::zeros({1, 2, 8, 8})));
            }),
            "Conv2d: expected input (N, 3, H, W), got (1, 2, 8, 8)");
  // forward_into records no gradient: refused while gradients are on; with them off it writes out.
  const Tensor x = Tensor::ones({1, 3, 8, 8}), out = Tensor::zeros({1, 4, 6, 6});
  EXPECT_EQ(error_of([&] { conv.forward_into(x, out); }),
            "Conv2d::forward_into: records no gradient; call it with gradients off (NoGradGuard)");
  {
    NoGradGuard no_grad;
    conv.forward_into(x, out);
  }
  EXPECT_EQ(ops::max_abs_diff(out, conv(Variable(x)).tensor()), 0.0);
}

TEST(Layers, BatchNormTrainingMatchesTheOpAndCounts) {
  Generator g(3);
  BatchNorm2d bn(4, 1e-3, 0.2);
  // Non-trivial affine parameters, so that a swapped gamma/beta would show.
  Variable gamma = bn.weight(), beta = bn.bias();
  gamma.mutable_tensor().copy_(Tensor::uniform({4}, 0.5, 1.5, g));
  beta.mutable_tensor().copy_(Tensor::uniform({4}, -0.5, 0.5, g));
  Tensor rm = bn.running_mean().clone(), rv = bn.running_var().clone();

  for (int step = 1; step <= 3; ++step) {
    Variable x(Tensor::normal({3, 4, 5, 2}, 1.0, 2.0, g));
    Variable y = bn(x);
    ops::BatchNormForward ref = ops::batch_norm_forward_train(x.tensor(), bn.weight().tensor(),
                                                              bn.bias().tensor(), rm, rv, 0.2, 1e-3);
    expect_same(y, ref.y);
    EXPECT_EQ(ops::max_abs_diff(bn.running_mean(), rm), 0.0);
    EXPECT_EQ(ops::max_abs_diff(bn.running_var(), rv), 0.0);
    EXPECT_EQ(bn.num_batches_tracked(), step);
  }
  // The running statistics moved away from their initial values.
  EXPECT_GT(ops::max_abs_diff(bn.running_mean(), Tensor::zeros({4})), 0.1);

  bn.eval();
  Variable x(Tensor::normal({2, 4, 3, 3}, 0.0, 1.0, g));
  Tensor ref =
      ops::batch_norm_forward_eval(x.tensor(), bn.weight().tensor(), bn.bias().tensor(), rm, rv, 1e-3);
  expect_same(bn(x), ref);
  EXPECT_EQ(bn.num_batches_tracked(), 3);                    // eval forwards are not counted
  EXPECT_EQ(ops::max_abs_diff(bn.running_mean(), rm), 0.0);  // nor do they move the statistics
}

// forward_relu is relu(forward): same output, same statistics and counter, in both modes.
TEST(Layers, BatchNormForwardReluIsReluOfForward) {
  Generator g(5);
  BatchNorm2d plain(4), fused(4);
  for (BatchNorm2d* bn : {&plain, &fused}) {
    Variable w = bn->weight(), b = bn->bias();  // handles: the copies write the modules' parameters
    w.mutable_tensor().copy_(Tensor::full({4}, 1.25));
    b.mutable_tensor().copy_(Tensor::from_vector({-0.5, 0.0, 0.25, 0.5}, {4}));
  }
  for (int step = 1; step <= 2; ++step) {
    Variable x(Tensor::normal({3, 4, 5, 2}, 0.5, 2.0, g));
    expect_same(fused.forward_relu(x), relu(plain(x)).tensor());
    EXPECT_EQ(ops::max_abs_diff(fused.running_mean(), plain.running_mean()), 0.0);
    EXPECT_EQ(ops::max_abs_diff(fused.running_var(), plain.running_var()), 0.0);
    EXPECT_EQ(fused.num_batches_tracked(), step);
  }
  plain.eval();
  fused.eval();
  Variable x(Tensor::normal({2, 4, 3, 3}, 0.0, 1.0, g));
  expect_same(fused.forward_relu(x), relu(plain(x)).tensor());
  EXPECT_EQ(fused.num_batches_tracked(), 2);
}

TEST(Layers, BatchNormErrors) {
  EXPECT_TRUE(contains(error_of([] { BatchNorm2d(0); }), "BatchNorm2d: num_features must be positive"));
  EXPECT_TRUE(contains(error_of([] { BatchNorm2d(3, 0.0); }), "BatchNorm2d: eps must be positive"));
  EXPECT_TRUE(
      contains(error_of([] { BatchNorm2d(3, 1e-5, 1.5); }), "BatchNorm2d: momentum must be in [0, 1]"));
  BatchNorm2d bn(3);
  EXPECT_EQ(error_of([&] {
              bn(Variable(Tensor::zeros({2, 4, 3, 3})));
            }),
            "BatchNorm2d: expected input (N, 3, H, W), got (2, 4, 3, 3)");
  EXPECT_EQ(bn.num_batches_tracked(), 0);  // a refused call is not counted
  bn.eval();
  EXPECT_EQ(error_of([&] { bn.forward_train(Tensor::zeros({2, 3, 3, 3}), ops::BnAct::None); }),
            "BatchNorm2d::forward_train: the layer is in eval mode");
  bn.train();
  EXPECT_EQ(error_of([&] { bn.forward_train(Tensor::zeros({2, 4, 3, 3}), ops::BnAct::None); }),
            "BatchNorm2d: expected input (N, 3, H, W), got (2, 4, 3, 3)");
  EXPECT_EQ(bn.num_batches_tracked(), 0);
}

TEST(Layers, ReLUComputesRelu) {
  Generator g(4);
  Variable x = randn({2, 3, 4, 5}, g);
  ReLU relu;
  expect_same(relu(x), ops::relu(x.tensor()));
  Sigmoid sig;
  expect_same(sig(x), ops::sigmoid(x.tensor()));
}

TEST(Layers, PoolsComputeTheirOps) {
  Generator g(5);
  Variable x = randn({2, 3, 9, 8}, g);

  MaxPool2d mp(3, 2, 1);
  ops::Pool2dParams pm;
  pm.kernel_h = pm.kernel_w = 3;
  pm.stride_h = pm.stride_w = 2;
  pm.pad_h = pm.pad_w = 1;
  expect_same(mp(x), ops::max_pool2d_forward(x.tensor(), pm).y);

  MaxPool2d mp_default(2);  // stride defaults to the kernel size
  EXPECT_EQ(mp_default.params().stride_h, 2);
  EXPECT_EQ(mp_default(x).shape(), (Shape{2, 3, 4, 4}));

  AvgPool2d ap(2, 2, 1, /*ceil_mode=*/true, /*count_include_pad=*/false);
  ops::Pool2dParams pa;
  pa.pad_h = pa.pad_w = 1;
  pa.ceil_mode = true;
  pa.count_include_pad = false;
  expect_same(ap(x), ops::avg_pool2d_forward(x.tensor(), pa));

  AdaptiveAvgPool2d gap(1);
  expect_same(gap(x), ops::adaptive_avg_pool2d_forward(x.tensor(), 1, 1));
  AdaptiveAvgPool2d ada(4, 3);
  expect_same(ada(x), ops::adaptive_avg_pool2d_forward(x.tensor(), 4, 3));
}

TEST(Layers, PoolErrors) {
  EXPECT_TRUE(contains(error_of([] { MaxPool2d(0); }), "MaxPool2d: kernel_size must be positive, got 0"));
  EXPECT_TRUE(contains(error_of([] { AvgPool2d(2, -1); }), "AvgPool2d: stride must be positive"));
  EXPECT_TRUE(
      contains(error_of([] { MaxPool2d(3, 1, 2); }),
               "MaxPool2d: padding must be in [0, kernel_size / 2], got padding 2 for kernel_size 3"));
  EXPECT_TRUE(contains(error_of([] { AdaptiveAvgPool2d(0, 2); }),
                       "AdaptiveAvgPool2d: output size must be positive, got (0, 2)"));
  AdaptiveAvgPool2d gap(1);
  EXPECT_EQ(error_of([&] {
              gap(Variable(Tensor::zeros({3, 4})));
            }),
            "AdaptiveAvgPool2d: expected a 4-D input (N, C, H, W), got (3, 4)");
}

TEST(Layers, LinearComputesLinear) {
  Generator g(6);
  Linear lin(7, 3, true, g);
  Variable x = randn({5, 7}, g);
  expect_same(lin(x), ops::linear(x.tensor(), lin.weight().tensor(), lin.bias().tensor()));
  Linear nob(7, 3, false, g);
  EXPECT_FALSE(nob.bias().defined());
  expect_same(nob(x), ops::linear(x.tensor(), nob.weight().tensor(), Tensor()));
  EXPECT_TRUE(contains(error_of([] { Linear(0, 3); }), "Linear: feature counts must be positive"));
  EXPECT_EQ(error_of([&] { lin(randn({5, 6}, g)); }), "Linear: expected input (N, 7), got (5, 6)");
}

TEST(Layers, DropoutTrainingDrawsFromItsGeneratorAndEvalIsIdentity) {
  Generator data(7);
  Variable x = randn({4, 50}, data);
  Generator g(99), g_ref(99);
  Dropout drop(0.3, g);
  Variable y = drop(x);
  Tensor mask = ops::dropout_mask(x.shape(), 0.3, g_ref);
  expect_same(y, ops::mul(x.tensor(), mask));
  // Some elements dropped, survivors scaled by 1 / (1 - p).
  int zeros = 0;
  std::vector<double> xv = x.tensor().to_vector(), yv = y.tensor().to_vector();
  for (size_t i = 0; i < yv.size(); ++i) {
    if (yv[i] == 0.0)
      ++zeros;
    else
      EXPECT_NEAR(yv[i], xv[i] / 0.7, 1e-5 * std::abs(xv[i]) + 1e-7);
  }
  EXPECT_GT(zeros, 20);  // expected 60 of 200; these bounds are > 5 standard deviations away
  EXPECT_LT(zeros, 100);

  drop.eval();
  expect_same(drop(x), x.tensor());
  Dropout none(0.0, g);
  expect_same(none(x), x.tensor());

  EXPECT_TRUE(contains(error_of([] { Dropout(1.5); }), "Dropout: probability has to be between 0 and 1"));
  EXPECT_TRUE(contains(error_of([] { Dropout(-0.1); }), "Dropout: probability has to be between 0 and 1"));
}

TEST(Layers, SequentialChainsAndNamesLikePyTorch) {
  Generator g(8);
  auto conv = std::make_shared<Conv2d>(2, 3, 3, 1, 1, true, g);
  auto bn = std::make_shared<BatchNorm2d>(3);
  auto relu = std::make_shared<ReLU>();
  auto seq = std::make_shared<Sequential>(std::initializer_list<std::shared_ptr<Module>>{conv, bn, relu});
  seq->push_back("pool", std::make_shared<AdaptiveAvgPool2d>(1));
  seq->push_back(std::make_shared<Flatten>());
  ASSERT_EQ(seq->size(), 5u);
  EXPECT_EQ(seq->state_dict().keys(),
            (std::vector<std::string>{"0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean",
                                      "1.running_var", "1.num_batches_tracked"}));
  std::vector<std::string> children;
  for (auto& c : seq->named_children()) children.push_back(c.first);
  EXPECT_EQ(children, (std::vector<std::string>{"0", "1", "2", "pool", "4"}));
  EXPECT_EQ((*seq)[3]->type_name(), "AdaptiveAvgPool2d");
  EXPECT_THROW((*seq)[5], std::out_of_range);

  seq->eval();  // BatchNorm in eval, so that running the chain by hand sees the same statistics
  Variable x = randn({2, 2, 5, 5}, g);
  Variable by_hand = flatten(adaptive_avg_pool2d(relu->forward(bn->forward(conv->forward(x))), 1, 1), 1);
  Variable y = (*seq)(x);
  EXPECT_EQ(y.shape(), (Shape{2, 3}));
  expect_same(y, by_hand.tensor());
  EXPECT_EQ(error_of([&] { seq->push_back("pool", std::make_shared<ReLU>()); }),
            "Sequential::register_module: name 'pool' is already a submodule of this module");
}
