// tests/batchnorm_test.cpp — ops::batch_norm_* and the differentiable batch_norm2d.
//
// Oracle: a plain float64 loop over the definition (below), hand-computed running statistics, and
// central-difference gradchecks of every differentiable input in both modes.
#include <gtest/gtest.h>

#include "tests/test_util.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "autograd/functions.h"
#include "autograd/gradcheck.h"
#include "tensor/ops.h"

namespace ladnn {
namespace {


struct RefStats {
  std::vector<double> mean, var;  // per channel; var biased
};

// Per-channel batch mean and biased variance of an (N, C, H, W) tensor, straight from the definition.
RefStats ref_stats(const Tensor& x) {
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  RefStats s{std::vector<double>(C, 0.0), std::vector<double>(C, 0.0)};
  for (int64_t c = 0; c < C; ++c) {
    double sum = 0;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t w = 0; w < W; ++w) sum += x.at({n, c, h, w});
    s.mean[c] = sum / double(N * H * W);
    double sq = 0;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t w = 0; w < W; ++w) sq += std::pow(x.at({n, c, h, w}) - s.mean[c], 2);
    s.var[c] = sq / double(N * H * W);
  }
  return s;
}

// y = (x - mean_c) / sqrt(var_c + eps) * gamma_c + beta_c, all in double.
std::vector<double> ref_normalise(const Tensor& x, const std::vector<double>& mean,
                                  const std::vector<double>& var, const std::vector<double>& gamma,
                                  const std::vector<double>& beta, double eps) {
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  std::vector<double> y;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t w = 0; w < W; ++w)
          y.push_back((x.at({n, c, h, w}) - mean[c]) / std::sqrt(var[c] + eps) * gamma[c] + beta[c]);
  return y;
}

