// tests/matmul_test.cpp — ops::matmul and ops::linear against naive loops in double, on contiguous
// tensors, transposed views and column slices (both reach GEMM without a copy), and their errors.
// (Gradchecks of the differentiable matmul/linear live in autograd_test.cpp.)
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <functional>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "tensor/ops.h"

using namespace ladnn;

namespace {

/// op(t) as a dense row-major matrix of doubles, op transposing when `trans`.
struct Dense {
  std::vector<double> v;
  int64_t rows, cols;
  double at(int64_t i, int64_t j) const { return v[i * cols + j]; }
};
Dense dense(const Tensor& t, bool trans) {
  const std::vector<double> raw = t.to_vector();
  const int64_t r = t.size(0), c = t.size(1);
  if (!trans) return {raw, r, c};
  Dense d{std::vector<double>(raw.size()), c, r};
  for (int64_t i = 0; i < r; ++i)
    for (int64_t j = 0; j < c; ++j) d.v[j * r + i] = raw[i * c + j];
  return d;
}

/// Compares `got` (M, N) with the double-precision product op(a) op(b) (+ bias per column).
/// Tolerance: the dot-product bound K * eps * sum |a b| (times 2 for the final rounding), where
/// eps is the dtype's machine epsilon.
void expect_product(const Tensor& got, const Tensor& a, bool ta, const Tensor& b, bool tb,
                    const Tensor& bias = Tensor()) {
  const int64_t M = ta ? a.size(1) : a.size(0), K = ta ? a.size(0) : a.size(1);
  const int64_t N = tb ? b.size(0) : b.size(1);
  ASSERT_EQ(got.shape(), (Shape{M, N}));
  ASSERT_EQ(got.dtype(), a.dtype());
  ASSERT_TRUE(got.is_contiguous());
  const double eps = a.dtype() == DType::Float32 ? std::numeric_limits<float>::epsilon()
                                                 : std::numeric_limits<double>::epsilon();
  const Dense da = dense(a, ta), db = dense(b, tb);
  const std::vector<double> g = got.to_vector();
  const std::vector<double> bv = bias.defined() ? bias.to_vector() : std::vector<double>();
  int failures = 0;
  for (int64_t i = 0; i < M; ++i) {
    for (int64_t j = 0; j < N; ++j) {
      double ref = bias.defined() ? bv[j] : 0.0, mag = std::abs(ref);
      for (int64_t p = 0; p < K; ++p) {
        const double term = da.at(i, p) * db.at(p, j);
        ref += term;
        mag += std::abs(term);
      }
      const double tol = 2.0 * (K + 2) * eps * mag + 1e-300;
      const double v = g[i * N + j];
      if (!(std::abs(v - ref) <= tol) && failures++ < 5)
        ADD_FAILURE() << "(" << i << ", " << j << "): got " << v << ", expected " << ref;
    }
  }
}

void expect_error(const std::function<void()>& fn, const std::string& message) {
  try {
    fn();
    ADD_FAILURE() << "expected the error: " << message;
  } catch (const std::invalid_argument& e) {
    EXPECT_EQ(std::string(e.what()), message);
  }
}

}  // namespace

TEST(Matmul, MatchesNaiveForAllTransposesAndDtypes) {
  Generator gen(7);
  for (DType dt : {DType::Float32, DType::Float64}) {
    for (auto [M, N, K] :
         {std::array<int64_t, 3>{1, 1, 1}, {1, 9, 7}, {5, 1, 33}, {17, 65, 30}, {130, 70, 257}}) {
      for (int t = 0; t < 4; ++t) {
        const bool ta = t & 1, tb = t & 2;
        Tensor a = Tensor::uniform(ta ? Shape{K, M} : Shape{M, K}, -1, 1, gen, dt);
        Tensor b = Tensor::uniform(tb ? Shape{N, K} : Shape{K, N}, -1, 1, gen, dt);
        expect_product(ops::matmul(a, b, ta, tb), a, ta, b, tb);
      }
    }
  }
}

TEST(Matmul, TransposedViewsAndColumnSlicesNeedNoCopy) {
  // a^T as a view (column-major) and a column slice (row stride > width) are used in place; a
  // strided view (every other column) is copied. All must give the same numbers.
  Generator gen(8);
  for (DType dt : {DType::Float32, DType::Float64}) {
    Tensor base_a = Tensor::uniform({23, 40}, -1, 1, gen, dt);
    Tensor base_b = Tensor::uniform({19, 31}, -1, 1, gen, dt);
    Tensor a_t = base_a.transpose(0, 1);       // (40, 23), column-major
    Tensor a_slice = base_a.narrow(1, 3, 19);  // (23, 19), row stride 40
    Tensor b_slice = base_b.narrow(1, 5, 17);  // (19, 17), row stride 31
    Tensor b_t = base_b.transpose(0, 1);       // (31, 19)
    expect_product(ops::matmul(a_slice, b_slice), a_slice, false, b_slice, false);
    expect_product(ops::matmul(a_t, base_a), a_t, false, base_a, false);        // (40,23)x(23,40)
    expect_product(ops::matmul(a_t, a_t, false, true), a_t, false, a_t, true);  // (40,23)x(23,40)
    expect_product(ops::matmul(b_t, b_slice), b_t, false, b_slice, false);      // (31,19)x(19,17)
    expect_product(ops::matmul(a_slice, b_t, false, true), a_slice, false, b_t, true);
    // Neither rows nor columns contiguous (every other element of a larger buffer): copied first.
    Tensor buf_a = Tensor::uniform({6, 10}, -1, 1, gen, dt), buf_b = Tensor::uniform({5, 8}, -1, 1, gen, dt);
    Tensor odd(buf_a.storage(), {6, 5}, {10, 2}, 1, dt);     // (6, 5), strides (10, 2)
    Tensor strided(buf_b.storage(), {5, 4}, {8, 2}, 0, dt);  // (5, 4), strides (8, 2)
    ASSERT_FALSE(odd.is_contiguous());
    expect_product(ops::matmul(odd, strided), odd, false, strided, false);
  }
}

