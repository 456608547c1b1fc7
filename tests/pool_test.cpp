// tests/pool_test.cpp — max, average and adaptive-average pooling: shapes, values, gradients, errors.
//
// Oracles: hand-computed small cases (PyTorch's documented behaviour), plain float64 loops written
// from the definitions below, and float64 gradchecks. Max-pool inputs are a shuffled grid of distinct
// values 0.1 apart, so the finite-difference step (1e-6) never changes which element wins.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "autograd/functions.h"
#include "autograd/gradcheck.h"
#include "layers/batchnorm2d.h"
#include "tensor/ops.h"
#include "tests/test_util.h"

namespace ladnn {
namespace {


ops::Pool2dParams make(int64_t k, int64_t s, int64_t pad, bool ceil = false, bool include_pad = true) {
  ops::Pool2dParams p;
  p.kernel_h = p.kernel_w = k;
  p.stride_h = p.stride_w = s;
  p.pad_h = p.pad_w = pad;
  p.ceil_mode = ceil;
  p.count_include_pad = include_pad;
  return p;
}

// Distinct values (a shuffled grid 0.1 apart, centred on 0): no ties, even after a 1e-6 nudge.
Tensor distinct(const Shape& shape, Generator& gen, DType dtype = DType::Float64) {
  const int64_t n = shape_numel(shape);
  std::vector<double> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = 0.1 * double(i - n / 2);
  for (int64_t i = n - 1; i > 0; --i) std::swap(v[i], v[gen.below(i + 1)]);
  return Tensor::from_vector(v, shape, dtype);
}

double max_diff(const std::vector<double>& a, const std::vector<double>& b) {
  EXPECT_EQ(a.size(), b.size());
  double m = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

// Output length, PyTorch's definition in floating point: floor or ceil of (in + 2 pad - k) / s, plus 1;
// in ceil mode the last window must start inside the input or the left padding, else it is dropped.
int64_t ref_out_len(int64_t in, int64_t k, int64_t s, int64_t pad, bool ceil) {
  const double steps = double(in + 2 * pad - k) / double(s);
  int64_t out = int64_t(ceil ? std::ceil(steps) : std::floor(steps)) + 1;
  if (ceil && (out - 1) * s - pad >= in) --out;
  return out;
}

struct RefPool {
  std::vector<double> y;
  std::vector<int64_t> idx;  // max pool only
};

// Max and average pooling straight from the definitions, in window (padded) coordinates.
RefPool ref_pool(const Tensor& x, const ops::Pool2dParams& p, bool max) {
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t OH = ref_out_len(H, p.kernel_h, p.stride_h, p.pad_h, p.ceil_mode);
  const int64_t OW = ref_out_len(W, p.kernel_w, p.stride_w, p.pad_w, p.ceil_mode);
  RefPool r;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t oh = 0; oh < OH; ++oh)
        for (int64_t ow = 0; ow < OW; ++ow) {
          double best = -std::numeric_limits<double>::infinity(), sum = 0;
          int64_t best_i = -1, cells_in = 0, cells_padded = 0;
          for (int64_t i = 0; i < p.kernel_h; ++i)
            for (int64_t j = 0; j < p.kernel_w; ++j) {
              const int64_t h = oh * p.stride_h - p.pad_h + i, w = ow * p.stride_w - p.pad_w + j;
              // The padded input spans [-pad, size + pad); the window is clipped to it.
              if (h < H + p.pad_h && w < W + p.pad_w) ++cells_padded;
              if (h < 0 || h >= H || w < 0 || w >= W) continue;
              ++cells_in;
              const double v = x.at({n, c, h, w});
              sum += v;
              if (v > best) {
                best = v;
                best_i = h * W + w;
              }
            }
          if (max) {
            r.y.push_back(best);
            r.idx.push_back(best_i);
          } else {
            r.y.push_back(sum / double(p.count_include_pad ? cells_padded : cells_in));
          }
        }
  return r;
}

std::vector<double> ref_adaptive(const Tensor& x, int64_t OH, int64_t OW) {
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  std::vector<double> y;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t i = 0; i < OH; ++i)
        for (int64_t j = 0; j < OW; ++j) {
          const auto h0 = int64_t(std::floor(double(i) * H / OH)),
                     h1 = int64_t(std::ceil(double(i + 1) * H / OH));
          const auto w0 = int64_t(std::floor(double(j) * W / OW)),
                     w1 = int64_t(std::ceil(double(j + 1) * W / OW));
          double sum = 0;
          for (int64_t h = h0; h < h1; ++h)
            for (int64_t w = w0; w < w1; ++w) sum += x.at({n, c, h, w});
          y.push_back(sum / double((h1 - h0) * (w1 - w0)));
        }
  return y;
}

// Configurations covering floor/ceil, padding, overlap (k > s), gaps (k < s), rectangles, batch 1.
struct Case {
  Shape shape;
  ops::Pool2dParams p;
};
std::vector<Case> cases() {
  std::vector<Case> cs = {
      {{2, 3, 6, 6}, make(2, 2, 0)},       {{1, 2, 7, 5}, make(3, 2, 1)},
      {{2, 1, 7, 7}, make(3, 2, 1, true)}, {{1, 1, 5, 5}, make(2, 2, 0, true)},
      {{3, 2, 3, 3}, make(2, 2, 1, true)}, {{1, 3, 8, 9}, make(2, 3, 1, false)},
      {{2, 2, 4, 4}, make(3, 2, 0, true)}, {{1, 1, 1, 1}, make(1, 1, 0)},
      {{2, 2, 5, 4}, make(4, 1, 2, true)},
  };
  ops::Pool2dParams rect = make(3, 2, 1);
  rect.kernel_w = 2;
  rect.stride_w = 1;
  rect.pad_w = 0;
  cs.push_back({{2, 3, 6, 5}, rect});
  return cs;
}

// ---- output shape
// -------------------------------------------------------------------------------------------

TEST(PoolTest, OutputShapeAsPyTorch) {
  auto hw = [](int64_t H, int64_t W, ops::Pool2dParams p) {
    Shape s = ops::pool2d_output_shape({2, 3, H, W}, p);
    return std::vector<int64_t>{s[2], s[3]};
  };
  using V = std::vector<int64_t>;
  EXPECT_EQ(hw(224, 224, make(3, 2, 1)), (V{112, 112}));  // DenseNet stem max pool
  EXPECT_EQ(hw(56, 56, make(2, 2, 0)), (V{28, 28}));      // transition avg pool
  EXPECT_EQ(hw(5, 5, make(2, 2, 0)), (V{2, 2}));
  EXPECT_EQ(hw(5, 5, make(2, 2, 0, true)), (V{3, 3}));
  EXPECT_EQ(hw(6, 7, make(3, 2, 1)), (V{3, 4}));
  EXPECT_EQ(hw(6, 6, make(3, 2, 1, true)), (V{4, 4}));
  // Ceil mode would add a window starting at 4 = H + pad, inside the right padding: PyTorch drops it.
  EXPECT_EQ(hw(3, 3, make(2, 2, 1, true)), (V{2, 2}));
  EXPECT_EQ(hw(1, 1, make(1, 2, 0, true)), (V{1, 1}));
  EXPECT_EQ(hw(4, 4, make(3, 2, 0, true)), (V{2, 2}));
  // Kernel larger than the input: ceil((2 - 3) / 2) + 1 = 1 window in ceil mode, 0 (an error) in floor mode.
  EXPECT_EQ(hw(2, 2, make(3, 2, 0, true)), (V{1, 1}));
  EXPECT_THROW(hw(2, 2, make(3, 2, 0, false)), std::invalid_argument);
  ops::Pool2dParams rect = make(3, 2, 1);
  rect.kernel_w = 2;
  rect.stride_w = 1;
  rect.pad_w = 0;
  EXPECT_EQ(hw(6, 5, rect), (V{3, 4}));
  EXPECT_EQ(ops::pool2d_output_shape({2, 3, 9, 9}, make(3, 3, 0))[0], 2);
  EXPECT_EQ(ops::pool2d_output_shape({2, 3, 9, 9}, make(3, 3, 0))[1], 3);
}

TEST(PoolTest, OutputShapeMatchesFormulaEverywhere) {
  // Integer arithmetic (rounding toward -inf) against the floating-point formula, over many sizes;
  // sizes that come out <= 0 must throw.
  for (int64_t in = 1; in <= 12; ++in)
    for (int64_t k = 1; k <= 5; ++k)
      for (int64_t s = 1; s <= 4; ++s)
        for (int64_t pad = 0; pad <= k / 2; ++pad)
          for (bool ceil : {false, true}) {
            const int64_t want = ref_out_len(in, k, s, pad, ceil);
            ops::Pool2dParams p = make(k, s, pad, ceil);
            if (want <= 0) {
              EXPECT_THROW(ops::pool2d_output_shape({1, 1, in, in}, p), std::invalid_argument);
              continue;
            }
            EXPECT_EQ(ops::pool2d_output_shape({1, 1, in, in}, p)[2], want)
                << "in " << in << " k " << k << " s " << s << " pad " << pad << " ceil " << ceil;
          }
}

// ---- max pool
// --------------------------------------------------------------------------------------------------

TEST(PoolTest, MaxPoolHandComputed) {
  Tensor x = Tensor::arange(0, 16, 1, DType::Float64).view({1, 1, 4, 4});
  auto out = ops::max_pool2d_forward(x, make(2, 2, 0));
  EXPECT_EQ(out.y.shape(), (Shape{1, 1, 2, 2}));
  EXPECT_EQ(out.y.to_vector(), (std::vector<double>{5, 7, 13, 15}));
  EXPECT_EQ(out.indices.dtype(), DType::Int64);
  EXPECT_EQ(out.indices.to_vector(), (std::vector<double>{5, 7, 13, 15}));
  // Ties: the first maximum in scan order wins.
  auto tie = ops::max_pool2d_forward(Tensor::ones({1, 1, 4, 4}, DType::Float64), make(2, 2, 0));
  EXPECT_EQ(tie.indices.to_vector(), (std::vector<double>{0, 2, 8, 10}));
  // Padding is -inf: with an all-negative input no output is 0, and no index points at padding.
  auto neg = ops::max_pool2d_forward(Tensor::full({1, 1, 3, 3}, -2.0, DType::Float64), make(2, 2, 1, true));
  EXPECT_EQ(neg.y.to_vector(), (std::vector<double>(4, -2.0)));
  EXPECT_EQ(neg.indices.to_vector(), (std::vector<double>{0, 1, 3, 4}));
}

TEST(PoolTest, MaxPoolMatchesReference) {
  Generator gen(21);
  for (const Case& c : cases())
    for (DType dtype : {DType::Float64, DType::Float32}) {
      Tensor x = distinct(c.shape, gen, dtype);
      auto out = ops::max_pool2d_forward(x, c.p);
      RefPool ref = ref_pool(x, c.p, true);
      EXPECT_EQ(out.y.to_vector(), ref.y) << shape_str(c.shape);  // a max is exact
      std::vector<double> idx(ref.idx.begin(), ref.idx.end());
      EXPECT_EQ(out.indices.to_vector(), idx) << shape_str(c.shape);
      EXPECT_EQ(out.y.dtype(), dtype);
      // Without the indices (inference): the same y, no indices tensor.
      const ops::MaxPoolForward bare = ops::max_pool2d_forward(x, c.p, false);
      EXPECT_EQ(bare.y.to_vector(), ref.y) << shape_str(c.shape);
      EXPECT_FALSE(bare.indices.defined());
    }
}

// The inference BatchNorm-ReLU-average pool: on the CPU the two ops in sequence, the same values; bad
// input named by the op (the checks run before either device's path).
TEST(PoolTest, BatchNormReluAvgPoolEvalIsTheTwoOpsAndChecksItsInput) {
  Generator gen(23);
  const Tensor x = Tensor::normal({2, 3, 6, 5}, 0, 1, gen);
  ops::BnEval bn;
  bn.gamma = Tensor::normal({3}, 1, 0.2, gen);
  bn.beta = Tensor::normal({3}, 0, 0.2, gen);
  bn.running_mean = Tensor::normal({3}, 0, 0.5, gen);
  bn.running_var = Tensor::full({3}, 0.7);
  bn.act = ops::BnAct::Relu;
  const ops::Pool2dParams p = make(2, 2, 0);
  const Tensor two = ops::avg_pool2d_forward(
      ops::batch_norm_forward_eval(x, bn.gamma, bn.beta, bn.running_mean, bn.running_var, bn.eps, bn.act), p);
  EXPECT_EQ(ops::bn_avg_pool2d_eval(x, bn, p).to_vector(), two.to_vector());
  ops::BnEval bad = bn;
  bad.gamma = Tensor::ones({4});
  EXPECT_THROW_WITH(ops::bn_avg_pool2d_eval(x, bad, p), "bn_avg_pool2d_eval: bn gamma must have shape (3)");
  bad = bn;
  bad.running_var = Tensor();
  EXPECT_THROW_WITH(ops::bn_avg_pool2d_eval(x, bad, p), "bn_avg_pool2d_eval: bn running_var is undefined");
  bad = bn;
  bad.running_mean = Tensor::zeros({3}, DType::Float64);
  EXPECT_THROW_WITH(ops::bn_avg_pool2d_eval(x, bad, p), "bn running_mean is float64 but input is float32");
  bad = ops::BnEval{};
  bad.save_mean = Tensor::zeros({3});
  bad.save_invstd = Tensor::ones({3});
  EXPECT_THROW_WITH(ops::bn_avg_pool2d_eval(x, bad, p), "bn_avg_pool2d_eval: bn is the batch form");
  EXPECT_THROW_WITH(ops::bn_avg_pool2d_eval(x.view({2, 3, 30}), bn, p), "bn_avg_pool2d_eval", "must be 4-D");
  EXPECT_THROW_WITH(ops::bn_avg_pool2d_eval(x, bn, make(7, 1, 0)), "bn_avg_pool2d_eval");
}

// The training BatchNorm-ReLU-average pool (a transition's, ops::bn_avg_pool2d_train) is the two ops in
// sequence, bit for bit on the CPU: the pooled map, the saved and running statistics, with the batch
// statistics given (a dense block's table) or not, with and without the ReLU, for 2x2/2 on odd sizes
// (the last row and column dropped) and an overlapping padded 3x3/2 window, on a channel prefix read in
// place, in both precisions. Its backward is avg_pool2d_backward then the BatchNorm backward with the
// ReLU's mask read from the normalised map: the same bits with the mask recomputed from x.
TEST(PoolTest, BatchNormReluAvgPoolTrainIsTheTwoOps) {
  Generator gen(24);
  for (DType dt : {DType::Float32, DType::Float64})
    for (const ops::Pool2dParams& p : {make(2, 2, 0), make(3, 2, 1, false, false)})
      for (ops::BnAct act : {ops::BnAct::Relu, ops::BnAct::None})
        for (bool given : {false, true}) {
          SCOPED_TRACE(std::string(dtype_name(dt)) + " kernel " + std::to_string(p.kernel_h) +
                       (act == ops::BnAct::Relu ? " relu" : "") + (given ? " given statistics" : ""));
          const Tensor wide = Tensor::normal({3, 6, 7, 5}, 0.3, 1.2, gen, dt);
          const Tensor x = wide.narrow(1, 0, 4);
          const Tensor gamma = Tensor::uniform({4}, 0.5, 1.5, gen, dt),
                       beta = Tensor::uniform({4}, -0.5, 0.5, gen, dt);
          const Tensor rm0 = Tensor::normal({4}, 0, 1, gen, dt), rv0 = Tensor::uniform({4}, 0.5, 2, gen, dt);
          Tensor rm1 = rm0.clone(), rv1 = rv0.clone(), rm2 = rm0.clone(), rv2 = rv0.clone();
          const Tensor stats = given ? ops::batch_norm_batch_stats(x) : Tensor();
          const ops::BatchNormForward f =
              ops::bn_avg_pool2d_train(x, gamma, beta, rm1, rv1, 0.1, 1e-5, act, p, stats);
          const ops::BatchNormForward n =
              ops::batch_norm_forward_train(x, gamma, beta, rm2, rv2, 0.1, 1e-5, act);
          const Tensor pooled = ops::avg_pool2d_forward(n.y, p);
          ASSERT_EQ(f.y.shape(), pooled.shape());
          EXPECT_EQ(ops::max_abs_diff(f.y, pooled), 0.0);
          EXPECT_EQ(ops::max_abs_diff(f.save_mean, n.save_mean), 0.0);
          EXPECT_EQ(ops::max_abs_diff(f.save_invstd, n.save_invstd), 0.0);
          EXPECT_EQ(ops::max_abs_diff(rm1, rm2), 0.0);
          EXPECT_EQ(ops::max_abs_diff(rv1, rv2), 0.0);
          EXPECT_EQ(f.relu_from_x, act == ops::BnAct::Relu);
          const Tensor dy = Tensor::normal(f.y.shape(), 0, 1, gen, dt);
          const ops::BatchNormGrads got =
              ops::bn_avg_pool2d_backward_train(dy, x, gamma, beta, f.save_mean, f.save_invstd, act, p);
          const ops::BatchNormGrads ref = ops::batch_norm_backward_train(
              ops::avg_pool2d_backward(dy, x.shape(), p), x, gamma, n.save_mean, n.save_invstd,
              act == ops::BnAct::Relu ? n.y : Tensor());
          EXPECT_EQ(ops::max_abs_diff(got.dx, ref.dx), 0.0);
          EXPECT_EQ(ops::max_abs_diff(got.dgamma, ref.dgamma), 0.0);
          EXPECT_EQ(ops::max_abs_diff(got.dbeta, ref.dbeta), 0.0);
        }
}

// The same for the stem's BatchNorm-ReLU-max pool (ops::bn_max_pool2d_train): the pooled map and its
// argmax indices are max_pool2d's of the normalised map (ties among rectified zeros included), the
// statistics batch_norm_forward_train's, and the backward the two backward ops', bit for bit.
TEST(PoolTest, BatchNormReluMaxPoolTrainIsTheTwoOps) {
  Generator gen(26);
  for (DType dt : {DType::Float32, DType::Float64})
    for (ops::BnAct act : {ops::BnAct::Relu, ops::BnAct::None})
      for (bool given : {false, true}) {
        SCOPED_TRACE(std::string(dtype_name(dt)) + (act == ops::BnAct::Relu ? " relu" : "") +
                     (given ? " given statistics" : ""));
        const Tensor x = Tensor::normal({2, 3, 9, 8}, 0.3, 1.2, gen, dt);
        const ops::Pool2dParams p = make(3, 2, 1);
        const Tensor gamma = Tensor::uniform({3}, 0.5, 1.5, gen, dt),
                     beta = Tensor::uniform({3}, -0.5, 0.5, gen, dt);
        beta.narrow(0, 0, 1).fill_(-2.5);  // channel 0 mostly rectified: whole windows of zeros (ties)
        Tensor rm1 = Tensor::zeros({3}, dt), rv1 = Tensor::ones({3}, dt), rm2 = rm1.clone(),
               rv2 = rv1.clone();
        const ops::BnMaxPoolForward f = ops::bn_max_pool2d_train(
            x, gamma, beta, rm1, rv1, 0.1, 1e-5, act, p, given ? ops::batch_norm_batch_stats(x) : Tensor());
        const ops::BatchNormForward n =
            ops::batch_norm_forward_train(x, gamma, beta, rm2, rv2, 0.1, 1e-5, act);
        const ops::MaxPoolForward m = ops::max_pool2d_forward(n.y, p);
        if (act == ops::BnAct::Relu) {
          const std::vector<double> yv = m.y.to_vector();
          ASSERT_GT(std::count(yv.begin(), yv.end(), 0.0), 0) << "some windows are all rectified: ties at 0";
        }
        EXPECT_EQ(ops::max_abs_diff(f.bn.y, m.y), 0.0);
        EXPECT_EQ(f.indices.to_vector(), m.indices.to_vector());
        EXPECT_EQ(ops::max_abs_diff(f.bn.save_invstd, n.save_invstd), 0.0);
        EXPECT_EQ(ops::max_abs_diff(rv1, rv2), 0.0);
        const Tensor dy = Tensor::normal(f.bn.y.shape(), 0, 1, gen, dt);
        const ops::BatchNormGrads got = ops::bn_max_pool2d_backward_train(
            dy, f.indices, x, gamma, beta, f.bn.save_mean, f.bn.save_invstd, act, p);
        const ops::BatchNormGrads ref = ops::batch_norm_backward_train(
            ops::max_pool2d_backward(dy, m.indices, x.shape(), p), x, gamma, n.save_mean, n.save_invstd,
            act == ops::BnAct::Relu ? n.y : Tensor());
        EXPECT_EQ(ops::max_abs_diff(got.dx, ref.dx), 0.0);
        EXPECT_EQ(ops::max_abs_diff(got.dgamma, ref.dgamma), 0.0);
        EXPECT_EQ(ops::max_abs_diff(got.dbeta, ref.dbeta), 0.0);
      }
  Generator g2(27);
  Variable xv(Tensor::normal({2, 2, 5, 6}, 0.5, 1.5, g2, DType::Float64), true);
  Variable gv(Tensor::uniform({2}, 0.5, 1.5, g2, DType::Float64), true);
  Variable bv(Tensor::uniform({2}, -1, 1, g2, DType::Float64), true);
  Tensor rm = Tensor::zeros({2}, DType::Float64), rv = Tensor::ones({2}, DType::Float64);
  GradcheckResult r = gradcheck(
      [&](const std::vector<Variable>& v) {
        return batch_norm_relu_max_pool2d(v[0], v[1], v[2], rm, rv, 0.1, 1e-5, make(3, 2, 1));
      },
      {xv, gv, bv});
  EXPECT_TRUE(r.ok) << r.message;
  EXPECT_THROW_WITH(ops::bn_max_pool2d_train(Tensor::zeros({2, 3, 4, 4}), Tensor::ones({3}), Tensor(), rm, rv,
                                             0.1, 1e-5, ops::BnAct::Relu, make(9, 1, 0)),
                    "bn_max_pool2d_train");
}

// What the fused training ops keep for their backward: not the normalised map. Against the two autograd
// ops, which keep it (the BatchNorm-ReLU's mask), the fused ones hold exactly that map's bytes less while
// the graph is alive, for the average pool (a transition) and the max pool (the stem): (2, 8, 16, 16) in
// float32, 16,384 bytes.
TEST(PoolTest, FusedTrainingPoolsKeepNoNormalisedMap) {
  Generator gen(28);
  const Tensor x0 = Tensor::normal({2, 8, 16, 16}, 0, 1, gen);
  const std::size_t map_bytes = x0.numel() * sizeof(float);
  Variable gamma(Tensor::ones({8}), true), beta(Tensor::zeros({8}), true);
  Tensor rm = Tensor::zeros({8}), rv = Tensor::ones({8});
  auto kept = [&](const std::function<Variable(const Variable&)>& op) {
    Variable x(x0.clone(), true);
    const std::size_t before = cpu_memory_stats().live_bytes;
    Variable y = op(x);
    const std::size_t after = cpu_memory_stats().live_bytes;
    sum(y).backward();
    return after - before;
  };
  const ops::Pool2dParams avg = make(2, 2, 0), max = make(3, 2, 1);
  const std::size_t fused_avg = kept(
      [&](const Variable& x) { return batch_norm_relu_avg_pool2d(x, gamma, beta, rm, rv, 0.1, 1e-5, avg); });
  const std::size_t two_avg = kept(
      [&](const Variable& x) { return avg_pool2d(batch_norm_relu2d(x, gamma, beta, rm, rv, true), avg); });
  const std::size_t fused_max = kept(
      [&](const Variable& x) { return batch_norm_relu_max_pool2d(x, gamma, beta, rm, rv, 0.1, 1e-5, max); });
  const std::size_t two_max = kept(
      [&](const Variable& x) { return max_pool2d(batch_norm_relu2d(x, gamma, beta, rm, rv, true), max); });
  RecordProperty("kept_fused_avg_bytes", std::to_string(fused_avg));
  RecordProperty("kept_two_ops_avg_bytes", std::to_string(two_avg));
  EXPECT_EQ(two_avg - fused_avg, map_bytes) << "fused " << fused_avg << ", two ops " << two_avg;
  EXPECT_EQ(two_max - fused_max, map_bytes) << "fused " << fused_max << ", two ops " << two_max;
}

// The autograd op against central differences (float64), and its bad input named by the op.
TEST(PoolTest, BatchNormReluAvgPoolTrainGradcheckAndErrors) {
  Generator gen(25);
  Variable x(Tensor::normal({2, 3, 5, 6}, 0.5, 1.5, gen, DType::Float64), true);
  Variable gamma(Tensor::uniform({3}, 0.5, 1.5, gen, DType::Float64), true);
  Variable beta(Tensor::uniform({3}, -1, 1, gen, DType::Float64), true);
  Tensor rm = Tensor::zeros({3}, DType::Float64), rv = Tensor::ones({3}, DType::Float64);
  const ops::Pool2dParams p = make(2, 2, 0);
  GradcheckResult r = gradcheck(
      [&](const std::vector<Variable>& v) {
        return batch_norm_relu_avg_pool2d(v[0], v[1], v[2], rm, rv, 0.1, 1e-5, p);
      },
      {x, gamma, beta});
  EXPECT_TRUE(r.ok) << r.message;

  const Tensor xf = Tensor::normal({2, 3, 4, 4}, 0, 1, gen);
  Tensor c3 = Tensor::ones({3}), rmf = Tensor::zeros({3}), rvf = Tensor::ones({3});
  EXPECT_THROW_WITH(
      ops::bn_avg_pool2d_train(xf, c3, c3, rmf, rvf, 0.1, 1e-5, ops::BnAct::Relu, make(7, 1, 0)),
      "bn_avg_pool2d_train");
  EXPECT_THROW_WITH(
      ops::bn_avg_pool2d_train(xf, Tensor::ones({4}), c3, rmf, rvf, 0.1, 1e-5, ops::BnAct::Relu, p),
      "bn_avg_pool2d_train", "gamma", "(4)");
  EXPECT_THROW_WITH(ops::bn_avg_pool2d_train(xf, c3, c3, rmf, rvf, 0.1, 1e-5, ops::BnAct::Relu, p,
                                             Tensor::zeros({2, 2}, DType::Float64)),
                    "bn_avg_pool2d_train", "batch_stats", "(3, 2)");
  const ops::BatchNormForward f =
      ops::bn_avg_pool2d_train(xf, c3, c3, rmf, rvf, 0.1, 1e-5, ops::BnAct::Relu, p);
  EXPECT_THROW_WITH(
      ops::bn_avg_pool2d_backward_train(xf, xf, c3, c3, f.save_mean, f.save_invstd, ops::BnAct::Relu, p),
      "avg_pool2d_backward", "(2, 3, 4, 4)");
  EXPECT_THROW_WITH(ops::bn_avg_pool2d_backward_train(Tensor(), xf, c3, c3, f.save_mean, f.save_invstd,
                                                      ops::BnAct::Relu, p),
                    "bn_avg_pool2d_backward_train", "grad_output is undefined");
  EXPECT_THROW_WITH(ops::bn_max_pool2d_backward_train(Tensor(), Tensor(), xf, c3, c3, f.save_mean,
                                                      f.save_invstd, ops::BnAct::Relu, make(3, 2, 1)),
                    "bn_max_pool2d_backward_train", "grad_output is undefined");
  // The layer's fused forms are for training.
  BatchNorm2d bn(3);
  bn.eval();
  EXPECT_THROW_WITH(bn.forward_relu_avg_pool(Variable(xf), p), "BatchNorm2d", "eval mode");
  bn.train();
  EXPECT_THROW_WITH(bn.forward_relu_max_pool(Variable(Tensor::zeros({2, 4, 4, 4})), make(3, 2, 1)),
                    "BatchNorm2d", "expected input (N, 3, H, W)", "(2, 4, 4, 4)");
}

// Autograd's max pool keeps the indices only where a backward may read them: without gradients (or for
// an input that needs none) the op gives the same values and records no backward.
TEST(PoolTest, MaxPoolWithoutGradientsGivesTheSameValues) {
  Generator gen(22);
  const Tensor x = Tensor::normal({2, 3, 7, 9}, 0, 1, gen);
  const ops::Pool2dParams p = make(3, 2, 1);
  const Variable with_grad(x, true);
  const Variable y = max_pool2d(with_grad, p);
  EXPECT_TRUE(y.requires_grad());
  Variable y_nograd;
  {
    NoGradGuard no_grad;
    y_nograd = max_pool2d(with_grad, p);
  }
  EXPECT_FALSE(y_nograd.requires_grad());
  EXPECT_EQ(y_nograd.tensor().to_vector(), y.tensor().to_vector());
  EXPECT_EQ(max_pool2d(Variable(x), p).tensor().to_vector(), y.tensor().to_vector());
}

TEST(PoolTest, MaxPoolBackwardRoutesToArgmax) {
  // Overlapping windows (k 3, s 1) share winners: their gradients must add up.
  Tensor x = Tensor::arange(0, 9, 1, DType::Float64).view({1, 1, 3, 3});
  auto out = ops::max_pool2d_forward(x, make(3, 1, 1));  // 3x3 outputs
  Tensor dy = Tensor::arange(1, 10, 1, DType::Float64).view({1, 1, 3, 3});
  Tensor dx = ops::max_pool2d_backward(dy, out.indices, x.shape());
  // Window (i, j) covers rows i-1..i+1 and columns j-1..j+1 (clipped); its max is its bottom-right cell:
  // cell 4 wins output 0 (dy 1); cell 5 outputs 1, 2 (dy 2 + 3); cell 7 outputs 3, 6 (dy 4 + 7);
  // cell 8 outputs 4, 5, 7, 8 (dy 5 + 6 + 8 + 9).
  EXPECT_EQ(out.indices.to_vector(), (std::vector<double>{4, 5, 5, 7, 8, 8, 7, 8, 8}));
  EXPECT_EQ(dx.to_vector(), (std::vector<double>{0, 0, 0, 0, 1, 5, 0, 11, 28}));
  // The form told the window gives the same, and checks that dy is the window's output shape.
  EXPECT_EQ(ops::max_pool2d_backward(dy, out.indices, x.shape(), make(3, 1, 1)).to_vector(), dx.to_vector());
  EXPECT_THROW_WITH(ops::max_pool2d_backward(dy, out.indices, x.shape(), make(3, 2, 1)), "max_pool2d_backward",
                    "(1, 1, 3, 3)", "(1, 1, 2, 2)");
}

TEST(PoolTest, MaxPoolGradcheck) {
  Generator gen(22);
  for (const Case& c : cases()) {
    Variable x(distinct(c.shape, gen), true);
    GradcheckResult r = gradcheck([&](const std::vector<Variable>& v) { return max_pool2d(v[0], c.p); }, {x});
    EXPECT_TRUE(r.ok) << shape_str(c.shape) << "\n" << r.message;
  }
}

// ---- average pool
// ---------------------------------------------------------------------------------------------

TEST(PoolTest, AvgPoolHandComputed) {
  // 3x3 ones, k 2, s 2, pad 1, ceil: windows of 4 padded cells holding 1, 2, 2 and 4 ones.
  Tensor ones = Tensor::ones({1, 1, 3, 3}, DType::Float64);
  EXPECT_EQ(ops::avg_pool2d_forward(ones, make(2, 2, 1, true, true)).to_vector(),
            (std::vector<double>{0.25, 0.5, 0.5, 1.0}));
  EXPECT_EQ(ops::avg_pool2d_forward(ones, make(2, 2, 1, true, false)).to_vector(),
            (std::vector<double>(4, 1.0)));
  // 4x4 arange, k 3, s 2, ceil: the last windows run past the input (no padding to count), so the
  // divisor is the clipped window: 9, 6, 6, 4 cells.
  Tensor x = Tensor::arange(0, 16, 1, DType::Float64).view({1, 1, 4, 4});
  for (bool include : {true, false})
    EXPECT_EQ(ops::avg_pool2d_forward(x, make(3, 2, 0, true, include)).to_vector(),
              (std::vector<double>{5.0, 6.5, 11.0, 12.5}));
}

TEST(PoolTest, AvgPoolMatchesReference) {
  Generator gen(23);
  for (const Case& c : cases())
    for (bool include : {true, false})
      for (DType dtype : {DType::Float64, DType::Float32}) {
        ops::Pool2dParams p = c.p;
        p.count_include_pad = include;
        Tensor x = Tensor::normal(c.shape, 0, 1, gen, dtype);
        Tensor y = ops::avg_pool2d_forward(x, p);
        // float32: a mean of up to 16 values O(1), rounded once to float -> below 1e-6.
        EXPECT_LE(max_diff(y.to_vector(), ref_pool(x, p, false).y), dtype == DType::Float64 ? 1e-14 : 1e-6)
            << shape_str(c.shape) << " count_include_pad " << include;
      }
}

TEST(PoolTest, AvgPoolBackwardIsTransposeOfForward) {
  // <dy, A x> = <A^T dy, x> for the linear map A; checks every divisor and window in float64.
  Generator gen(24);
  for (const Case& c : cases())
    for (bool include : {true, false}) {
      ops::Pool2dParams p = c.p;
      p.count_include_pad = include;
      Tensor x = Tensor::normal(c.shape, 0, 1, gen, DType::Float64);
      Tensor y = ops::avg_pool2d_forward(x, p);
      Tensor dy = Tensor::normal(y.shape(), 0, 1, gen, DType::Float64);
      Tensor dx = ops::avg_pool2d_backward(dy, x.shape(), p);
      const double lhs = ops::sum(ops::mul(dy, y)).item(), rhs = ops::sum(ops::mul(dx, x)).item();
      EXPECT_NEAR(lhs, rhs, 1e-12 * (1 + std::fabs(lhs))) << shape_str(c.shape);
    }
}

TEST(PoolTest, AvgPoolGradcheck) {
  Generator gen(25);
  for (const Case& c : cases())
    for (bool include : {true, false}) {
      ops::Pool2dParams p = c.p;
      p.count_include_pad = include;
      Variable x(Tensor::normal(c.shape, 0, 1, gen, DType::Float64), true);
      GradcheckResult r = gradcheck([&](const std::vector<Variable>& v) { return avg_pool2d(v[0], p); }, {x});
      EXPECT_TRUE(r.ok) << shape_str(c.shape) << " count_include_pad " << include << "\n" << r.message;
    }
}

// ---- adaptive average pool
// ------------------------------------------------------------------------------------

TEST(PoolTest, AdaptiveAvgPoolHandComputed) {
  // H 5 -> 3: rows [0, 2), [1, 4), [3, 5) (windows overlap).
  Tensor x = Tensor::arange(0, 5, 1, DType::Float64).view({1, 1, 5, 1});
  EXPECT_EQ(ops::adaptive_avg_pool2d_forward(x, 3, 1).to_vector(), (std::vector<double>{0.5, 2.0, 3.5}));
  // H 2 -> 3 (upsampling): [0, 1), [0, 2), [1, 2).
  Tensor x2 = Tensor::from_vector({1, 3}, {1, 1, 2, 1}, DType::Float64);
  EXPECT_EQ(ops::adaptive_avg_pool2d_forward(x2, 3, 1).to_vector(), (std::vector<double>{1, 2, 3}));
  // Global pooling is the plane mean (LA-DNN's head).
  Tensor g = Tensor::arange(0, 12, 1, DType::Float64).view({1, 2, 2, 3});
  EXPECT_EQ(ops::adaptive_avg_pool2d_forward(g, 1, 1).to_vector(), (std::vector<double>{2.5, 8.5}));
}

TEST(PoolTest, AdaptiveAvgPoolMatchesReference) {
  Generator gen(26);
  const std::vector<std::pair<Shape, std::pair<int64_t, int64_t>>> cs = {
      {{2, 3, 7, 7}, {1, 1}}, {{1, 2, 7, 5}, {3, 2}},  {{2, 1, 6, 6}, {4, 4}},
      {{1, 1, 3, 2}, {5, 4}}, {{3, 2, 10, 9}, {7, 3}}, {{1, 1, 1, 1}, {2, 2}}};
  for (const auto& c : cs)
    for (DType dtype : {DType::Float64, DType::Float32}) {
      Tensor x = Tensor::normal(c.first, 0, 1, gen, dtype);
      Tensor y = ops::adaptive_avg_pool2d_forward(x, c.second.first, c.second.second);
      EXPECT_EQ(y.shape(), (Shape{c.first[0], c.first[1], c.second.first, c.second.second}));
      EXPECT_LE(max_diff(y.to_vector(), ref_adaptive(x, c.second.first, c.second.second)),
                dtype == DType::Float64 ? 1e-14 : 1e-6)
          << shape_str(c.first);
    }
}

TEST(PoolTest, AdaptiveAvgPoolGradcheck) {
  Generator gen(27);
  const std::vector<std::pair<Shape, std::pair<int64_t, int64_t>>> cs = {
      {{2, 3, 5, 5}, {1, 1}}, {{1, 2, 7, 5}, {3, 2}}, {{2, 1, 4, 6}, {4, 4}}, {{1, 1, 3, 2}, {5, 4}}};
  for (const auto& c : cs) {
    Variable x(Tensor::normal(c.first, 0, 1, gen, DType::Float64), true);
    GradcheckResult r = gradcheck(
        [&](const std::vector<Variable>& v) {
          return adaptive_avg_pool2d(v[0], c.second.first, c.second.second);
        },
        {x});
    EXPECT_TRUE(r.ok) << shape_str(c.first) << "\n" << r.message;
  }
}

TEST(PoolTest, LargeInputsTakeTheParallelPath) {
  // Above the kernels' OpenMP threshold (2^15 window reads or input elements).
  Generator gen(29);
  const Shape shape{2, 16, 40, 40};
  Tensor x = distinct(shape, gen);
  const ops::Pool2dParams p = make(3, 2, 1, true);
  auto mx = ops::max_pool2d_forward(x, p);
  RefPool ref = ref_pool(x, p, true);
  EXPECT_EQ(mx.y.to_vector(), ref.y);
  EXPECT_EQ(mx.indices.to_vector(), std::vector<double>(ref.idx.begin(), ref.idx.end()));
  EXPECT_LE(max_diff(ops::avg_pool2d_forward(x, p).to_vector(), ref_pool(x, p, false).y), 1e-12);
  EXPECT_LE(max_diff(ops::adaptive_avg_pool2d_forward(x, 7, 7).to_vector(), ref_adaptive(x, 7, 7)), 1e-12);
  // Backward: adjoint identities <dy, A x> = <A^T dy, x> for the linear pools; max routes dy exactly.
  Tensor dy = Tensor::normal(mx.y.shape(), 0, 1, gen, DType::Float64);
  Tensor dx = ops::max_pool2d_backward(dy, mx.indices, shape);
  EXPECT_NEAR(ops::sum(dx).item(), ops::sum(dy).item(), 1e-9);
  EXPECT_NEAR(ops::sum(ops::mul(dx, x)).item(), ops::sum(ops::mul(dy, mx.y)).item(), 1e-9);
  Tensor ay = ops::avg_pool2d_forward(x, p), adx = ops::avg_pool2d_backward(dy, shape, p);
  EXPECT_NEAR(ops::sum(ops::mul(adx, x)).item(), ops::sum(ops::mul(dy, ay)).item(), 1e-9);
  Tensor gy = ops::adaptive_avg_pool2d_forward(x, 7, 7);
  Tensor gdy = Tensor::normal(gy.shape(), 0, 1, gen, DType::Float64);
  Tensor gdx = ops::adaptive_avg_pool2d_backward(gdy, shape);
  EXPECT_NEAR(ops::sum(ops::mul(gdx, x)).item(), ops::sum(ops::mul(gdy, gy)).item(), 1e-9);
}

TEST(PoolTest, NonContiguousInput) {
  Generator gen(28);
  Tensor base = distinct({2, 2, 5, 6}, gen);
  Tensor x = base.transpose(2, 3);  // (2, 2, 6, 5), strided
  ASSERT_FALSE(x.is_contiguous());
  const ops::Pool2dParams p = make(3, 2, 1, true);
  EXPECT_EQ(ops::max_pool2d_forward(x, p).y.to_vector(),
            ops::max_pool2d_forward(x.contiguous(), p).y.to_vector());
  EXPECT_EQ(ops::avg_pool2d_forward(x, p).to_vector(),
            ops::avg_pool2d_forward(x.contiguous(), p).to_vector());
  EXPECT_EQ(ops::adaptive_avg_pool2d_forward(x, 2, 3).to_vector(),
            ops::adaptive_avg_pool2d_forward(x.contiguous(), 2, 3).to_vector());
}

// ---- errors
// ------------------------------------------------------------------------------------------------------

TEST(PoolTest, Errors) {
  Tensor x = Tensor::zeros({2, 3, 4, 4});
  EXPECT_THROW_WITH(ops::max_pool2d_forward(Tensor::zeros({3, 4, 4}), make(2, 2, 0)), "max_pool2d_forward",
                    "4-D", "(3, 4, 4)");
  EXPECT_THROW_WITH(ops::avg_pool2d_forward(x, make(3, 1, 2)), "avg_pool2d_forward", "at most half", "(2, 2)",
                    "(3, 3)");
  // Each axis is checked on its own.
  ops::Pool2dParams tall_pad = make(2, 2, 0);
  tall_pad.pad_h = 2;
  EXPECT_THROW_WITH(ops::max_pool2d_forward(x, tall_pad), "max_pool2d_forward", "at most half", "(2, 0)",
                    "(2, 2)");
  ops::Pool2dParams wide_pad = make(2, 2, 0);
  wide_pad.pad_w = 2;
  EXPECT_THROW_WITH(ops::avg_pool2d_forward(x, wide_pad), "avg_pool2d_forward", "at most half", "(0, 2)");
  ops::Pool2dParams flat_kernel = make(2, 2, 0);
  flat_kernel.kernel_h = 0;
  EXPECT_THROW_WITH(ops::max_pool2d_forward(x, flat_kernel), "max_pool2d_forward", "kernel", "(0, 2)");
  ops::Pool2dParams flat_stride = make(2, 2, 0);
  flat_stride.stride_w = 0;
  EXPECT_THROW_WITH(ops::max_pool2d_forward(x, flat_stride), "max_pool2d_forward", "stride", "(2, 0)");
  EXPECT_THROW_WITH(ops::max_pool2d_forward(x, make(0, 1, 0)), "max_pool2d_forward", "kernel", "(0, 0)");
  EXPECT_THROW_WITH(ops::max_pool2d_forward(x, make(2, 0, 0)), "max_pool2d_forward", "stride", "(0, 0)");
  EXPECT_THROW_WITH(ops::max_pool2d_forward(x, make(2, 2, -1)), "max_pool2d_forward", "padding", "(-1, -1)");
  EXPECT_THROW_WITH(ops::max_pool2d_forward(Tensor::zeros({1, 1, 2, 2}), make(3, 1, 0)), "max_pool2d_forward",
                    "too small", "(1, 1, 2, 2)", "(1, 1, 0, 0)");
  EXPECT_THROW_WITH(ops::pool2d_output_shape({1, 1, 2, 2}, make(3, 1, 0)), "pool2d", "too small");
  EXPECT_THROW_WITH(ops::max_pool2d_forward(Tensor::zeros({2, 3, 4, 4}, DType::Int64), make(2, 2, 0)),
                    "max_pool2d_forward", "int64");
  EXPECT_THROW_WITH(ops::avg_pool2d_forward(Tensor::zeros({2, 0, 4, 4}), make(2, 2, 0)), "avg_pool2d_forward",
                    "(2, 0, 4, 4)");
  EXPECT_THROW_WITH(ops::adaptive_avg_pool2d_forward(x, 0, 2), "adaptive_avg_pool2d_forward", "(0, 2)",
                    "(2, 3, 4, 4)");
  EXPECT_THROW_WITH(ops::adaptive_avg_pool2d_forward(Tensor::zeros({4, 4}), 1, 1),
                    "adaptive_avg_pool2d_forward", "4-D", "(4, 4)");
  // Backward.
  auto fwd = ops::max_pool2d_forward(x, make(2, 2, 0));
  EXPECT_THROW_WITH(ops::max_pool2d_backward(Tensor::zeros({2, 3, 3, 2}), fwd.indices, x.shape()),
                    "max_pool2d_backward", "(2, 3, 2, 2)", "(2, 3, 3, 2)");
  EXPECT_THROW_WITH(ops::max_pool2d_backward(fwd.y, fwd.indices, {2, 4, 4, 4}), "max_pool2d_backward",
                    "(2, 4, 4, 4)");
  Tensor bad = Tensor::full({2, 3, 2, 2}, 16.0, DType::Int64);
  EXPECT_THROW_WITH(ops::max_pool2d_backward(fwd.y, bad, x.shape()), "max_pool2d_backward", "outside",
                    "(2, 3, 4, 4)");
  EXPECT_THROW_WITH(ops::max_pool2d_backward(fwd.y, fwd.y, x.shape()), "max_pool2d_backward", "int64");
  EXPECT_THROW_WITH(ops::avg_pool2d_backward(Tensor::zeros({2, 3, 3, 3}), x.shape(), make(2, 2, 0)),
                    "avg_pool2d_backward", "(2, 3, 3, 3)", "(2, 3, 2, 2)");
  EXPECT_THROW_WITH(ops::adaptive_avg_pool2d_backward(Tensor::zeros({2, 2, 1, 1}), x.shape()),
                    "adaptive_avg_pool2d_backward", "(2, 2, 1, 1)", "(2, 3, 4, 4)");
  // Through the differentiable ops.
  EXPECT_THROW_WITH(max_pool2d(Variable(x), make(5, 1, 3)), "max_pool2d", "at most half");
  EXPECT_THROW_WITH(avg_pool2d(Variable(Tensor::zeros({4})), make(2, 2, 0)), "avg_pool2d", "4-D", "(4)");
}

}  // namespace
}  // namespace ladnn