double max_diff(const std::vector<double>& a, const std::vector<double>& b) {
  EXPECT_EQ(a.size(), b.size());
  double m = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

const std::vector<Shape> kShapes = {{2, 3, 4, 5}, {1, 2, 3, 3}, {5, 3, 1, 1}, {3, 1, 7, 2}, {2, 4, 1, 3}};

TEST(BatchNormTest, ForwardTrainMatchesReference) {
  Generator gen(11);
  for (DType dtype : {DType::Float64, DType::Float32}) {
    // float32: y is O(3) after normalisation, rounded once per op in float -> a few ulp of 3.
    const double tol = dtype == DType::Float64 ? 1e-12 : 2e-6;
    for (const Shape& shape : kShapes) {
      const int64_t C = shape[1];
      Tensor x = Tensor::normal(shape, 0.7, 2.0, gen, dtype);
      Tensor gamma = Tensor::uniform({C}, 0.5, 1.5, gen, dtype);
      Tensor beta = Tensor::uniform({C}, -1.0, 1.0, gen, dtype);
      Tensor rm = Tensor::zeros({C}, dtype), rv = Tensor::ones({C}, dtype);
      const double eps = 1e-5;
      ops::BatchNormForward out = ops::batch_norm_forward_train(x, gamma, beta, rm, rv, 0.1, eps);
      RefStats s = ref_stats(x);
      EXPECT_EQ(out.y.shape(), shape);
      EXPECT_EQ(out.y.dtype(), dtype);
      EXPECT_LE(max_diff(out.y.to_vector(),
                         ref_normalise(x, s.mean, s.var, gamma.to_vector(), beta.to_vector(), eps)),
                tol)
          << shape_str(shape);
      std::vector<double> invstd;
      for (double v : s.var) invstd.push_back(1.0 / std::sqrt(v + eps));
      EXPECT_LE(max_diff(out.save_mean.to_vector(), s.mean), tol) << shape_str(shape);
      EXPECT_LE(max_diff(out.save_invstd.to_vector(), invstd), tol * 10) << shape_str(shape);
    }
  }
}

TEST(BatchNormTest, LargeInputTakesTheParallelPath) {
  // 4 * 16 * 24 * 24 = 36864 elements: above the kernels' OpenMP threshold (2^15).
  Generator gen(20);
  const Shape shape{4, 16, 24, 24};
  Tensor x = Tensor::normal(shape, 0.3, 1.2, gen, DType::Float64);
  Tensor gamma = Tensor::uniform({16}, 0.5, 1.5, gen, DType::Float64);
  Tensor beta = Tensor::uniform({16}, -1.0, 1.0, gen, DType::Float64);
  Tensor rm = Tensor::zeros({16}, DType::Float64), rv = Tensor::ones({16}, DType::Float64);
  ops::BatchNormForward out = ops::batch_norm_forward_train(x, gamma, beta, rm, rv, 0.1, 1e-5);
  RefStats s = ref_stats(x);
  EXPECT_LE(
      max_diff(out.y.to_vector(), ref_normalise(x, s.mean, s.var, gamma.to_vector(), beta.to_vector(), 1e-5)),
      1e-12);
  Tensor y = ops::batch_norm_forward_eval(x, gamma, beta, rm, rv, 1e-5);
  EXPECT_LE(max_diff(y.to_vector(), ref_normalise(x, rm.to_vector(), rv.to_vector(), gamma.to_vector(),
                                                  beta.to_vector(), 1e-5)),
            1e-12);
  // Backward in both modes against the same op on one channel at a time (each channel is independent).
  Tensor dy = Tensor::normal(shape, 0, 1, gen, DType::Float64);
  auto all = ops::batch_norm_backward_train(dy, x, gamma, out.save_mean, out.save_invstd);
  auto all_eval = ops::batch_norm_backward_eval(dy, x, gamma, rm, rv, 1e-5);
  for (int64_t c : {0, 7, 15}) {
    Tensor xc = x.narrow(1, c, 1).contiguous(), dyc = dy.narrow(1, c, 1).contiguous();
    Tensor gc = gamma.narrow(0, c, 1).contiguous();
    auto one = ops::batch_norm_backward_train(dyc, xc, gc, out.save_mean.narrow(0, c, 1).contiguous(),
                                              out.save_invstd.narrow(0, c, 1).contiguous());
    EXPECT_EQ(one.dx.to_vector(), all.dx.narrow(1, c, 1).contiguous().to_vector()) << "channel " << c;
    EXPECT_EQ(one.dgamma.item(), all.dgamma.to_vector()[c]);
    auto one_eval = ops::batch_norm_backward_eval(dyc, xc, gc, rm.narrow(0, c, 1).contiguous(),
                                                  rv.narrow(0, c, 1).contiguous(), 1e-5);
    EXPECT_EQ(one_eval.dx.to_vector(), all_eval.dx.narrow(1, c, 1).contiguous().to_vector())
        << "channel " << c;
    EXPECT_EQ(one_eval.dbeta.item(), all_eval.dbeta.to_vector()[c]);
  }
}

TEST(BatchNormTest, RunningStatsHandComputed) {
  // One channel, values 1, 2, 3, 4: mean 2.5, biased var 1.25 (used to normalise), unbiased var 5/3
  // (used for running_var).
  Tensor x = Tensor::from_vector({1, 2, 3, 4}, {2, 1, 1, 2}, DType::Float64);
  Tensor rm = Tensor::zeros({1}, DType::Float64), rv = Tensor::ones({1}, DType::Float64);
  ops::BatchNormForward out = ops::batch_norm_forward_train(x, Tensor(), Tensor(), rm, rv, 0.1, 0.0);
  EXPECT_NEAR(rm.item(), 0.25, 1e-15);
  EXPECT_NEAR(rv.item(), 0.9 + 0.1 * 5.0 / 3.0, 1e-15);
  EXPECT_NEAR(out.save_mean.item(), 2.5, 1e-15);
  EXPECT_NEAR(out.save_invstd.item(), 1.0 / std::sqrt(1.25), 1e-15);
  const std::vector<double> y = out.y.to_vector();
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(y[i], (i + 1 - 2.5) / std::sqrt(1.25), 1e-14);
}

TEST(BatchNormTest, RunningStatsAfterOneAndTwoSteps) {
  Generator gen(12);
  for (DType dtype : {DType::Float64, DType::Float32}) {
    const double tol = dtype == DType::Float64 ? 1e-13 : 1e-5;  // float32 stores the stats rounded
    const Shape shape{3, 4, 2, 3};
    const double n = 3 * 2 * 3, momentum = 0.3;
    Tensor rm = Tensor::uniform({4}, -1, 1, gen, dtype), rv = Tensor::uniform({4}, 0.5, 2, gen, dtype);
    std::vector<double> want_m = rm.to_vector(), want_v = rv.to_vector();
    for (int step = 0; step < 2; ++step) {
      Tensor x = Tensor::normal(shape, step * 2.0, 1.0 + step, gen, dtype);
      RefStats s = ref_stats(x);
      for (int c = 0; c < 4; ++c) {
        want_m[c] = (1 - momentum) * want_m[c] + momentum * s.mean[c];
        want_v[c] = (1 - momentum) * want_v[c] + momentum * s.var[c] * n / (n - 1);
      }
      ops::batch_norm_forward_train(x, Tensor(), Tensor(), rm, rv, momentum, 1e-5);
      EXPECT_LE(max_diff(rm.to_vector(), want_m), tol) << "step " << step + 1;
      EXPECT_LE(max_diff(rv.to_vector(), want_v), tol) << "step " << step + 1;
    }
  }
}

TEST(BatchNormTest, VariableTrainingUpdatesBuffersAndEvalUsesThem) {
  Generator gen(13);
  const Shape shape{4, 3, 3, 2};
  Tensor rm = Tensor::zeros({3}, DType::Float64), rv = Tensor::ones({3}, DType::Float64);
  Variable gamma(Tensor::uniform({3}, 0.5, 1.5, gen, DType::Float64), true);
  Variable beta(Tensor::uniform({3}, -1, 1, gen, DType::Float64), true);
  Variable x(Tensor::normal(shape, 1.0, 2.0, gen, DType::Float64));
  batch_norm2d(x, gamma, beta, rm, rv, true, 0.1, 1e-5);
  RefStats s = ref_stats(x.tensor());
  for (int c = 0; c < 3; ++c) {
    EXPECT_NEAR(rm.to_vector()[c], 0.1 * s.mean[c], 1e-14);
    EXPECT_NEAR(rv.to_vector()[c], 0.9 + 0.1 * s.var[c] * 24.0 / 23.0, 1e-14);
  }
  // Eval: normalises with the running statistics and leaves them alone.
  const std::vector<double> rm_before = rm.to_vector(), rv_before = rv.to_vector();
  Variable x2(Tensor::normal(shape, -1.0, 0.5, gen, DType::Float64));
  Variable y = batch_norm2d(x2, gamma, beta, rm, rv, false, 0.1, 1e-5);
  EXPECT_EQ(rm.to_vector(), rm_before);
  EXPECT_EQ(rv.to_vector(), rv_before);
  EXPECT_LE(max_diff(y.tensor().to_vector(),
                     ref_normalise(x2.tensor(), rm_before, rv_before, gamma.tensor().to_vector(),
                                   beta.tensor().to_vector(), 1e-5)),
            1e-12);
}

TEST(BatchNormTest, ForwardEvalMatchesReference) {
  Generator gen(14);
  for (DType dtype : {DType::Float64, DType::Float32}) {
    const double tol = dtype == DType::Float64 ? 1e-12 : 2e-5;  // |y| up to ~10 in float32
    for (const Shape& shape : kShapes) {
      const int64_t C = shape[1];
      Tensor x = Tensor::normal(shape, 0.0, 3.0, gen, dtype);
      Tensor gamma = Tensor::uniform({C}, -1.5, 1.5, gen, dtype),
             beta = Tensor::uniform({C}, -1, 1, gen, dtype);
      Tensor rm = Tensor::uniform({C}, -1, 1, gen, dtype), rv = Tensor::uniform({C}, 0.2, 3, gen, dtype);
      Tensor y = ops::batch_norm_forward_eval(x, gamma, beta, rm, rv, 1e-3);
      EXPECT_LE(max_diff(y.to_vector(), ref_normalise(x, rm.to_vector(), rv.to_vector(), gamma.to_vector(),
                                                      beta.to_vector(), 1e-3)),
                tol)
          << shape_str(shape);
    }
  }
}

TEST(BatchNormTest, NonContiguousInputMatchesContiguous) {
  Generator gen(15);
  Tensor base = Tensor::normal({2, 3, 5, 4}, 0, 1, gen, DType::Float64);
  Tensor x = base.transpose(2, 3);  // (2, 3, 4, 5), strided
  ASSERT_FALSE(x.is_contiguous());
  Tensor rm1 = Tensor::zeros({3}, DType::Float64), rv1 = Tensor::ones({3}, DType::Float64);
  Tensor rm2 = rm1.clone(), rv2 = rv1.clone();
  auto a = ops::batch_norm_forward_train(x, Tensor(), Tensor(), rm1, rv1, 0.1, 1e-5);
  auto b = ops::batch_norm_forward_train(x.contiguous(), Tensor(), Tensor(), rm2, rv2, 0.1, 1e-5);
  EXPECT_EQ(a.y.to_vector(), b.y.to_vector());
  EXPECT_EQ(rv1.to_vector(), rv2.to_vector());
}

// Training reads a channel prefix of a wider NCHW buffer in place (DenseBlock's training form): forward
// and backward on the view equal the same on a contiguous copy, to the bit.
TEST(BatchNormTest, TrainingReadsAChannelPrefixInPlace) {
  Generator gen(16);
  for (DType dt : {DType::Float32, DType::Float64}) {
    const Tensor wide = Tensor::normal({3, 7, 4, 5}, 0.2, 1, gen, dt);
    const Tensor x = wide.narrow(1, 0, 4);
    ASSERT_FALSE(x.is_contiguous());
    ASSERT_TRUE(ops::sample_contiguous(x));
    const Tensor gamma = Tensor::uniform({4}, 0.5, 1.5, gen, dt), beta = Tensor::uniform({4}, -0.5, 0.5, gen, dt);
    const Tensor dy = Tensor::normal({3, 4, 4, 5}, 0, 1, gen, dt);
    Tensor rm1 = Tensor::zeros({4}, dt), rv1 = Tensor::ones({4}, dt), rm2 = rm1.clone(), rv2 = rv1.clone();
    const auto a = ops::batch_norm_forward_train(x, gamma, beta, rm1, rv1, 0.1, 1e-5, ops::BnAct::Relu);
    const auto b = ops::batch_norm_forward_train(x.contiguous(), gamma, beta, rm2, rv2, 0.1, 1e-5, ops::BnAct::Relu);
    EXPECT_EQ(ops::max_abs_diff(a.y, b.y), 0.0);
    EXPECT_EQ(ops::max_abs_diff(rv1, rv2), 0.0);
    const auto ga = ops::batch_norm_backward_train(dy, x, gamma, a.save_mean, a.save_invstd, a.y);
    const auto gb = ops::batch_norm_backward_train(dy, x.contiguous(), gamma, b.save_mean, b.save_invstd, b.y);
    EXPECT_EQ(ops::max_abs_diff(ga.dx, gb.dx), 0.0);
    EXPECT_EQ(ops::max_abs_diff(ga.dgamma, gb.dgamma), 0.0);
    EXPECT_EQ(ops::max_abs_diff(ga.dbeta, gb.dbeta), 0.0);
  }
}

// Batch statistics computed once (ops::batch_norm_batch_stats): the definition's mean and biased
// variance per channel, read in place from a channel slice of a wider buffer; and a training forward given
// them is the forward that reduces x itself, bit for bit — y, the saved statistics and the running
// statistics — with and without the ReLU, for a channel prefix, at batch 3 and 1, in both precisions.
// The statistics of a prefix are the first rows of the statistics of the whole buffer (what a dense block
// relies on).
TEST(BatchNormTest, GivenBatchStatisticsGiveTheSameForward) {
  Generator gen(41);
  for (DType dt : {DType::Float32, DType::Float64})
    for (int64_t n : {3, 1})
      for (ops::BnAct act : {ops::BnAct::None, ops::BnAct::Relu}) {
        SCOPED_TRACE(std::string(dtype_name(dt)) + " batch " + std::to_string(n) +
                     (act == ops::BnAct::Relu ? " relu" : ""));
        const Tensor wide = Tensor::normal({n, 7, 4, 5}, 0.7, 1.3, gen, dt);
        const Tensor slice = wide.narrow(1, 2, 3);  // channels 2..4: a slice in the middle, in place
        const Tensor s = ops::batch_norm_batch_stats(slice);
        ASSERT_EQ(s.shape(), (Shape{3, 2}));
        ASSERT_EQ(s.dtype(), DType::Float64);
        const RefStats ref = ref_stats(slice.contiguous());
        for (int64_t c = 0; c < 3; ++c) {
          EXPECT_NEAR(s.at({c, 0}), ref.mean[c], 1e-12) << "mean of channel " << c;
          EXPECT_NEAR(s.at({c, 1}), ref.var[c], 1e-12) << "variance of channel " << c;
        }
        const Tensor all = ops::batch_norm_batch_stats(wide);
        const Tensor x = wide.narrow(1, 0, 5);
        EXPECT_EQ(ops::max_abs_diff(all.narrow(0, 2, 3), s), 0.0) << "a slice's rows are the whole buffer's";
        const Tensor gamma = Tensor::uniform({5}, 0.5, 1.5, gen, dt),
                     beta = Tensor::uniform({5}, -0.5, 0.5, gen, dt);
        Tensor rm1 = Tensor::uniform({5}, -1, 1, gen, dt), rv1 = Tensor::uniform({5}, 0.5, 2, gen, dt);
        Tensor rm2 = rm1.clone(), rv2 = rv1.clone(), rm3 = rm1.clone(), rv3 = rv1.clone();
        const auto a = ops::batch_norm_forward_train(x, gamma, beta, rm1, rv1, 0.1, 1e-5, act);
        const auto b =
            ops::batch_norm_forward_train(x, gamma, beta, rm2, rv2, 0.1, 1e-5, act, all.narrow(0, 0, 5));
        EXPECT_EQ(ops::max_abs_diff(a.y, b.y), 0.0);
        EXPECT_EQ(ops::max_abs_diff(a.save_mean, b.save_mean), 0.0);
        EXPECT_EQ(ops::max_abs_diff(a.save_invstd, b.save_invstd), 0.0);
        EXPECT_EQ(ops::max_abs_diff(rm1, rm2), 0.0);
        EXPECT_EQ(ops::max_abs_diff(rv1, rv2), 0.0);
        EXPECT_EQ(a.relu_from_x, b.relu_from_x);
        // And they are used: other statistics give another normalisation (the mean of channel 0 moved by 1).
        Tensor moved = all.narrow(0, 0, 5).clone();
        moved.narrow(0, 0, 1).narrow(1, 0, 1).fill_(moved.at({0, 0}) + 1.0);
        const auto c =
            ops::batch_norm_forward_train(x, gamma, beta, rm3, rv3, 0.1, 1e-5, ops::BnAct::None, moved);
        EXPECT_NEAR(c.save_mean.at({0}), a.save_mean.at({0}) + 1.0, 1e-5);
        EXPECT_NEAR(rm3.at({0}) - rm1.at({0}), 0.1, 1e-5);
      }
}

// `fresh`: a forward whose table lacks the last channels' rows computes them first — the rows
// batch_norm_batch_stats gives, written into the table, and the forward of a complete table, bit for bit
// (a dense layer's norm1 finding the previous layer's new channels).
TEST(BatchNormTest, FreshChannelsAreComputedIntoTheTable) {
  Generator gen(43);
  for (DType dt : {DType::Float32, DType::Float64})
    for (int64_t fresh : {1, 2, 5}) {
      SCOPED_TRACE(std::string(dtype_name(dt)) + " fresh " + std::to_string(fresh));
      const Tensor wide = Tensor::normal({3, 7, 4, 5}, 0.7, 1.3, gen, dt);
      const Tensor x = wide.narrow(1, 0, 5);
      const Tensor gamma = Tensor::uniform({5}, 0.5, 1.5, gen, dt),
                   beta = Tensor::uniform({5}, -0.5, 0.5, gen, dt);
      Tensor rm1 = Tensor::uniform({5}, -1, 1, gen, dt), rv1 = Tensor::uniform({5}, 0.5, 2, gen, dt);
      Tensor rm2 = rm1.clone(), rv2 = rv1.clone();
      const Tensor complete = ops::batch_norm_batch_stats(x);
      Tensor table = Tensor::full({7, 2}, std::nan(""), DType::Float64);  // rows 5, 6: beyond x, untouched
      table.narrow(0, 0, 5 - fresh).copy_(complete.narrow(0, 0, 5 - fresh));
      const auto want =
          ops::batch_norm_forward_train(x, gamma, beta, rm1, rv1, 0.1, 1e-5, ops::BnAct::Relu, complete);
      const auto got = ops::batch_norm_forward_train(x, gamma, beta, rm2, rv2, 0.1, 1e-5, ops::BnAct::Relu,
                                                     table.narrow(0, 0, 5), fresh);
      EXPECT_EQ(ops::max_abs_diff(table.narrow(0, 0, 5), complete), 0.0) << "the fresh rows";
      EXPECT_TRUE(std::isnan(table.at({5, 0})) && std::isnan(table.at({6, 1})))
          << "a row beyond x was written";
      EXPECT_EQ(ops::max_abs_diff(got.y, want.y), 0.0);
      EXPECT_EQ(ops::max_abs_diff(got.save_invstd, want.save_invstd), 0.0);
      EXPECT_EQ(ops::max_abs_diff(rv2, rv1), 0.0);
    }
  const Tensor x = Tensor::zeros({2, 3, 4, 4});
  Tensor c3 = Tensor::ones({3}), rm = Tensor::zeros({3}), rv = Tensor::ones({3});
  EXPECT_THROW_WITH(
      ops::batch_norm_forward_train(x, c3, c3, rm, rv, 0.1, 1e-5, ops::BnAct::None, Tensor(), 2),
      "batch_norm_forward_train", "fresh = 2", "needs batch_stats");
  EXPECT_THROW_WITH(ops::batch_norm_forward_train(x, c3, c3, rm, rv, 0.1, 1e-5, ops::BnAct::None,
                                                  Tensor::zeros({3, 2}, DType::Float64), 4),
                    "fresh = 4", "is not in [0, 3]");
  EXPECT_THROW_WITH(ops::batch_norm_forward_train(x, c3, c3, rm, rv, 0.1, 1e-5, ops::BnAct::None,
                                                  Tensor::zeros({2, 3}, DType::Float64).transpose(0, 1), 1),
                    "must be contiguous");
}

// A folded norm1 (LADNN_NORM1_FOLD): batch_norm_record_train is batch_norm_forward_train without its map
// (the same saved statistics, running update and fresh rows, y undefined), and batch_norm_map_saved
// gives that forward's y from what it saved, bit for bit: with and without the ReLU, both dtypes, x a
// channel prefix.
TEST(BatchNormTest, RecordThenMapSavedIsTheTrainingForward) {
  Generator gen(44);
  for (DType dt : {DType::Float32, DType::Float64})
    for (ops::BnAct act : {ops::BnAct::Relu, ops::BnAct::None})
      for (int64_t fresh : {0, 2}) {
        SCOPED_TRACE(std::string(dtype_name(dt)) + (act == ops::BnAct::Relu ? " relu" : "") + " fresh " +
                     std::to_string(fresh));
        const Tensor wide = Tensor::normal({3, 7, 4, 5}, 0.7, 1.3, gen, dt);
        const Tensor x = wide.narrow(1, 0, 5);
        const Tensor gamma = Tensor::uniform({5}, 0.5, 1.5, gen, dt),
                     beta = Tensor::uniform({5}, -0.5, 0.5, gen, dt);
        Tensor rm1 = Tensor::uniform({5}, -1, 1, gen, dt), rv1 = Tensor::uniform({5}, 0.5, 2, gen, dt);
        Tensor rm2 = rm1.clone(), rv2 = rv1.clone();
        const Tensor complete = ops::batch_norm_batch_stats(x);
        const auto want = ops::batch_norm_forward_train(x, gamma, beta, rm1, rv1, 0.1, 1e-5, act, complete);
        Tensor table = complete.clone();
        if (fresh > 0) table.narrow(0, 5 - fresh, fresh).fill_(std::nan(""));
        const auto got = ops::batch_norm_record_train(x, rm2, rv2, 0.1, 1e-5, act, table, fresh);
        EXPECT_FALSE(got.y.defined());
        EXPECT_EQ(got.relu_from_x, want.relu_from_x);
        EXPECT_EQ(ops::max_abs_diff(table, complete), 0.0) << "the fresh rows";
        EXPECT_EQ(ops::max_abs_diff(got.save_mean, want.save_mean), 0.0);
        EXPECT_EQ(ops::max_abs_diff(got.save_invstd, want.save_invstd), 0.0);
        EXPECT_EQ(ops::max_abs_diff(rm2, rm1), 0.0);
        EXPECT_EQ(ops::max_abs_diff(rv2, rv1), 0.0);
        const Tensor y = ops::batch_norm_map_saved(x, gamma, beta, got.save_mean, got.save_invstd, act);
        EXPECT_EQ(ops::max_abs_diff(y, want.y), 0.0);
        // Without running statistics (a recomputation), the same saved ones.
        Tensor none_m, none_v;
        const auto again = ops::batch_norm_record_train(x, none_m, none_v, 0.1, 1e-5, act, complete);
        EXPECT_EQ(ops::max_abs_diff(again.save_invstd, want.save_invstd), 0.0);
      }
  const Tensor x = Tensor::zeros({2, 3, 4, 4});
  Tensor c3 = Tensor::ones({3}), rm = Tensor::zeros({3}), rv = Tensor::ones({3});
  EXPECT_THROW_WITH(ops::batch_norm_record_train(x, rm, rv, 0.1, 1e-5, ops::BnAct::Relu, Tensor()),
                    "batch_norm_record_train", "batch_stats is undefined");
  EXPECT_THROW_WITH(ops::batch_norm_record_train(x, rm, rv, 0.1, 1e-5, ops::BnAct::Relu,
                                                 Tensor::zeros({4, 2}, DType::Float64)),
                    "batch_norm_record_train", "batch_stats", "(3, 2)", "(4, 2)");
  EXPECT_THROW_WITH(ops::batch_norm_record_train(x, rm, rv, 0.1, 1e-5, ops::BnAct::Relu,
                                                 Tensor::zeros({3, 2}, DType::Float64), 4),
                    "fresh = 4", "is not in [0, 3]");
  EXPECT_THROW_WITH(ops::batch_norm_map_saved(x, c3, c3, Tensor(), c3, ops::BnAct::Relu),
                    "batch_norm_map_saved", "save_mean is undefined");
  EXPECT_THROW_WITH(ops::batch_norm_map_saved(x, c3, c3, c3, Tensor::ones({4}), ops::BnAct::Relu),
                    "batch_norm_map_saved", "save_invstd", "(3)", "(4)");
}

TEST(BatchNormTest, GivenBatchStatisticsAreChecked) {
  const Tensor x = Tensor::zeros({2, 3, 4, 4});
  Tensor c3 = Tensor::ones({3}), rm = Tensor::zeros({3}), rv = Tensor::ones({3});
  EXPECT_THROW_WITH(ops::batch_norm_forward_train(x, c3, c3, rm, rv, 0.1, 1e-5, ops::BnAct::None,
                                                  Tensor::zeros({4, 2}, DType::Float64)),
                    "batch_norm_forward_train", "batch_stats", "(3, 2)", "(4, 2)");
  EXPECT_THROW_WITH(
      ops::batch_norm_forward_train(x, c3, c3, rm, rv, 0.1, 1e-5, ops::BnAct::None, Tensor::zeros({3, 2})),
      "batch_stats", "float64", "float32");
  EXPECT_THROW_WITH(ops::batch_norm_batch_stats_into(x, Tensor::zeros({3, 3}, DType::Float64)),
                    "batch_norm_batch_stats", "out", "(3, 2)", "(3, 3)");
  EXPECT_THROW_WITH(
      ops::batch_norm_batch_stats_into(x, Tensor::zeros({2, 3}, DType::Float64).transpose(0, 1)),
      "batch_norm_batch_stats", "contiguous");
  EXPECT_THROW_WITH(ops::batch_norm_batch_stats(Tensor::zeros({3, 4, 4})), "batch_norm_batch_stats", "4-D",
                    "(3, 4, 4)");
  EXPECT_THROW_WITH(ops::batch_norm_batch_stats(Tensor::zeros({0, 3, 4, 4})), "batch_norm_batch_stats",
                    "no values", "(0, 3, 4, 4)");
}

// dx_into: the input gradient added into a channel prefix of a bigger gradient buffer (the training
// dense block's G) gives the same bits as the returned dx added there by ops::add_, without or with the
// ReLU mask, at batch 3 and 1; the channels beyond the prefix are untouched.
TEST(BatchNormTest, BackwardAddsDxIntoAChannelPrefix) {
  Generator gen(17);
  for (DType dt : {DType::Float32, DType::Float64})
    for (int64_t n : {3, 1})
      for (bool relu : {false, true}) {
        SCOPED_TRACE(std::string(dtype_name(dt)) + " batch " + std::to_string(n) + (relu ? " relu" : ""));
        const Tensor wide = Tensor::normal({n, 7, 4, 5}, 0.2, 1, gen, dt);
        const Tensor x = wide.narrow(1, 0, 4);
        const Tensor gamma = Tensor::uniform({4}, 0.5, 1.5, gen, dt), beta = Tensor::uniform({4}, -0.5, 0.5, gen, dt);
        const Tensor dy = Tensor::normal({n, 4, 4, 5}, 0, 1, gen, dt);
        Tensor rm = Tensor::zeros({4}, dt), rv = Tensor::ones({4}, dt);
        const auto f = ops::batch_norm_forward_train(x, gamma, beta, rm, rv, 0.1, 1e-5,
                                                     relu ? ops::BnAct::Relu : ops::BnAct::None);
        const Tensor mask = relu ? f.y : Tensor();
        const Tensor G0 = Tensor::normal({n, 9, 4, 5}, 0, 1, gen, dt);  // the buffer, 9 > 4 channels
        Tensor G_ref = G0.clone(), G = G0.clone();
        const auto ref = ops::batch_norm_backward_train(dy, x, gamma, f.save_mean, f.save_invstd, mask);
        Tensor head = G_ref.narrow(1, 0, 4);
        ops::add_(head, ref.dx);
        const auto got = ops::batch_norm_backward_train(dy, x, gamma, f.save_mean, f.save_invstd, mask, G.narrow(1, 0, 4));
        EXPECT_FALSE(got.dx.defined()) << "added in, not returned";
        EXPECT_EQ(ops::max_abs_diff(G, G_ref), 0.0);
        EXPECT_EQ(ops::max_abs_diff(got.dgamma, ref.dgamma), 0.0);
        EXPECT_EQ(ops::max_abs_diff(got.dbeta, ref.dbeta), 0.0);
        EXPECT_EQ(ops::max_abs_diff(G.narrow(1, 4, 5), G0.narrow(1, 4, 5)), 0.0) << "beyond the prefix";
        EXPECT_GT(ops::max_abs_diff(G, G0), 0.0);
      }
  // Errors: the wrong shape, a layout whose samples are not contiguous, memory shared with dy.
  const Tensor x = Tensor::normal({2, 3, 4, 4}, 0, 1, gen);
  const Tensor gamma = Tensor::ones({3}), dy = Tensor::normal({2, 3, 4, 4}, 0, 1, gen);
  Tensor rm = Tensor::zeros({3}), rv = Tensor::ones({3});
  const auto f = ops::batch_norm_forward_train(x, gamma, Tensor::zeros({3}), rm, rv, 0.1, 1e-5);
  auto expect_refused = [&](const Tensor& into, const std::string& part) {
    try {
      ops::batch_norm_backward_train(dy, x, gamma, f.save_mean, f.save_invstd, Tensor(), into);
      ADD_FAILURE() << "accepted: " << part;
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
    }
  };
  expect_refused(Tensor::zeros({2, 4, 4, 4}), "dx_into must match the input (2, 3, 4, 4)");
  expect_refused(Tensor::zeros({2, 3, 4, 8}).narrow(3, 0, 4), "each sample's values contiguously");
  expect_refused(dy, "shares memory");
}

// The fused ReLU's mask recomputed from x in the backward (BnReluFromX: the training dense block's
// norm1 reads no y) gives the same bits as the mask read from y — dx (returned or added in), dgamma,
// dbeta — in float32 and float64, on a channel prefix. On the edge: a first forward gives the
// statistics, then each channel's beta is set so that one chosen value normalises to within rounding
// of 0 (beta = -(x_k - mean) * scale), where a backward that redid the arithmetic differently from
// the forward (unrounded statistics, another order) would decide differently.
TEST(BatchNormTest, BackwardReluMaskFromXEqualsTheMaskFromY) {
  Generator gen(18);
  const int64_t C = 32, CW = 36, HW = 20, k = 7;
  for (DType dt : {DType::Float32, DType::Float64})
    for (int64_t n : {3, 1}) {
      SCOPED_TRACE(std::string(dtype_name(dt)) + " batch " + std::to_string(n));
      const Tensor wide = Tensor::normal({n, CW, 4, 5}, 0.2, 1, gen, dt);
      const Tensor x = wide.narrow(1, 0, C);
      const Tensor gamma = Tensor::uniform({C}, 0.5, 1.5, gen, dt);
      const Tensor dy = Tensor::normal({n, C, 4, 5}, 0, 1, gen, dt);
      Tensor rm = Tensor::zeros({C}, dt), rv = Tensor::ones({C}, dt);
      const auto first = ops::batch_norm_forward_train(x, gamma, Tensor(), rm, rv, 0.1, 1e-5, ops::BnAct::Relu);
      const std::vector<double> xv = wide.to_vector(), g = gamma.to_vector(), mu = first.save_mean.to_vector(),
                                is = first.save_invstd.to_vector();
      std::vector<double> b(C);
      for (int64_t c = 0; c < C; ++c) b[c] = -(xv[c * HW + k] - mu[c]) * (g[c] * is[c]);  // sample 0, value k
      const Tensor beta = Tensor::from_vector(b, {C}, dt);
      const auto f = ops::batch_norm_forward_train(x, gamma, beta, rm, rv, 0.1, 1e-5, ops::BnAct::Relu);
      ASSERT_TRUE(f.relu_from_x);
      EXPECT_EQ(ops::max_abs_diff(f.save_mean, first.save_mean), 0.0) << "beta does not move the statistics";
      const std::vector<double> yv = f.y.to_vector();
      int64_t edge_on = 0;
      for (int64_t c = 0; c < C; ++c) edge_on += yv[c * HW + k] > 0;
      EXPECT_LT(edge_on, C) << "the edge values normalise to about 0: some rectified";
      ASSERT_GT(std::count(yv.begin(), yv.end(), 0.0), static_cast<long>(yv.size() / 10));
      const auto ref = ops::batch_norm_backward_train(dy, x, gamma, f.save_mean, f.save_invstd, f.y);
      const auto got = ops::batch_norm_backward_train(dy, x, gamma, f.save_mean, f.save_invstd, Tensor(), Tensor(),
                                                      ops::BnReluFromX{true, beta});
      EXPECT_EQ(ops::max_abs_diff(got.dx, ref.dx), 0.0);
      EXPECT_EQ(ops::max_abs_diff(got.dgamma, ref.dgamma), 0.0);
      EXPECT_EQ(ops::max_abs_diff(got.dbeta, ref.dbeta), 0.0);
      Tensor G = Tensor::zeros({n, CW, 4, 5}, dt), G_ref = G.clone();
      ops::batch_norm_backward_train(dy, x, gamma, f.save_mean, f.save_invstd, Tensor(), G.narrow(1, 0, C),
                                     ops::BnReluFromX{true, beta});
      Tensor head = G_ref.narrow(1, 0, C);
      ops::add_(head, ref.dx);
      EXPECT_EQ(ops::max_abs_diff(G, G_ref), 0.0);
      const auto f_plain = ops::batch_norm_forward_train(x, gamma, beta, rm, rv, 0.1, 1e-5);
      EXPECT_FALSE(f_plain.relu_from_x) << "no ReLU, nothing to recompute";
    }
  const Tensor x = Tensor::normal({2, 3, 4, 4}, 0, 1, gen);
  const Tensor gamma = Tensor::ones({3}), beta = Tensor::zeros({3}), dy = Tensor::normal({2, 3, 4, 4}, 0, 1, gen);
  Tensor rm = Tensor::zeros({3}), rv = Tensor::ones({3});
  const auto f = ops::batch_norm_forward_train(x, gamma, beta, rm, rv, 0.1, 1e-5, ops::BnAct::Relu);
  EXPECT_THROW(ops::batch_norm_backward_train(dy, x, gamma, f.save_mean, f.save_invstd, f.y, Tensor(),
                                              ops::BnReluFromX{true, beta}),
               std::invalid_argument);
  EXPECT_THROW(ops::batch_norm_backward_train(dy, x, gamma, f.save_mean, f.save_invstd, Tensor(), Tensor(),
                                              ops::BnReluFromX{true, Tensor::zeros({4})}),
               std::invalid_argument);
}

TEST(BatchNormTest, Float32StatisticsAccumulateInDouble) {
  // 2^18 values near 1000 in one channel. A float accumulator loses digits as the sum grows past
  // 2^24 (error ~1e-2 and more in the mean); a double one keeps the mean to float's own rounding.
  Generator gen(16);
  const Shape shape{4, 1, 256, 256};
  Tensor x = Tensor::uniform(shape, 999.0, 1001.0, gen, DType::Float32);
  Tensor rm = Tensor::zeros({1}, DType::Float32), rv = Tensor::ones({1}, DType::Float32);
  auto out = ops::batch_norm_forward_train(x, Tensor(), Tensor(), rm, rv, 1.0, 1e-5);
  double sum = 0;
  const std::vector<double> v = x.to_vector();
  for (double e : v) sum += e;
  const double mean = sum / double(v.size());
  double sq = 0;
  for (double e : v) sq += (e - mean) * (e - mean);
  const double var = sq / double(v.size());
  EXPECT_NEAR(out.save_mean.item(), mean, 1.3e-4);  // 2 ulp of float at 1000
  EXPECT_NEAR(out.save_invstd.item() * std::sqrt(var + 1e-5), 1.0, 1e-6);
  EXPECT_NEAR(rv.item(), var * double(v.size()) / double(v.size() - 1), 1e-6);
}

TEST(BatchNormTest, AffineFalseNormalisesOnly) {
  Generator gen(17);
  Tensor x = Tensor::normal({3, 2, 2, 2}, 1, 2, gen, DType::Float64);
  Tensor rm, rv;  // track_running_stats=False: no buffers in training
  auto out = ops::batch_norm_forward_train(x, Tensor(), Tensor(), rm, rv, 0.1, 1e-5);
  RefStats s = ref_stats(x);
  EXPECT_LE(max_diff(out.y.to_vector(), ref_normalise(x, s.mean, s.var, {1, 1}, {0, 0}, 1e-5)), 1e-12);
}

// ---- gradients -------------------------------------------------------------------------------------------

// relu: the fused batch_norm_relu2d instead of batch_norm2d.
void gradcheck_bn(const Shape& shape, bool training, uint64_t seed, bool relu = false) {
  Generator gen(seed);
  const int64_t C = shape[1];
  Variable x(Tensor::normal(shape, 0.5, 1.5, gen, DType::Float64), true);
  Variable gamma(Tensor::uniform({C}, 0.5, 1.5, gen, DType::Float64), true);
  Variable beta(Tensor::uniform({C}, -1, 1, gen, DType::Float64), true);
  Tensor rm = Tensor::uniform({C}, -0.5, 0.5, gen, DType::Float64);
  Tensor rv = Tensor::uniform({C}, 0.5, 2.0, gen, DType::Float64);
  auto fn = [&](const std::vector<Variable>& v) {
    // In training the output does not read the running stats, so their updates between calls are harmless.
    return (relu ? batch_norm_relu2d : batch_norm2d)(v[0], v[1], v[2], rm, rv, training, 0.1, 1e-5);
  };
  GradcheckResult r = gradcheck(fn, {x, gamma, beta});
  EXPECT_TRUE(r.ok) << shape_str(shape) << (training ? " train" : " eval") << (relu ? " relu\n" : "\n")
                    << r.message;
}

TEST(BatchNormTest, GradcheckTraining) {
  uint64_t seed = 100;
  for (const Shape& shape : kShapes) gradcheck_bn(shape, true, seed++);
}

TEST(BatchNormTest, GradcheckEval) {
  uint64_t seed = 200;
  for (const Shape& shape : kShapes) gradcheck_bn(shape, false, seed++);
}

TEST(BatchNormTest, GradcheckWithoutAffineAndPartialInputs) {
  Generator gen(18);
  Variable x(Tensor::normal({2, 3, 2, 3}, 0, 1, gen, DType::Float64), true);
  Tensor rm = Tensor::zeros({3}, DType::Float64), rv = Tensor::ones({3}, DType::Float64);
  for (bool training : {true, false}) {
    auto fn = [&](const std::vector<Variable>& v) {
      return batch_norm2d(v[0], Variable(), Variable(), rm, rv, training);
    };
    GradcheckResult r = gradcheck(fn, {x});
    EXPECT_TRUE(r.ok) << (training ? "train\n" : "eval\n") << r.message;
  }
  // Only gamma requires a gradient (x and beta frozen).
  Variable xf(Tensor::normal({2, 3, 2, 3}, 0, 1, gen, DType::Float64));
  Variable gamma(Tensor::uniform({3}, 0.5, 1.5, gen, DType::Float64), true);
  Variable beta(Tensor::uniform({3}, -1, 1, gen, DType::Float64));
  auto fn = [&](const std::vector<Variable>& v) { return batch_norm2d(v[0], v[1], v[2], rm, rv, true); };
  GradcheckResult r = gradcheck(fn, {xf, gamma, beta});
  EXPECT_TRUE(r.ok) << r.message;
}

TEST(BatchNormTest, Float32BackwardMatchesFloat64) {
  Generator gen(19);
  const Shape shape{3, 4, 5, 3};
  Tensor x = Tensor::normal(shape, 0, 1, gen, DType::Float64),
         dy = Tensor::normal(shape, 0, 1, gen, DType::Float64);
  Tensor gamma = Tensor::uniform({4}, 0.5, 1.5, gen, DType::Float64),
         beta = Tensor::zeros({4}, DType::Float64);
  Tensor rm, rv;
  auto f64 = ops::batch_norm_forward_train(x, gamma, beta, rm, rv, 0.1, 1e-5);
  auto g64 = ops::batch_norm_backward_train(dy, x, gamma, f64.save_mean, f64.save_invstd);
  Tensor x32 = x.to(DType::Float32), g32 = gamma.to(DType::Float32);
  auto f32 = ops::batch_norm_forward_train(x32, g32, beta.to(DType::Float32), rm, rv, 0.1, 1e-5);
  auto g = ops::batch_norm_backward_train(dy.to(DType::Float32), x32, g32, f32.save_mean, f32.save_invstd);
  // Sums of 45 terms of O(1) rounded in float: 1e-5 is ~100 ulp of headroom.
  EXPECT_LE(max_diff(g.dx.to_vector(), g64.dx.to_vector()), 1e-5);
  EXPECT_LE(max_diff(g.dgamma.to_vector(), g64.dgamma.to_vector()), 1e-5);
  EXPECT_LE(max_diff(g.dbeta.to_vector(), g64.dbeta.to_vector()), 1e-5);
}

// ---- the fused BatchNorm-ReLU ------------------------------------------------------------------------------

// The fused op must equal its composition exactly: the same value is computed, then rectified; the
// backward sums and scales the same masked gradient. Both dtypes, both modes, a NaN (-> 0 as relu).
TEST(BatchNormReluTest, EqualsReluOfBatchNormExactly) {
  Generator gen(31);
  for (DType dt : {DType::Float32, DType::Float64})
    for (const Shape& shape : kShapes) {
      SCOPED_TRACE(shape_str(shape) + " " + dtype_name(dt));
      const int64_t C = shape[1];
      Tensor x = Tensor::normal(shape, 0.2, 1.0, gen, dt), dy = Tensor::normal(shape, 0, 1, gen, dt);
      const Tensor gamma = Tensor::uniform({C}, 0.5, 1.5, gen, dt), beta = Tensor::uniform({C}, -0.5, 0.5, gen, dt);
      Tensor rm1 = Tensor::uniform({C}, -0.5, 0.5, gen, dt), rv1 = Tensor::uniform({C}, 0.5, 2, gen, dt);
      Tensor rm2 = rm1.clone(), rv2 = rv1.clone();
      const auto plain = ops::batch_norm_forward_train(x, gamma, beta, rm1, rv1, 0.1, 1e-5);
      const auto fused = ops::batch_norm_forward_train(x, gamma, beta, rm2, rv2, 0.1, 1e-5, ops::BnAct::Relu);
      const Tensor relu_y = ops::relu(plain.y);
      EXPECT_EQ(ops::max_abs_diff(fused.y, relu_y), 0.0);
      EXPECT_EQ(ops::max_abs_diff(fused.save_mean, plain.save_mean), 0.0);
      EXPECT_EQ(ops::max_abs_diff(fused.save_invstd, plain.save_invstd), 0.0);
      EXPECT_EQ(ops::max_abs_diff(rm2, rm1), 0.0);
      EXPECT_EQ(ops::max_abs_diff(rv2, rv1), 0.0);
      const auto g_plain = ops::batch_norm_backward_train(ops::relu_backward(dy, relu_y), x, gamma, plain.save_mean,
                                                          plain.save_invstd);
      const auto g_fused = ops::batch_norm_backward_train(dy, x, gamma, fused.save_mean, fused.save_invstd, fused.y);
      EXPECT_EQ(ops::max_abs_diff(g_fused.dx, g_plain.dx), 0.0);
      EXPECT_EQ(ops::max_abs_diff(g_fused.dgamma, g_plain.dgamma), 0.0);
      EXPECT_EQ(ops::max_abs_diff(g_fused.dbeta, g_plain.dbeta), 0.0);

      const Tensor ye = ops::batch_norm_forward_eval(x, gamma, beta, rm1, rv1, 1e-5);
      const Tensor ye_fused = ops::batch_norm_forward_eval(x, gamma, beta, rm1, rv1, 1e-5, ops::BnAct::Relu);
      EXPECT_EQ(ops::max_abs_diff(ye_fused, ops::relu(ye)), 0.0);
      const auto ge_plain = ops::batch_norm_backward_eval(ops::relu_backward(dy, ye_fused), x, gamma, rm1, rv1, 1e-5);
      const auto ge_fused = ops::batch_norm_backward_eval(dy, x, gamma, rm1, rv1, 1e-5, ye_fused);
      EXPECT_EQ(ops::max_abs_diff(ge_fused.dx, ge_plain.dx), 0.0);
      EXPECT_EQ(ops::max_abs_diff(ge_fused.dgamma, ge_plain.dgamma), 0.0);
      EXPECT_EQ(ops::max_abs_diff(ge_fused.dbeta, ge_plain.dbeta), 0.0);
      // Some values were cut and some passed: the mask was exercised both ways.
      const std::vector<double> yv = fused.y.to_vector();
      EXPECT_GT(std::count(yv.begin(), yv.end(), 0.0), 0);
      EXPECT_LT(std::count(yv.begin(), yv.end(), 0.0), static_cast<long>(yv.size()));
    }
}

TEST(BatchNormTest, SampleContiguousViews) {
  const Tensor buf = Tensor::zeros({3, 7, 4, 5});
  EXPECT_TRUE(ops::sample_contiguous(buf));
  EXPECT_TRUE(ops::sample_contiguous(buf.narrow(1, 0, 4)));   // a dense block's channel prefix
  EXPECT_TRUE(ops::sample_contiguous(buf.narrow(1, 2, 4)));   // any channel range
  EXPECT_TRUE(ops::sample_contiguous(buf.narrow(0, 1, 2)));
  EXPECT_FALSE(ops::sample_contiguous(buf.narrow(2, 0, 3)));  // rows cut: planes have gaps
  EXPECT_FALSE(ops::sample_contiguous(buf.narrow(3, 1, 3)));
  EXPECT_TRUE(ops::sample_contiguous(Tensor::zeros({2, 3, 1, 1}).narrow(1, 0, 2)));
  EXPECT_FALSE(ops::sample_contiguous(Tensor::zeros({2, 3})));
}

// Eval mode reads a channel prefix of a bigger buffer in place (no copy of the input: only the
// output is allocated) and gives what it gives on a contiguous copy, with and without the ReLU.
TEST(BatchNormTest, EvalReadsAChannelPrefixInPlace) {
  Generator gen(32);
  for (DType dt : {DType::Float32, DType::Float64}) {
    const Tensor buf = Tensor::normal({3, 7, 4, 5}, 0.3, 1.2, gen, dt);
    const Tensor view = buf.narrow(1, 1, 4);
    ASSERT_FALSE(view.is_contiguous());
    const Tensor g = Tensor::uniform({4}, 0.5, 1.5, gen, dt), b = Tensor::uniform({4}, -0.5, 0.5, gen, dt);
    const Tensor rm = Tensor::uniform({4}, -0.5, 0.5, gen, dt), rv = Tensor::uniform({4}, 0.5, 2, gen, dt);
    const Tensor copy = view.contiguous();
    for (ops::BnAct act : {ops::BnAct::None, ops::BnAct::Relu}) {
      reset_cpu_memory_peak();
      const std::size_t live = cpu_memory_stats().live_bytes;
      const Tensor y = ops::batch_norm_forward_eval(view, g, b, rm, rv, 1e-5, act);
      EXPECT_EQ(cpu_memory_stats().peak_bytes - live, y.numel() * dtype_size(dt)) << "the input was copied";
      EXPECT_EQ(ops::max_abs_diff(y, ops::batch_norm_forward_eval(copy, g, b, rm, rv, 1e-5, act)), 0.0);
    }
  }
}

TEST(BatchNormReluTest, NaNBecomesZeroAsRelu) {
  Tensor x = Tensor::from_vector({1.0, std::nan(""), -1.0, 2.0}, {1, 2, 2, 1});
  const Tensor g = Tensor::ones({2}), b = Tensor::zeros({2}), rm = Tensor::zeros({2}), rv = Tensor::ones({2});
  const std::vector<double> y = ops::batch_norm_forward_eval(x, g, b, rm, rv, 0.0, ops::BnAct::Relu).to_vector();
  EXPECT_EQ(y[0], 1.0);
  EXPECT_EQ(y[1], 0.0);  // NaN -> 0, as ops::relu
  EXPECT_EQ(y[2], 0.0);
  EXPECT_EQ(y[3], 2.0);
}

TEST(BatchNormReluTest, GradcheckBothModes) {
  uint64_t seed = 300;
  for (const Shape& shape : kShapes) {
    gradcheck_bn(shape, true, seed++, /*relu=*/true);
    gradcheck_bn(shape, false, seed++, /*relu=*/true);
  }
}

TEST(BatchNormReluTest, ReluOutputMustMatchTheInput) {
  Tensor x = Tensor::zeros({2, 3, 4, 4}), c3 = Tensor::ones({3}), rm = Tensor::zeros({3}), rv = Tensor::ones({3});
  Tensor bad = Tensor::zeros({2, 3, 4, 5});
  EXPECT_THROW_WITH(ops::batch_norm_backward_train(x, x, c3, rm, rv, bad), "batch_norm_backward_train", "relu_y",
                    "(2, 3, 4, 5)", "(2, 3, 4, 4)");
  EXPECT_THROW_WITH(ops::batch_norm_backward_eval(x, x, c3, rm, rv, 1e-5, bad.to(DType::Float64)),
                    "batch_norm_backward_eval", "relu_y");
}

// ---- errors
// ------------------------------------------------------------------------------------------------

TEST(BatchNormTest, Errors) {
  Tensor x3 = Tensor::zeros({3, 4, 5});
  Tensor x = Tensor::zeros({2, 3, 4, 4});
  Tensor c3 = Tensor::ones({3}), c4 = Tensor::ones({4});
  Tensor rm = Tensor::zeros({3}), rv = Tensor::ones({3});
  EXPECT_THROW_WITH(ops::batch_norm_forward_train(x3, c3, c3, rm, rv, 0.1, 1e-5), "batch_norm_forward_train",
                    "4-D", "(3, 4, 5)");
  EXPECT_THROW_WITH(ops::batch_norm_forward_train(x, c4, c3, rm, rv, 0.1, 1e-5), "batch_norm_forward_train",
                    "gamma", "(4)", "(2, 3, 4, 4)");
  EXPECT_THROW_WITH(ops::batch_norm_forward_train(x, c3, c4, rm, rv, 0.1, 1e-5), "beta", "(4)");
  Tensor rm4 = Tensor::zeros({4});
  EXPECT_THROW_WITH(ops::batch_norm_forward_train(x, c3, c3, rm4, rv, 0.1, 1e-5), "running_mean", "(4)");
  Tensor one = Tensor::zeros({1, 3, 1, 1});
  EXPECT_THROW_WITH(ops::batch_norm_forward_train(one, c3, c3, rm, rv, 0.1, 1e-5), "batch_norm_forward_train",
                    "more than 1 value per channel", "(1, 3, 1, 1)");
  Tensor c3d = Tensor::ones({3}, DType::Float64);
  EXPECT_THROW_WITH(ops::batch_norm_forward_train(x, c3d, c3, rm, rv, 0.1, 1e-5), "gamma", "float64",
                    "float32");
  Tensor xi = Tensor::zeros({2, 3, 4, 4}, DType::Int64);
  EXPECT_THROW_WITH(ops::batch_norm_forward_train(xi, c3, c3, rm, rv, 0.1, 1e-5), "batch_norm_forward_train",
                    "int64");
  EXPECT_THROW_WITH(ops::batch_norm_forward_eval(x, c3, c3, Tensor(), rv, 1e-5), "batch_norm_forward_eval",
                    "running_mean", "undefined");
  EXPECT_THROW_WITH(ops::batch_norm_forward_eval(x3, c3, c3, rm, rv, 1e-5), "batch_norm_forward_eval",
                    "(3, 4, 5)");
  Tensor dy_bad = Tensor::zeros({2, 3, 4, 5});
  EXPECT_THROW_WITH(ops::batch_norm_backward_train(dy_bad, x, c3, rm, rv), "batch_norm_backward_train",
                    "(2, 3, 4, 5)", "(2, 3, 4, 4)");
  EXPECT_THROW_WITH(ops::batch_norm_backward_train(x, x, c3, rm4, rv), "batch_norm_backward_train",
                    "save_mean", "(4)");
  EXPECT_THROW_WITH(ops::batch_norm_backward_eval(dy_bad, x, c3, rm, rv, 1e-5), "batch_norm_backward_eval",
                    "(2, 3, 4, 5)");
  // Through the differentiable op, too.
  EXPECT_THROW_WITH(batch_norm2d(Variable(one), Variable(c3), Variable(c3), rm, rv, true),
                    "more than 1 value per channel");
}

}  // namespace
}  // namespace ladnn
