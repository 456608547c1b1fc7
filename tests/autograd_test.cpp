// tests/autograd_test.cpp — the engine (accumulation, hooks, no-grad, release) and gradcheck of the
// elementwise ops, reductions, views, matmul and linear.
#include <gtest/gtest.h>

#include "autograd/functions.h"
#include "autograd/gradcheck.h"
#include "tensor/ops.h"

using namespace ladnn;

namespace {
Variable rand_var(const Shape& s, Generator& g, bool requires_grad = true, double lo = -1, double hi = 1) {
  return Variable(Tensor::uniform(s, lo, hi, g, DType::Float64), requires_grad);
}

void expect_gradcheck(const std::function<Variable(const std::vector<Variable>&)>& fn,
                      const std::vector<Variable>& inputs) {
  GradcheckResult r = gradcheck(fn, inputs);
  EXPECT_TRUE(r.ok) << r.message;
}
}  // namespace

TEST(Autograd, MicrogradExampleMatchesHandDerivation) {
  // f = (a*b + b) * a with a = 2, b = -3:  df/da = 2ab + b = -15, df/db = a^2 + a = 6.
  Variable a(Tensor::full({}, 2.0, DType::Float64), true);
  Variable b(Tensor::full({}, -3.0, DType::Float64), true);
  Variable f = (a * b + b) * a;
  EXPECT_DOUBLE_EQ(f.tensor().item(), -18.0);
  f.backward();
  EXPECT_DOUBLE_EQ(a.grad().item(), -15.0);
  EXPECT_DOUBLE_EQ(b.grad().item(), 6.0);
}

TEST(Autograd, GradientsAccumulateOverUsesAndCalls) {
  // A feature map used by several consumers (DenseNet) gets the sum of their gradients.
  Variable x(Tensor::full({3}, 1.5, DType::Float64), true);
  Variable y = sum(x * x + x + x);  // dy/dx = 2x + 2
  y.backward();
  for (double g : x.grad().to_vector()) EXPECT_DOUBLE_EQ(g, 5.0);
  sum(x).backward();  // leaves accumulate across backward calls
  for (double g : x.grad().to_vector()) EXPECT_DOUBLE_EQ(g, 6.0);
  x.zero_grad();
  EXPECT_FALSE(x.has_grad());
}

TEST(Autograd, NonLeafGradsAreFreedUnlessRetained) {
  Variable x(Tensor::full({2}, 3.0, DType::Float64), true);
  Variable h = mul_scalar(x, 2.0);
  Variable k = mul_scalar(x, 3.0);
  k.retain_grad();
  sum(h * k).backward();
  EXPECT_FALSE(h.has_grad());
  ASSERT_TRUE(k.has_grad());
  for (double g : k.grad().to_vector()) EXPECT_DOUBLE_EQ(g, 6.0);  // d(hk)/dk = h = 2x
  EXPECT_FALSE(h.is_leaf());
  EXPECT_STREQ(h.op_name(), "mul_scalar");
}

// gradient_is_exclusive: what a backward receives is its own only when no other handle or view shares
// its storage and it is contiguous. Seen from inside a backward: a gradient the engine computed and
// dropped is exclusive; one a retain_grad keeps, one a hook kept, or the caller's seed is not.
TEST(Autograd, AGradientIsExclusiveOnlyWhenNothingElseSeesIt) {
  Tensor t = Tensor::zeros({2, 3}, DType::Float64);
  EXPECT_TRUE(gradient_is_exclusive(t));
  {
    const Tensor other = t;
    EXPECT_FALSE(gradient_is_exclusive(t)) << "a second handle";
  }
  {
    const Tensor view = t.narrow(0, 0, 1);
    EXPECT_FALSE(gradient_is_exclusive(t)) << "a view";
  }
  EXPECT_TRUE(gradient_is_exclusive(t));
  EXPECT_FALSE(gradient_is_exclusive(Tensor::zeros({2, 3}, DType::Float64).transpose(0, 1))) << "not contiguous";
  EXPECT_FALSE(gradient_is_exclusive(Tensor()));

  // An op whose backward records what it was handed.
  auto probe = [](const Variable& x, bool* exclusive) {
    return Variable::from_op(x.tensor().clone(), {x},
                             [exclusive](const Tensor& g, const std::vector<bool>&) {
                               *exclusive = gradient_is_exclusive(g);
                               return std::vector<Tensor>{g};
                             },
                             "probe");
  };
  Variable x(Tensor::full({2}, 3.0, DType::Float64), true);
  bool exclusive = false;
  sum(mul_scalar(probe(x, &exclusive), 2.0)).backward();
  EXPECT_TRUE(exclusive) << "mul_scalar's gradient, handed over";
  Variable kept = probe(x, &exclusive);
  Variable kept_out = mul_scalar(kept, 2.0);
  kept.retain_grad();
  sum(kept_out).backward();
  EXPECT_FALSE(exclusive) << "retain_grad keeps it";
  Variable hooked = probe(x, &exclusive);
  Tensor seen;
  hooked.register_hook([&](const Tensor& g) {
    seen = g;
    return Tensor();
  });
  sum(mul_scalar(hooked, 2.0)).backward();
  EXPECT_FALSE(exclusive) << "a hook kept it";
  const Tensor seed = Tensor::ones({2}, DType::Float64);
  probe(x, &exclusive).backward(seed);
  EXPECT_FALSE(exclusive) << "the caller's seed";
}

