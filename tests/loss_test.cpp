// tests/loss_test.cpp — binary cross-entropy on logits: values, stability, weights, reductions, gradients.
//
// Oracle: the textbook -(y log sigmoid(x) + (1 - y) log(1 - sigmoid(x))) in float64 where it is
// accurate (|x| <= 8), and closed forms at x = ±100 where it is not.
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


using ops::Reduction;

double textbook_bce(double x, double y) {
  const double s = 1.0 / (1.0 + std::exp(-x));
  return -(y * std::log(s) + (1 - y) * std::log(1 - s));
}

// Per-element weights for x's shape from a weight broadcast along trailing dims (NumPy rules).
std::vector<double> expand_weight(const Tensor& w, const Shape& shape) {
  const int64_t n = shape_numel(shape);
  if (!w.defined()) return std::vector<double>(n, 1.0);
  std::vector<double> out(n);
  const size_t lead = shape.size() - w.shape().size();
  for (int64_t f = 0; f < n; ++f) {
    std::vector<int64_t> idx(shape.size());
    int64_t r = f;
    for (size_t d = shape.size(); d-- > 0;) {
      idx[d] = r % shape[d];
      r /= shape[d];
    }
    std::vector<int64_t> widx;
    for (size_t d = lead; d < shape.size(); ++d) widx.push_back(w.size(int64_t(d - lead)) == 1 ? 0 : idx[d]);
    out[f] = w.at(widx);
  }
  return out;
}

struct Case {
  Shape shape;
  Shape weight;  // empty: undefined weight
};
const std::vector<Case> kCases = {{{4, 6}, {}}, {{4, 6}, {4, 6}},    {{4, 6}, {6}}, {{4, 6}, {4, 1}},
                                  {{1, 1}, {}}, {{3, 2, 5}, {2, 1}}, {{7}, {7}}};

TEST(LossTest, MatchesTextbookFormula) {
  Generator gen(41);
  for (const Case& c : kCases)
    for (DType dtype : {DType::Float64, DType::Float32}) {
      Tensor x = Tensor::uniform(c.shape, -8, 8, gen, dtype);
      Tensor y = Tensor::uniform(c.shape, 0, 1, gen, dtype);  // soft targets too
      Tensor w = c.weight.empty() ? Tensor() : Tensor::uniform(c.weight, 0, 2, gen, dtype);
      const std::vector<double> xv = x.to_vector(), yv = y.to_vector(), wv = expand_weight(w, c.shape);
      std::vector<double> want;
      double sum = 0;
      for (size_t i = 0; i < xv.size(); ++i) {
        want.push_back(textbook_bce(xv[i], yv[i]) * wv[i]);
        sum += want.back();
      }
      // float32: each term O(10) rounded in float; sums of <= 30 terms stay below 1e-4.
      const double tol = dtype == DType::Float64 ? 1e-12 : 1e-4;
      Tensor none = ops::bce_with_logits(x, y, w, Reduction::None);
      ASSERT_EQ(none.shape(), c.shape);
      const std::vector<double> got = none.to_vector();
      for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], tol) << shape_str(c.shape);
      Tensor s = ops::bce_with_logits(x, y, w, Reduction::Sum);
      Tensor m = ops::bce_with_logits(x, y, w, Reduction::Mean);
      EXPECT_EQ(s.dim(), 0);
      EXPECT_EQ(m.dim(), 0);
      EXPECT_NEAR(s.item(), sum, tol * double(xv.size()));
      EXPECT_NEAR(m.item(), sum / double(xv.size()), tol);
    }
}

