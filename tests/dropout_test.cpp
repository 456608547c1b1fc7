// tests/dropout_test.cpp — the dropout mask and the differentiable dropout.
#include <gtest/gtest.h>

#include "tests/test_util.h"

#include <cmath>
#include <string>
#include <vector>

#include "autograd/functions.h"
#include "autograd/gradcheck.h"
#include "tensor/ops.h"

namespace ladnn {
namespace {


TEST(DropoutTest, SameSeedSameMask) {
  Generator g1(7), g2(7), g3(8);
  Tensor a = ops::dropout_mask({3, 50}, 0.4, g1), b = ops::dropout_mask({3, 50}, 0.4, g2);
  Tensor c = ops::dropout_mask({3, 50}, 0.4, g3);
  EXPECT_EQ(a.to_vector(), b.to_vector());
  EXPECT_NE(a.to_vector(), c.to_vector());
  // The generator advances: the next mask differs.
  EXPECT_NE(ops::dropout_mask({3, 50}, 0.4, g1).to_vector(), a.to_vector());
}

TEST(DropoutTest, ZerosAtRateAndKeptValuesScaled) {
  Generator gen(9);
  const int64_t n = 1 << 20;
  for (double p : {0.1, 0.3, 0.5, 0.8})
    for (DType dtype : {DType::Float32, DType::Float64}) {
      Tensor m = ops::dropout_mask({n}, p, gen, dtype);
      EXPECT_EQ(m.dtype(), dtype);
      const std::vector<double> v = m.to_vector();
      const double keep = dtype == DType::Float32 ? double(float(1.0 / (1.0 - p))) : 1.0 / (1.0 - p);
      int64_t zeros = 0, other = 0;
      for (double e : v) {
        if (e == 0.0)
          ++zeros;
        else if (e != keep)
          ++other;
      }
      EXPECT_EQ(other, 0) << "every kept element is exactly 1 / (1 - p)";
      // The zero count is Binomial(n, p): 6 standard deviations (sqrt(p (1 - p) / n) <= 4.9e-4).
      const double frac = double(zeros) / double(n);
      EXPECT_NEAR(frac, p, 6.0 * std::sqrt(p * (1 - p) / double(n))) << "p " << p;
    }
}

TEST(DropoutTest, EdgeProbabilities) {
  Generator gen(10);
  EXPECT_EQ(ops::dropout_mask({4, 4}, 0.0, gen).to_vector(), std::vector<double>(16, 1.0));
  EXPECT_EQ(ops::dropout_mask({4, 4}, 1.0, gen).to_vector(), std::vector<double>(16, 0.0));
  EXPECT_EQ(ops::dropout_mask({0, 3}, 0.5, gen).numel(), 0);
}

TEST(DropoutTest, EvalAndZeroRateAreIdentity) {
  Generator gen(11);
  Variable x(Tensor::normal({2, 5}, 0, 1, gen, DType::Float64), true);
  Variable eval = dropout(x, 0.5, false, gen);
  EXPECT_TRUE(eval.same(x));
  Variable zero = dropout(x, 0.0, true, gen);
  EXPECT_TRUE(zero.same(x));
}

TEST(DropoutTest, TrainingMultipliesByTheSeededMask) {
  Generator data_gen(12);
  Tensor xt = Tensor::normal({4, 6, 3}, 0, 1, data_gen, DType::Float64);
  Variable x(xt, true);
  Generator g1(5), g2(5);
  Variable y = dropout(x, 0.3, true, g1);
  Tensor mask = ops::dropout_mask(xt.shape(), 0.3, g2, DType::Float64);
  const std::vector<double> xv = xt.to_vector(), mv = mask.to_vector(), yv = y.tensor().to_vector();
  for (size_t i = 0; i < xv.size(); ++i) EXPECT_EQ(yv[i], xv[i] * mv[i]);
  // Backward: the same mask times the upstream gradient.
  Tensor dy = Tensor::normal(xt.shape(), 0, 1, data_gen, DType::Float64);
  y.backward(dy);
  const std::vector<double> gv = x.grad().to_vector(), dv = dy.to_vector();
  for (size_t i = 0; i < gv.size(); ++i) EXPECT_EQ(gv[i], dv[i] * mv[i]);
}

TEST(DropoutTest, Gradcheck) {
  Generator gen(13);
  for (const Shape& shape : {Shape{1, 7}, Shape{3, 4, 5}, Shape{2, 3, 3, 3}}) {
    Variable x(Tensor::normal(shape, 0, 1, gen, DType::Float64), true);
    GradcheckResult r = gradcheck(
        [](const std::vector<Variable>& v) {
          Generator g(21);  // reseeded: every evaluation draws the same mask
          return dropout(v[0], 0.4, true, g);
        },
        {x});
    EXPECT_TRUE(r.ok) << shape_str(shape) << "\n" << r.message;
  }
}

TEST(DropoutTest, Errors) {
  Generator gen(14);
  EXPECT_THROW_WITH(ops::dropout_mask({2, 3}, 1.5, gen), "dropout_mask", "1.5", "(2, 3)");
  EXPECT_THROW_WITH(ops::dropout_mask({2, 3}, -0.1, gen), "dropout_mask", "[0, 1]", "(2, 3)");
  EXPECT_THROW_WITH(ops::dropout_mask({2, 3}, 0.5, gen, DType::Int64), "dropout_mask", "int64");
  Variable x(Tensor::zeros({2, 3}));
  // Checked in eval mode too, as torch.nn.functional.dropout does.
  EXPECT_THROW_WITH(dropout(x, 2.0, false, gen), "dropout", "2.0", "(2, 3)");
}

}  // namespace
}  // namespace ladnn