TEST(Autograd, HooksSeeAndReplaceGradients) {
  Variable x(Tensor::full({2}, 1.0, DType::Float64), true);
  Variable h = mul_scalar(x, 4.0);
  Tensor seen;
  h.register_hook([&](const Tensor& g) {
    seen = g;
    return ops::mul_scalar(g, 0.5);
  });
  sum(h).backward();
  ASSERT_TRUE(seen.defined());
  for (double g : seen.to_vector()) EXPECT_DOUBLE_EQ(g, 1.0);
  for (double g : x.grad().to_vector()) EXPECT_DOUBLE_EQ(g, 2.0);  // 4 * 0.5
}

TEST(Autograd, NoGradGuardRecordsNothing) {
  Variable x(Tensor::ones({2}, DType::Float64), true);
  {
    NoGradGuard guard;
    EXPECT_FALSE(grad_enabled());
    Variable y = x * x;
    EXPECT_FALSE(y.requires_grad());
    EXPECT_TRUE(y.is_leaf());
    {
      NoGradGuard nested;
    }
    EXPECT_FALSE(grad_enabled());
  }
  EXPECT_TRUE(grad_enabled());
  EXPECT_TRUE((x * x).requires_grad());
}

TEST(Autograd, DetachCutsTheGraph) {
  Variable x(Tensor::full({2}, 2.0, DType::Float64), true);
  Variable d = (x * x).detach();
  EXPECT_FALSE(d.requires_grad());
  Variable y = sum(d * x);  // only the explicit x path carries a gradient
  y.backward();
  for (double g : x.grad().to_vector()) EXPECT_DOUBLE_EQ(g, 4.0);
}

TEST(Autograd, SecondBackwardNeedsRetainGraph) {
  Variable x(Tensor::full({2}, 2.0, DType::Float64), true);
  Variable y = sum(x * x);
  y.backward(true);
  y.backward();  // allowed: the graph was retained
  for (double g : x.grad().to_vector()) EXPECT_DOUBLE_EQ(g, 8.0);
  try {
    y.backward();
    FAIL() << "a released graph must not be walked twice";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("retain_graph"), std::string::npos) << e.what();
  }
}

TEST(Autograd, ErrorsAreSentences) {
  Variable x(Tensor::ones({2, 2}, DType::Float64), true);
  Variable y = x * x;
  EXPECT_THROW(y.backward(), std::invalid_argument);  // not one element
  EXPECT_THROW(y.backward(Tensor::ones({3}, DType::Float64)), std::invalid_argument);
  EXPECT_THROW(Variable(Tensor::ones({1})).backward(), std::invalid_argument);  // no grad needed
  EXPECT_THROW(y.set_requires_grad(false), std::invalid_argument);
}

TEST(Autograd, DeepChainDoesNotOverflowTheStack) {
  // DenseNet-169 records thousands of nodes; the engine must walk long chains iteratively.
  Variable x(Tensor::full({1}, 1.0, DType::Float64), true);
  Variable y = x;
  for (int i = 0; i < 100000; ++i) y = add_scalar(y, 0.0);
  y.backward();
  EXPECT_DOUBLE_EQ(x.grad().item(), 1.0);
}

TEST(Gradcheck, CatchesAWrongBackward) {
  // An op whose backward forgets the factor 2 of d(x^2)/dx must fail gradcheck.
  auto wrong_square = [](const std::vector<Variable>& in) {
    Tensor x = in[0].tensor();
    return Variable::from_op(
        ops::mul(x, x), {in[0]},
        [x](const Tensor& g, const std::vector<bool>&) { return std::vector<Tensor>{ops::mul(g, x)}; },
        "wrong_square");
  };
  Generator gen(3);
  GradcheckResult r = gradcheck(wrong_square, {rand_var({3, 2}, gen)});
  EXPECT_FALSE(r.ok);
  EXPECT_NE(r.message.find("analytic"), std::string::npos);
  EXPECT_THROW(gradcheck(wrong_square, {Variable(Tensor::ones({2}), true)}), std::invalid_argument);
}