TEST(Matmul, EmptyInnerDimensionGivesZeros) {
  Tensor a = Tensor::zeros({3, 0}), b = Tensor::zeros({0, 4});
  Tensor c = ops::matmul(a, b);
  ASSERT_EQ(c.shape(), (Shape{3, 4}));
  for (double v : c.to_vector()) EXPECT_EQ(v, 0.0);
}

TEST(Matmul, Errors) {
  Tensor a = Tensor::zeros({2, 3}), b = Tensor::zeros({4, 5});
  expect_error([&] { ops::matmul(Tensor::zeros({2, 3, 4}), b); }, "matmul: a must be 2-D, got (2, 3, 4)");
  expect_error([&] { ops::matmul(a, Tensor::zeros({3})); }, "matmul: b must be 2-D, got (3)");
  expect_error([&] { ops::matmul(a, b); },
               "matmul: cannot multiply a (2, 3) by b (4, 5): inner sizes 3 and 4 differ");
  expect_error([&] { ops::matmul(a, b, true, false); },
               "matmul: cannot multiply a (2, 3) (read transposed) by b (4, 5): inner sizes 2 and 4 "
               "differ");
  expect_error(
      [&] {
        ops::matmul(a, Tensor::zeros({3, 2}, DType::Float64));
      },
      "matmul: a is float32 but b is float64");
  expect_error(
      [&] {
        ops::matmul(Tensor::zeros({2, 3}, DType::Int64), Tensor::zeros({3, 2}, DType::Int64));
      },
      "matmul: a must be float32 or float64, got int64");
  expect_error([&] { ops::matmul(Tensor(), b); }, "matmul: a is undefined");
}

TEST(Linear, MatchesNaiveWithAndWithoutBias) {
  Generator gen(9);
  for (DType dt : {DType::Float32, DType::Float64}) {
    for (auto [N, in, out] : {std::array<int64_t, 3>{1, 1, 1}, {1, 1664, 6}, {8, 33, 65}, {32, 129, 7}}) {
      Tensor x = Tensor::uniform({N, in}, -1, 1, gen, dt);
      Tensor w = Tensor::uniform({out, in}, -1, 1, gen, dt);
      Tensor b = Tensor::uniform({out}, -1, 1, gen, dt);
      expect_product(ops::linear(x, w, Tensor()), x, false, w, true);
      expect_product(ops::linear(x, w, b), x, false, w, true, b);
    }
    // A weight that is a transposed view, an input that is a column slice.
    Tensor wt = Tensor::uniform({12, 5}, -1, 1, gen, dt).transpose(0, 1);   // (5, 12)
    Tensor xs = Tensor::uniform({4, 20}, -1, 1, gen, dt).narrow(1, 2, 12);  // (4, 12)
    Tensor b = Tensor::uniform({5}, -1, 1, gen, dt);
    expect_product(ops::linear(xs, wt, b), xs, false, wt, true, b);
  }
}

TEST(Linear, Errors) {
  Tensor x = Tensor::zeros({4, 3}), w = Tensor::zeros({5, 3}), b = Tensor::zeros({5});
  expect_error(
      [&] {
        ops::linear(Tensor::zeros({4, 3, 1}), w, b);
      },
      "linear: input must be 2-D (N, in_features), got (4, 3, 1)");
  expect_error([&] { ops::linear(x, Tensor::zeros({15}), b); },
               "linear: weight must be 2-D (out_features, in_features), got (15)");
  expect_error(
      [&] {
        ops::linear(x, Tensor::zeros({5, 4}), b);
      },
      "linear: input (4, 3) has 3 features but weight (5, 4) expects 4");
  expect_error([&] { ops::linear(x, w, Tensor::zeros({4})); },
               "linear: bias must have shape (5) for weight (5, 3), got (4)");
  expect_error([&] { ops::linear(x, w, Tensor::zeros({5}, DType::Float64)); },
               "linear: bias is float64 but the input is float32");
  expect_error(
      [&] {
        ops::linear(x, Tensor::zeros({5, 3}, DType::Float64), b);
      },
      "linear: input is float32 but weight is float64");
}
