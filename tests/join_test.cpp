// tests/join_test.cpp — cat and split: values against element-by-element references, views, gradients,
// errors.
#include <gtest/gtest.h>

#include "tests/test_util.h"

#include <string>
#include <vector>

#include "autograd/functions.h"
#include "autograd/gradcheck.h"
#include "tensor/ops.h"

namespace ladnn {
namespace {


// Multi-index of flat position `flat` in row-major `shape`.
std::vector<int64_t> unravel(int64_t flat, const Shape& shape) {
  std::vector<int64_t> idx(shape.size());
  for (size_t d = shape.size(); d-- > 0;) {
    idx[d] = flat % shape[d];
    flat /= shape[d];
  }
  return idx;
}

// Element-by-element: out[..., i, ...] comes from the part whose range along `dim` holds i.
void expect_cat_matches(const Tensor& out, const std::vector<Tensor>& parts, int64_t dim) {
  const std::vector<double> got = out.to_vector();
  for (int64_t f = 0; f < out.numel(); ++f) {
    std::vector<int64_t> idx = unravel(f, out.shape());
    size_t p = 0;
    while (idx[dim] >= parts[p].size(dim)) idx[dim] -= parts[p++].size(dim);
    ASSERT_EQ(got[f], parts[p].at(idx)) << "element " << f << " of " << shape_str(out.shape());
  }
}

TEST(JoinTest, CatAlongEveryDim) {
  Generator gen(31);
  const Shape base{2, 3, 4, 5};
  for (int64_t dim = 0; dim < 4; ++dim)
    for (DType dtype : {DType::Float32, DType::Float64}) {
      std::vector<Tensor> parts;
      int64_t total = 0;
      for (int64_t extent : {1, 3, 2}) {
        Shape s = base;
        s[dim] = extent;
        total += extent;
        parts.push_back(Tensor::normal(s, 0, 1, gen, dtype));
      }
      Tensor out = ops::cat(parts, dim);
      Shape want = base;
      want[dim] = total;
      EXPECT_EQ(out.shape(), want);
      EXPECT_EQ(out.dtype(), dtype);
      expect_cat_matches(out, parts, dim);
      // A negative dim counts from the end.
      EXPECT_EQ(ops::cat(parts, dim - 4).to_vector(), out.to_vector());
    }
}

TEST(JoinTest, CatHandComputed) {
  Tensor a = Tensor::from_vector({1, 2, 3, 4}, {2, 2}), b = Tensor::from_vector({5, 6}, {2, 1});
  EXPECT_EQ(ops::cat({a, b}, 1).to_vector(), (std::vector<double>{1, 2, 5, 3, 4, 6}));
  Tensor c = Tensor::from_vector({7, 8}, {1, 2});
  EXPECT_EQ(ops::cat({a, c}, 0).to_vector(), (std::vector<double>{1, 2, 3, 4, 7, 8}));
}

TEST(JoinTest, CatInt64NonContiguousEmptyAndSinglePart) {
  Tensor i1 = Tensor::from_vector({1, 2, 3}, {1, 3}, DType::Int64),
         i2 = Tensor::from_vector({4, 5, 6}, {1, 3}, DType::Int64);
  Tensor ints = ops::cat({i1, i2}, 0);
  EXPECT_EQ(ints.dtype(), DType::Int64);
  EXPECT_EQ(ints.to_vector(), (std::vector<double>{1, 2, 3, 4, 5, 6}));

  Generator gen(32);
  Tensor t = Tensor::normal({3, 4}, 0, 1, gen, DType::Float64).transpose(0, 1);  // (4, 3), strided
  Tensor u = Tensor::normal({4, 2}, 0, 1, gen, DType::Float64);
  Tensor empty = Tensor::zeros({4, 0}, DType::Float64);
  Tensor out = ops::cat({t, empty, u}, 1);
  EXPECT_EQ(out.shape(), (Shape{4, 5}));
  expect_cat_matches(out, {t, empty, u}, 1);

  Tensor single = ops::cat({u}, 0);
  EXPECT_EQ(single.to_vector(), u.to_vector());
  EXPECT_FALSE(single.shares_storage(u));  // a new tensor, as torch.cat
}

TEST(JoinTest, CatLargeIsParallelAndExact) {
  // Large enough to take the OpenMP path (DenseNet-sized channel concat).
  Generator gen(33);
  Tensor a = Tensor::normal({8, 64, 28, 28}, 0, 1, gen), b = Tensor::normal({8, 32, 28, 28}, 0, 1, gen);
  Tensor out = ops::cat({a, b}, 1);
  EXPECT_EQ(out.narrow(1, 0, 64).contiguous().to_vector(), a.to_vector());
  EXPECT_EQ(out.narrow(1, 64, 32).contiguous().to_vector(), b.to_vector());
}

TEST(JoinTest, SplitReturnsViews) {
  Generator gen(34);
  Tensor a = Tensor::normal({2, 7, 3}, 0, 1, gen, DType::Float64);
  std::vector<Tensor> pieces = ops::split(a, {2, 0, 5}, 1);
  ASSERT_EQ(pieces.size(), 3u);
  EXPECT_EQ(pieces[0].shape(), (Shape{2, 2, 3}));
  EXPECT_EQ(pieces[1].shape(), (Shape{2, 0, 3}));
  EXPECT_EQ(pieces[2].shape(), (Shape{2, 5, 3}));
  for (const Tensor& p : pieces) EXPECT_TRUE(p.shares_storage(a));
  for (int64_t n = 0; n < 2; ++n)
    for (int64_t c = 0; c < 7; ++c)
      for (int64_t k = 0; k < 3; ++k) {
        const double want = a.at({n, c, k});
        EXPECT_EQ(c < 2 ? pieces[0].at({n, c, k}) : pieces[2].at({n, c - 2, k}), want);
      }
  // cat undoes split.
  EXPECT_EQ(ops::cat(pieces, -2).to_vector(), a.to_vector());
  std::vector<Tensor> rows = ops::split(a, {1, 1}, 0);
  EXPECT_EQ(rows[1].to_vector(), a.narrow(0, 1, 1).to_vector());
}

TEST(JoinTest, CatGradcheck) {
  Generator gen(35);
  struct Case {
    std::vector<Shape> shapes;
    int64_t dim;
  };
  const std::vector<Case> cases = {{{{2, 1, 3, 3}, {2, 4, 3, 3}, {2, 2, 3, 3}}, 1},
                                   {{{1, 3, 2}, {2, 3, 2}}, 0},
                                   {{{3, 2, 1}, {3, 2, 4}, {3, 2, 2}}, -1},
                                   {{{1, 5}}, 1}};
  for (const Case& c : cases) {
    std::vector<Variable> inputs;
    for (const Shape& s : c.shapes) inputs.emplace_back(Tensor::normal(s, 0, 1, gen, DType::Float64), true);
    GradcheckResult r = gradcheck([&](const std::vector<Variable>& v) { return cat(v, c.dim); }, inputs);
    EXPECT_TRUE(r.ok) << "dim " << c.dim << "\n" << r.message;
  }
  // The same variable twice (its two slices' gradients add) next to a part that needs no gradient.
  Variable a(Tensor::normal({2, 3}, 0, 1, gen, DType::Float64), true);
  Variable frozen(Tensor::normal({2, 2}, 0, 1, gen, DType::Float64), false);
  GradcheckResult r = gradcheck(
      [&](const std::vector<Variable>& v) {
        return cat({v[0], v[1], v[0]}, 1);
      },
      {a, frozen});
  EXPECT_TRUE(r.ok) << r.message;
}

// cat's backward hands each part a view of the output gradient (a dense block's O(L^2) slices cost no
// copies), and the engine's accumulation never writes through one.
TEST(JoinTest, CatBackwardHandsOutViewsAndNeverWritesThroughThem) {
  Variable a(Tensor::zeros({2, 3}, DType::Float64), true), b(Tensor::zeros({2, 2}, DType::Float64), true);
  Variable y = cat({a, b, a}, 1);  // a's two slices add up
  std::vector<double> g(16);
  for (int i = 0; i < 16; ++i) g[i] = i + 1;
  const Tensor dy = Tensor::from_vector(g, {2, 8}, DType::Float64);
  y.backward(dy);
  EXPECT_TRUE(b.grad().shares_storage(dy));
  EXPECT_FALSE(b.grad().is_contiguous());  // a column slice of a (2, 8) gradient
  EXPECT_EQ(b.grad().to_vector(), (std::vector<double>{4, 5, 12, 13}));
  EXPECT_EQ(a.grad().to_vector(), (std::vector<double>{1 + 6, 2 + 7, 3 + 8, 9 + 14, 10 + 15, 11 + 16}));
  EXPECT_EQ(dy.to_vector(), g);  // the sum went to a new tensor
}

TEST(JoinTest, SplitGradcheck) {
  Generator gen(36);
  Variable a(Tensor::normal({3, 7, 2}, 0, 1, gen, DType::Float64), true);
  const std::vector<int64_t> sizes{2, 4, 1};
  // Each piece alone: its gradient fills its slice and leaves the rest zero.
  for (size_t k = 0; k < sizes.size(); ++k) {
    GradcheckResult r =
        gradcheck([&](const std::vector<Variable>& v) { return split(v[0], sizes, 1)[k]; }, {a});
    EXPECT_TRUE(r.ok) << "piece " << k << "\n" << r.message;
  }
  // All pieces, reordered and rejoined (the engine sums the three contributions into a).
  GradcheckResult r = gradcheck(
      [&](const std::vector<Variable>& v) {
        std::vector<Variable> p = split(v[0], {3, 4}, -2);
        return cat({p[1], p[0], p[1]}, 1);
      },
      {a});
  EXPECT_TRUE(r.ok) << r.message;
}

TEST(JoinTest, SplitBackwardWritesTheRightSlice) {
  Variable a(Tensor::zeros({2, 5}, DType::Float64), true);
  std::vector<Variable> p = split(a, {2, 3}, 1);
  p[1].backward(Tensor::from_vector({1, 2, 3, 4, 5, 6}, {2, 3}, DType::Float64));
  EXPECT_EQ(a.grad().to_vector(), (std::vector<double>{0, 0, 1, 2, 3, 0, 0, 4, 5, 6}));
}

TEST(JoinTest, Errors) {
  Tensor a = Tensor::zeros({2, 3, 4}), b = Tensor::zeros({2, 5, 4}), c = Tensor::zeros({2, 3, 5});
  EXPECT_THROW_WITH(ops::cat({}, 0), "cat", "empty");
  EXPECT_THROW_WITH(ops::cat({a, b, c}, 1), "cat", "part 2", "(2, 3, 5)", "(2, 3, 4)", "dimension 1");
  EXPECT_THROW_WITH(ops::cat({a, b}, 0), "cat", "part 1", "(2, 5, 4)", "(2, 3, 4)");
  EXPECT_THROW_WITH(ops::cat({a, Tensor::zeros({2, 3})}, 0), "cat", "part 1", "(2, 3)",
                    "number of dimensions");
  EXPECT_THROW_WITH(ops::cat({a, a}, 3), "cat", "dimension 3", "(2, 3, 4)");
  EXPECT_THROW_WITH(ops::cat({a, a}, -4), "cat", "dimension -4", "(2, 3, 4)");
  EXPECT_THROW_WITH(ops::cat({a, Tensor::zeros({2, 3, 4}, DType::Float64)}, 0), "cat", "part 1", "float64",
                    "float32");
  EXPECT_THROW_WITH(ops::cat({a, Tensor()}, 0), "cat", "part 1", "undefined");
  EXPECT_THROW_WITH(ops::cat({Tensor::zeros({})}, 0), "cat", "0-d");
  EXPECT_THROW_WITH(ops::split(a, {1, 1}, 1), "split", "(1, 1)", "add up to 2", "(2, 3, 4)", "size 3");
  EXPECT_THROW_WITH(ops::split(a, {4, -1}, 1), "split", "negative", "(2, 3, 4)");
  EXPECT_THROW_WITH(ops::split(a, {3}, 5), "split", "dimension 5", "(2, 3, 4)");
  EXPECT_THROW_WITH(cat(std::vector<Variable>{Variable(a), Variable(b)}, 2), "cat", "part 1", "(2, 5, 4)");
  EXPECT_THROW_WITH(split(Variable(a), {2, 2}, 1), "split", "add up to 4");
}

}  // namespace
}  // namespace ladnn