TEST(Gradcheck, ElementwiseWithBroadcasting) {
  Generator g(11);
  // The broadcasts bias and scale need: (N, C, H, W) with (1, C, 1, 1), (C, 1, 1) and a row vector.
  std::vector<std::pair<Shape, Shape>> cases = {
      {{2, 3, 4, 5}, {1, 3, 1, 1}}, {{1, 3, 2, 2}, {3, 1, 1}}, {{4, 5}, {5}}, {{3, 1}, {1, 4}}, {{7}, {7}}};
  for (auto& [sa, sb] : cases) {
    SCOPED_TRACE(shape_str(sa) + " op " + shape_str(sb));
    Variable a = rand_var(sa, g), b = rand_var(sb, g);
    Variable bpos = rand_var(sb, g, true, 0.5, 2.0);  // divisor away from 0
    expect_gradcheck([](const std::vector<Variable>& v) { return v[0] + v[1]; }, {a, b});
    expect_gradcheck([](const std::vector<Variable>& v) { return v[0] - v[1]; }, {a, b});
    expect_gradcheck([](const std::vector<Variable>& v) { return v[0] * v[1]; }, {a, b});
    expect_gradcheck([](const std::vector<Variable>& v) { return v[0] / v[1]; }, {a, bpos});
  }
}

TEST(Gradcheck, ScalarAndUnaryOps) {
  Generator g(12);
  Variable x = rand_var({2, 3, 5}, g);
  Variable pos = rand_var({4, 3}, g, true, 0.2, 3.0);
  // Inputs to relu kept away from the kink at 0.
  Tensor r = Tensor::uniform({3, 7}, 0.1, 1.0, g, DType::Float64);
  for (int64_t i = 0; i < r.numel(); i += 2) r.data<double>()[i] *= -1;
  Variable rx(r, true);
  expect_gradcheck([](const std::vector<Variable>& v) { return add_scalar(v[0], 2.5); }, {x});
  expect_gradcheck([](const std::vector<Variable>& v) { return mul_scalar(v[0], -1.5); }, {x});
  expect_gradcheck([](const std::vector<Variable>& v) { return -v[0]; }, {x});
  expect_gradcheck([](const std::vector<Variable>& v) { return pow_scalar(v[0], 3.0); }, {x});
  expect_gradcheck([](const std::vector<Variable>& v) { return pow_scalar(v[0], -0.5); }, {pos});
  expect_gradcheck([](const std::vector<Variable>& v) { return exp(v[0]); }, {x});
  expect_gradcheck([](const std::vector<Variable>& v) { return log(v[0]); }, {pos});
  expect_gradcheck([](const std::vector<Variable>& v) { return sigmoid(v[0]); }, {x});
  expect_gradcheck([](const std::vector<Variable>& v) { return relu(v[0]); }, {rx});
}

TEST(Gradcheck, ReductionsAndViews) {
  Generator g(13);
  Variable x = rand_var({2, 3, 4, 5}, g);
  Variable one = rand_var({1, 3, 1, 1}, g);  // batch 1 and size-1 dims
  expect_gradcheck([](const std::vector<Variable>& v) { return sum(v[0]); }, {x});
  expect_gradcheck([](const std::vector<Variable>& v) { return mean(v[0]); }, {x});
  expect_gradcheck([](const std::vector<Variable>& v) { return sum(v[0], {0, 2, 3}); }, {x});
  expect_gradcheck([](const std::vector<Variable>& v) { return sum(v[0], {1}, true); }, {x});
  expect_gradcheck([](const std::vector<Variable>& v) { return mean(v[0], {-1, 0}); }, {x});
  expect_gradcheck([](const std::vector<Variable>& v) { return mean(v[0], {2, 3}, true); }, {one});
  expect_gradcheck([](const std::vector<Variable>& v) { return reshape(v[0], {6, -1}); }, {x});
  expect_gradcheck([](const std::vector<Variable>& v) { return flatten(v[0]); }, {x});
}