TEST(LossTest, StableAtLargeLogits) {
  // log(1 + e^-100) = 3.72e-44: the textbook form gives inf or 0 here; the stable one is finite and exact.
  const double tiny = std::log1p(std::exp(-100.0));
  Tensor x = Tensor::from_vector({100, 100, -100, -100, 1000, -1000}, {6}, DType::Float64);
  Tensor y = Tensor::from_vector({1, 0, 1, 0, 0, 0}, {6}, DType::Float64);
  const std::vector<double> want{tiny, 100 + tiny, 100 + tiny, tiny, 1000, 0};
  const std::vector<double> got = ops::bce_with_logits(x, y, Tensor(), Reduction::None).to_vector();
  for (int i = 0; i < 6; ++i) {
    EXPECT_TRUE(std::isfinite(got[i])) << i;
    EXPECT_NEAR(got[i], want[i], 1e-12 * (1 + want[i])) << i;
  }
  // Gradient sigmoid(x) - y: finite; within 1e-15 of the exact values (some of them round to 0 or ±1).
  Tensor g =
      ops::bce_with_logits_backward(Tensor::ones({6}, DType::Float64), x, y, Tensor(), Reduction::None);
  const std::vector<double> gv = g.to_vector();
  const std::vector<double> gwant{-std::exp(-100.0) / (1 + std::exp(-100.0)), 1, -1, std::exp(-100.0), 1, 0};
  for (int i = 0; i < 6; ++i) {
    EXPECT_TRUE(std::isfinite(gv[i])) << i;
    EXPECT_NEAR(gv[i], gwant[i], 1e-15) << i;
  }
  // float32 as well: no overflow in exp.
  Tensor x32 = x.to(DType::Float32), y32 = y.to(DType::Float32);
  const std::vector<double> got32 = ops::bce_with_logits(x32, y32, Tensor(), Reduction::None).to_vector();
  for (int i = 0; i < 6; ++i) EXPECT_NEAR(got32[i], want[i], 1e-6 * (1 + want[i])) << i;
  EXPECT_TRUE(std::isfinite(ops::bce_with_logits(x32, y32, Tensor(), Reduction::Mean).item()));
}

TEST(LossTest, MaskedTermsStillCountInTheMean) {
  // LA-DNN masks the lesion terms of unlabelled images with weight 0; PyTorch's mean still divides
  // by every element.
  Tensor x = Tensor::from_vector({0.5, -1.0, 2.0, 0.0}, {2, 2}, DType::Float64);
  Tensor y = Tensor::from_vector({1, 0, 0, 1}, {2, 2}, DType::Float64);
  Tensor w = Tensor::from_vector({1, 0, 5, 0}, {2, 2}, DType::Float64);
  const double want = (textbook_bce(0.5, 1) + 5 * textbook_bce(2.0, 0)) / 4.0;
  // Two exact-to-a-few-ulp formulas for a value near 2.8 (ulp 4.4e-16).
  EXPECT_NEAR(ops::bce_with_logits(x, y, w, Reduction::Mean).item(), want, 1e-14);
  const std::vector<double> none = ops::bce_with_logits(x, y, w, Reduction::None).to_vector();
  EXPECT_EQ(none[1], 0.0);
  EXPECT_EQ(none[3], 0.0);
  // Gradient of the mean: (sigmoid(x) - y) * w / 4, zero where masked.
  Tensor g = ops::bce_with_logits_backward(Tensor::ones({}, DType::Float64), x, y, w, Reduction::Mean);
  const std::vector<double> gv = g.to_vector();
  EXPECT_NEAR(gv[0], (1 / (1 + std::exp(-0.5)) - 1) / 4, 1e-15);
  EXPECT_EQ(gv[1], 0.0);
  EXPECT_NEAR(gv[2], 5 * (1 / (1 + std::exp(-2.0))) / 4, 1e-15);
  EXPECT_EQ(gv[3], 0.0);
}

TEST(LossTest, BackwardHandComputed) {
  // x = 0: sigmoid 0.5, so d/dx = 0.5 - y; Sum scales by dout, Mean also divides by numel.
  Tensor x = Tensor::zeros({2}, DType::Float64), y = Tensor::from_vector({1, 0}, {2}, DType::Float64);
  Tensor dout = Tensor::full({}, 3.0, DType::Float64);
  EXPECT_EQ(ops::bce_with_logits_backward(dout, x, y, Tensor(), Reduction::Sum).to_vector(),
            (std::vector<double>{-1.5, 1.5}));
  EXPECT_EQ(ops::bce_with_logits_backward(dout, x, y, Tensor(), Reduction::Mean).to_vector(),
            (std::vector<double>{-0.75, 0.75}));
  Tensor dnone = Tensor::from_vector({2, 4}, {2}, DType::Float64);
  EXPECT_EQ(ops::bce_with_logits_backward(dnone, x, y, Tensor(), Reduction::None).to_vector(),
            (std::vector<double>{-1, 2}));
}

TEST(LossTest, Gradcheck) {
  Generator gen(42);
  for (const Case& c : kCases)
    for (Reduction red : {Reduction::None, Reduction::Mean, Reduction::Sum}) {
      Variable x(Tensor::uniform(c.shape, -4, 4, gen, DType::Float64), true);
      Tensor y = Tensor::uniform(c.shape, 0, 1, gen, DType::Float64);
      Tensor w = c.weight.empty() ? Tensor() : Tensor::uniform(c.weight, 0, 2, gen, DType::Float64);
      GradcheckResult r =
          gradcheck([&](const std::vector<Variable>& v) { return bce_with_logits(v[0], y, w, red); }, {x});
      EXPECT_TRUE(r.ok) << shape_str(c.shape) << " reduction " << int(red) << "\n" << r.message;
    }
}

TEST(LossTest, VariableDefaultIsMean) {
  Generator gen(43);
  Variable x(Tensor::normal({3, 6}, 0, 2, gen, DType::Float64), true);
  Tensor y = Tensor::uniform({3, 6}, 0, 1, gen, DType::Float64);
  Variable loss = bce_with_logits(x, y, Tensor());
  EXPECT_EQ(loss.tensor().item(), ops::bce_with_logits(x.tensor(), y, Tensor(), Reduction::Mean).item());
  loss.backward();
  EXPECT_LE(
      ops::max_abs_diff(x.grad(), ops::bce_with_logits_backward(Tensor::ones({}, DType::Float64), x.tensor(),
                                                                y, Tensor(), Reduction::Mean)),
      0.0);
}

TEST(LossTest, Errors) {
  Tensor x = Tensor::zeros({4, 6}), y = Tensor::zeros({4, 6});
  EXPECT_THROW_WITH(ops::bce_with_logits(x, Tensor::zeros({4, 5}), Tensor(), Reduction::Mean),
                    "bce_with_logits", "target", "(4, 5)", "(4, 6)");
  EXPECT_THROW_WITH(ops::bce_with_logits(x, y, Tensor::ones({5}), Reduction::Mean), "bce_with_logits",
                    "weight", "(5)", "(4, 6)");
  EXPECT_THROW_WITH(ops::bce_with_logits(x, y, Tensor::ones({2, 4, 6}), Reduction::Mean), "bce_with_logits",
                    "(2, 4, 6)", "(4, 6)");
  EXPECT_THROW_WITH(ops::bce_with_logits(x, Tensor::zeros({4, 6}, DType::Float64), Tensor(), Reduction::Sum),
                    "bce_with_logits", "float64", "float32");
  EXPECT_THROW_WITH(ops::bce_with_logits(Tensor::zeros({4, 6}, DType::Int64),
                                         Tensor::zeros({4, 6}, DType::Int64), Tensor(), Reduction::Sum),
                    "bce_with_logits", "int64");
  EXPECT_THROW_WITH(ops::bce_with_logits_backward(Tensor::ones({4}), x, y, Tensor(), Reduction::None),
                    "bce_with_logits_backward", "(4)", "(4, 6)");
  EXPECT_THROW_WITH(ops::bce_with_logits_backward(Tensor::ones({2}), x, y, Tensor(), Reduction::Mean),
                    "bce_with_logits_backward", "mean", "(2)");
  EXPECT_THROW_WITH(bce_with_logits(Variable(x), Tensor::zeros({6}), Tensor()), "bce_with_logits", "(6)",
                    "(4, 6)");
}

}  // namespace
}  // namespace ladnn