TEST(Gradcheck, MatmulAndLinear) {
  Generator g(14);
  for (auto [n, k, m] : std::vector<std::array<int64_t, 3>>{{1, 1, 1}, {3, 5, 2}, {7, 4, 9}, {1, 13, 6}}) {
    SCOPED_TRACE(std::to_string(n) + "x" + std::to_string(k) + "x" + std::to_string(m));
    Variable a = rand_var({n, k}, g), b = rand_var({k, m}, g);
    expect_gradcheck([](const std::vector<Variable>& v) { return matmul(v[0], v[1]); }, {a, b});
    Variable x = rand_var({n, k}, g), w = rand_var({m, k}, g), bias = rand_var({m}, g);
    expect_gradcheck([](const std::vector<Variable>& v) { return linear(v[0], v[1], v[2]); }, {x, w, bias});
    expect_gradcheck([](const std::vector<Variable>& v) { return linear(v[0], v[1], Variable()); }, {x, w});
  }
}

TEST(Ops, BroadcastShapeRules) {
  EXPECT_EQ(ops::broadcast_shape({2, 3, 4, 5}, {3, 1, 1}), (Shape{2, 3, 4, 5}));
  EXPECT_EQ(ops::broadcast_shape({1}, {}), (Shape{1}));
  try {
    ops::broadcast_shape({2, 3}, {4}, "add");
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_EQ(std::string(e.what()), "add: shapes (2, 3) and (4) cannot be broadcast together");
  }
  // sum_to is the inverse of broadcasting.
  Tensor g = Tensor::ones({2, 3, 4});
  EXPECT_EQ(ops::sum_to(g, {3, 1}).to_vector(), (std::vector<double>{8, 8, 8}));
  EXPECT_EQ(ops::expand_to(Tensor::from_vector({1, 2}, {2, 1}), {2, 3}).to_vector(),
            (std::vector<double>{1, 1, 1, 2, 2, 2}));
}

TEST(Ops, ValuesAndErrors) {
  Tensor a = Tensor::from_vector({1, -2, 3, -4}, {2, 2});
  EXPECT_EQ(ops::relu(a).to_vector(), (std::vector<double>{1, 0, 3, 0}));
  EXPECT_EQ(ops::sum(a, {0}).to_vector(), (std::vector<double>{4, -6}));
  EXPECT_EQ(ops::mean(a, {1}).to_vector(), (std::vector<double>{-0.5, -0.5}));
  // sigmoid stays finite and exact at the extremes.
  Tensor s = ops::sigmoid(Tensor::from_vector({-1000, 0, 1000}, {3}));
  EXPECT_EQ(s.to_vector(), (std::vector<double>{0, 0.5, 1}));
  // Strided (non-contiguous) operands.
  Tensor t = a.transpose(0, 1);
  EXPECT_EQ(ops::add(t, t).to_vector(), (std::vector<double>{2, 6, -4, -8}));
  EXPECT_THROW(ops::add(a, Tensor::ones({2, 2}, DType::Float64)), std::invalid_argument);
  EXPECT_THROW(ops::add(a, Tensor::zeros({2}, DType::Int64)), std::invalid_argument);
  EXPECT_THROW(ops::sum(a, {2}), std::invalid_argument);
  EXPECT_THROW(ops::sum(a, {0, 0}), std::invalid_argument);
  Tensor acc = Tensor::zeros({2, 2});
  ops::add_(acc, a, 2.0);
  EXPECT_EQ(acc.to_vector(), (std::vector<double>{2, -4, 6, -8}));
  EXPECT_THROW(ops::add_(acc, Tensor::zeros({4})), std::invalid_argument);
}

// add_ into a channel slice of an NCHW buffer (DenseBlock's gradient buffer) and into a transposed view:
// only the view's elements change, by exactly alpha * b.
TEST(Accumulate, AddIntoStridedDestinations) {
  Generator gen(5);
  for (bool transposed : {false, true}) {
    Tensor buf = Tensor::normal({2, 5, 3, 3}, 0, 1, gen, DType::Float64);
    const Tensor before = buf.clone();
    Tensor view = transposed ? buf.transpose(2, 3) : buf.narrow(1, 1, 3);
    const Tensor b = Tensor::normal(view.shape(), 0, 1, gen, DType::Float64);
    const Tensor expected = ops::add(view.contiguous(), ops::mul_scalar(b, 0.5));
    ops::add_(view, b, 0.5);
    EXPECT_EQ(ops::max_abs_diff(view, expected), 0.0);
    if (!transposed) {
      EXPECT_EQ(ops::max_abs_diff(buf.narrow(1, 0, 1), before.narrow(1, 0, 1)), 0.0);
      EXPECT_EQ(ops::max_abs_diff(buf.narrow(1, 4, 1), before.narrow(1, 4, 1)), 0.0);
    }
  }
}
