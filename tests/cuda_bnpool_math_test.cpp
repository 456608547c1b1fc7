// tests/cuda_bnpool_math_test.cpp — the arithmetic of the batch-norm and pooling kernels
// (cuda/bnpool_math.h: per-element windows, gathers, the chunking of a channel across blocks and
// threads, Welford merges, the per-channel finalisation) run on the CPU against the CPU ops.
//
// These are the functions the GPU kernels in cuda/batchnorm.cu and cuda/pool.cu are loops over, so
// this checks their index arithmetic and formulas on every machine, GPU or not. What only the GPU can
// check — launches, warp/block reductions, cuDNN — is in tests/cuda_bnpool_test.cpp.
//
// Oracle: tensor/cpu/{batchnorm,pool}.cpp in float64 (max pooling in float32: exact). Tolerances as in
// tests/cuda_bnpool_test.cpp: kPoolTol = 1e-6 * sum|terms| for window sums of at most 9 float32 terms
// (error <= 9 u sum|t|, u = 6e-8); kSumTol = 1e-5 for long float32 reductions and values computed from
// them. The host runs the same float32 operations as the device (up to fused multiply-adds, which
// only make the device more accurate).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "cuda/bnpool_math.h"
#include "tensor/ops.h"
#include "tensor/random.h"

namespace ladnn {
namespace {

namespace m = cuda::math;

constexpr double kPoolTol = 1e-6;
constexpr double kSumTol = 1e-5;

std::vector<float> floats(const Tensor& t) {
  const std::vector<double> v = t.to_vector();
  return std::vector<float>(v.begin(), v.end());
}

std::vector<double> abs_values(const Tensor& t) {
  std::vector<double> v = t.to_vector();
  for (double& x : v) x = std::fabs(x);
  return v;
}

Tensor f64(const Tensor& t) { return t.defined() ? t.to(DType::Float64) : Tensor(); }

/// |got - want| <= atol_scale[i] * tol + tol * |want| for every i; reports the first few failures.
void expect_near_all(const std::vector<double>& got, const std::vector<double>& want,
                     const std::vector<double>& atol_scale, double tol, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  int bad = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double bound = tol * (atol_scale.empty() ? 1.0 : atol_scale[i]) + tol * std::fabs(want[i]);
    const bool ok = std::isnan(want[i]) ? std::isnan(got[i]) : std::fabs(got[i] - want[i]) <= bound;
    if (!ok && bad++ < 5)
      ADD_FAILURE() << what << " [" << i << "]: got " << got[i] << ", want " << want[i] << " (bound " << bound << ")";
  }
  EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << got.size() << " out of tolerance";
}

// ---- pooling --------------------------------------------------------------------------------------------

struct PoolCase {
  Shape shape;
  int64_t kh, kw, sh, sw, ph, pw;
  bool ceil = false;
};

const PoolCase kPoolCases[] = {
    {{2, 3, 7, 9}, 3, 3, 2, 2, 1, 1},  {{1, 5, 6, 6}, 2, 2, 2, 2, 0, 0},   {{2, 2, 8, 8}, 3, 3, 2, 2, 1, 1, true},
    {{2, 2, 7, 7}, 2, 2, 2, 2, 0, 0, true}, {{2, 2, 7, 7}, 3, 3, 2, 2, 1, 1, true}, {{1, 3, 5, 5}, 3, 3, 1, 1, 1, 1},
    {{3, 4, 9, 7}, 3, 2, 2, 1, 1, 1},  {{1, 1, 1, 1}, 1, 1, 1, 1, 0, 0},   {{2, 1, 5, 4}, 3, 3, 3, 3, 1, 1, true},
    {{1, 2, 13, 11}, 2, 3, 3, 2, 1, 1, true},
};

ops::Pool2dParams params_of(const PoolCase& c, bool include_pad) {
  ops::Pool2dParams p;
  p.kernel_h = c.kh;
  p.kernel_w = c.kw;
  p.stride_h = c.sh;
  p.stride_w = c.sw;
  p.pad_h = c.ph;
  p.pad_w = c.pw;
  p.ceil_mode = c.ceil;
  p.count_include_pad = include_pad;
  return p;
}

m::PoolGeom geom_of(const PoolCase& c, const ops::Pool2dParams& p) {
  const Shape y = ops::pool2d_output_shape(c.shape, p);
  return {c.shape[2], c.shape[3], y[2], y[3], p.kernel_h, p.kernel_w, p.stride_h, p.stride_w, p.pad_h, p.pad_w,
          p.count_include_pad};
}

std::string name_of(const PoolCase& c) {
  return shape_str(c.shape) + " k" + std::to_string(c.kh) + "x" + std::to_string(c.kw) + " s" + std::to_string(c.sh) +
         "x" + std::to_string(c.sw) + " p" + std::to_string(c.ph) + "x" + std::to_string(c.pw) + (c.ceil ? " ceil" : "");
}

TEST(CudaBnPoolMath, MaxPoolValuesIndicesAndGatherMatchCpu) {
  Generator gen(1);
  for (const PoolCase& c : kPoolCases) {
    SCOPED_TRACE(name_of(c));
    const ops::Pool2dParams p = params_of(c, true);
    const m::PoolGeom g = geom_of(c, p);
    // Three inputs: random (no ties), quantised (many ties: the first maximum must win), with NaNs.
    std::vector<double> base = Tensor::normal(c.shape, 0, 1, gen).to_vector();
    std::vector<double> ties = base, nans = base;
    for (double& v : ties) v = std::round(v * 2) / 2;
    for (std::size_t i = 0; i < nans.size(); i += 7) nans[i] = std::nan("");
    for (const auto* values : {&base, &ties, &nans}) {
      const Tensor x = Tensor::from_vector(*values, c.shape, DType::Float32);
      const ops::MaxPoolForward ref = ops::max_pool2d_forward(x, p);
      const std::vector<float> xf = floats(x);
      const std::vector<double> ref_y = ref.y.to_vector(), ref_i = ref.indices.to_vector();
      for (int64_t o = 0; o < ref.y.numel(); ++o) {
        float v;
        int64_t idx;
        m::max_pool_at(xf.data(), o, g, v, idx);
        if (std::isnan(ref_y[o]))
          EXPECT_TRUE(std::isnan(v)) << "output " << o;
        else
          EXPECT_EQ(double(v), ref_y[o]) << "output " << o;
        EXPECT_EQ(double(idx), ref_i[o]) << "output " << o;
      }
      // Backward as the GPU's gather: float32, the CPU's order, so equal to the bit.
      const Tensor dy = Tensor::normal(ref.y.shape(), 0, 1, gen, DType::Float32);
      const std::vector<double> dx_ref = ops::max_pool2d_backward(dy, ref.indices, c.shape).to_vector();
      const std::vector<float> dyf = floats(dy);
      std::vector<int64_t> ind(ref_i.begin(), ref_i.end());
      for (int64_t i = 0; i < int64_t(dx_ref.size()); ++i)
        ASSERT_EQ(double(m::max_pool_backward_at(dyf.data(), ind.data(), i, g)), dx_ref[i]) << "input cell " << i;
      // ... and plane by plane with 32-bit indices (the GPU's max_pool_backward_plane).
      const int64_t HW = g.H * g.W, OHW = g.OH * g.OW;
      for (int64_t i = 0; i < int64_t(dx_ref.size()); ++i) {
        const int64_t plane = i / HW, r = i % HW;
        ASSERT_EQ(double(m::max_pool_backward_cell(dyf.data() + plane * OHW, ind.data() + plane * OHW,
                                                   int32_t(r / g.W), int32_t(r % g.W), g)),
                  dx_ref[i])
            << "input cell " << i << ", plane by plane";
      }
    }
  }
}

TEST(CudaBnPoolMath, AvgPoolForwardAndGatherBackwardMatchCpu) {
  Generator gen(2);
  for (const PoolCase& c : kPoolCases)
    for (bool include_pad : {true, false}) {
      SCOPED_TRACE(name_of(c) + (include_pad ? " include_pad" : " exclude_pad"));
      const ops::Pool2dParams p = params_of(c, include_pad);
      const m::PoolGeom g = geom_of(c, p);
      const Tensor x = Tensor::normal(c.shape, 0, 1, gen);
      const Tensor y_ref = ops::avg_pool2d_forward(f64(x), p);
      const std::vector<float> xf = floats(x);
      std::vector<double> y(y_ref.numel());
      for (int64_t o = 0; o < y_ref.numel(); ++o) y[o] = m::avg_pool_at(xf.data(), o, g);
      const Tensor x_abs = Tensor::from_vector(abs_values(x), c.shape, DType::Float64);
      expect_near_all(y, y_ref.to_vector(), ops::avg_pool2d_forward(x_abs, p).to_vector(), kPoolTol, "y");

      const Tensor dy = Tensor::normal(y_ref.shape(), 0, 1, gen);
      const Tensor dx_ref = ops::avg_pool2d_backward(f64(dy), c.shape, p);
      const std::vector<float> dyf = floats(dy);
      std::vector<double> dx(dx_ref.numel());
      for (int64_t i = 0; i < dx_ref.numel(); ++i) dx[i] = m::avg_pool_backward_at(dyf.data(), i, g);
      const Tensor dy_abs = Tensor::from_vector(abs_values(dy), dy.shape(), DType::Float64);
      expect_near_all(dx, dx_ref.to_vector(), ops::avg_pool2d_backward(dy_abs, c.shape, p).to_vector(), kPoolTol,
                      "dx");
    }
}

// The fused inference BatchNorm-ReLU-average pool (cuda/pool.cu's bn_avg_pool_eval) maps each cell of a
// window as it sums it: the same bits as normalising the whole map first and pooling that, with padding
// cells counted as 0 (not as the map of 0), with and without the ReLU, every pooling case.
TEST(CudaBnPoolMath, AvgPoolOfTheBatchNormMapEqualsPoolingTheNormalisedMap) {
  Generator gen(3);
  int padded = 0;
  for (const PoolCase& c : kPoolCases)
    for (bool include_pad : {true, false})
      for (bool relu : {false, true}) {
        SCOPED_TRACE(name_of(c) + (include_pad ? " include_pad" : " exclude_pad") + (relu ? " relu" : ""));
        const ops::Pool2dParams p = params_of(c, include_pad);
        const m::PoolGeom g = geom_of(c, p);
        padded += p.pad_h > 0 || p.pad_w > 0;
        const std::vector<float> xf = floats(Tensor::normal(c.shape, 0.5, 2, gen));
        const m::BnEvalMap map{0.3f, 1.7f, -0.2f, relu};
        std::vector<float> normalised(xf.size());
        for (std::size_t i = 0; i < xf.size(); ++i) normalised[i] = map(xf[i]);
        const int64_t outputs = c.shape[0] * c.shape[1] * g.OH * g.OW;
        for (int64_t o = 0; o < outputs; ++o)
          ASSERT_EQ(m::avg_pool_at(xf.data(), o, g, map), m::avg_pool_at(normalised.data(), o, g))
              << "output " << o;
      }
  EXPECT_GT(padded, 0) << "no case with padding";
}

TEST(CudaBnPoolMath, AdaptiveAvgPoolLaneSumsAndGatherMatchCpu) {
  Generator gen(3);
  struct Case {
    Shape x;
    int64_t oh, ow;
  };
  const Case cases[] = {{{2, 3, 7, 9}, 3, 4}, {{1, 2, 5, 5}, 7, 7}, {{2, 3, 56, 56}, 1, 1}, {{3, 5, 6, 6}, 6, 6},
                        {{1, 4, 7, 7}, 1, 1}, {{1, 2, 10, 3}, 4, 5}, {{2, 1, 1, 1}, 3, 2}};
  for (const Case& c : cases) {
    SCOPED_TRACE(shape_str(c.x) + " -> " + std::to_string(c.oh) + "x" + std::to_string(c.ow));
    const int64_t H = c.x[2], W = c.x[3];
    const Tensor x = Tensor::normal(c.x, 0.5, 1, gen);
    const Tensor y_ref = ops::adaptive_avg_pool2d_forward(f64(x), c.oh, c.ow);
    const std::vector<float> xf = floats(x);
    std::vector<double> y(y_ref.numel());
    for (int64_t o = 0; o < y_ref.numel(); ++o) {
      // The 32 lanes of a warp, then their sum (the device adds them in a shuffle tree).
      float sum = 0;
      int64_t count = 0;
      for (int lane = 0; lane < 32; ++lane) sum += m::adaptive_avg_lane_sum(xf.data(), o, lane, 32, H, W, c.oh, c.ow, count);
      y[o] = sum / float(count);
    }
    const Tensor x_abs = Tensor::from_vector(abs_values(x), c.x, DType::Float64);
    expect_near_all(y, y_ref.to_vector(), ops::adaptive_avg_pool2d_forward(x_abs, c.oh, c.ow).to_vector(), kSumTol,
                    "y");

    const Tensor dy = Tensor::normal(y_ref.shape(), 0, 1, gen);
    const Tensor dx_ref = ops::adaptive_avg_pool2d_backward(f64(dy), c.x);
    const std::vector<float> dyf = floats(dy);
    std::vector<double> dx(dx_ref.numel());
    for (int64_t i = 0; i < dx_ref.numel(); ++i) dx[i] = m::adaptive_avg_backward_at(dyf.data(), i, H, W, c.oh, c.ow);
    const Tensor dy_abs = Tensor::from_vector(abs_values(dy), dy.shape(), DType::Float64);
    expect_near_all(dx, dx_ref.to_vector(), ops::adaptive_avg_pool2d_backward(dy_abs, c.x).to_vector(), kPoolTol,
                    "dx");
  }
}

// ---- batch norm ------------------------------------------------------------------------------------------

struct BnShapeCase {
  Shape shape;
  int sms;  // multiprocessors the partition plans for (1: few chunks; 132: an H100)
};

// welford_add4 (the statistics pass's step over a float4) against float64 and against four welford_adds:
// as accurate at small offsets and at large ones (|mean| >> std, where float32 rounding of the inputs
// dominates), with the exact count and the mean to float precision.
TEST(CudaBnPoolMath, WelfordFourAtOnceIsAsAccurateAsOneByOne) {
  Generator gen(12);
  for (double offset : {0.5, 100.0, 1e4}) {
    double worst1 = 0, worst4 = 0;
    for (int trial = 0; trial < 200; ++trial) {
      const std::vector<float> x = floats(Tensor::normal({256}, offset, 2.0, gen));
      double mean = 0, m2 = 0;
      for (float v : x) mean += v;
      mean /= double(x.size());
      for (float v : x) m2 += (v - mean) * (v - mean);
      m::Welford one{0, 0, 0}, four{0, 0, 0};
      for (float v : x) m::welford_add(one, v);
      for (std::size_t i = 0; i < x.size(); i += 4) m::welford_add4(four, &x[i]);
      ASSERT_EQ(four.n, 256.0f);
      ASSERT_NEAR(four.mean, mean, 1e-6 * std::fabs(mean) + 1e-6);
      worst1 = std::max(worst1, std::fabs(one.m2 - m2) / m2);
      worst4 = std::max(worst4, std::fabs(four.m2 - m2) / m2);
    }
    SCOPED_TRACE("offset " + std::to_string(offset));
    EXPECT_LE(worst4, 2.0 * worst1 + 1e-7) << "one at a time: " << worst1;
    EXPECT_LE(worst4, offset < 1000 ? 1e-5 : 2e-3);
  }
}

// Single and multiple chunks per channel, HW % 4 == 0 (float4 path) and odd HW, a last chunk shorter
// than the others, HW = 1, batch 1.
const BnShapeCase kBnShapes[] = {
    {{2, 3, 5, 7}, 132},   {{4, 8, 4, 4}, 132},  {{3, 5, 1, 1}, 132},  {{8, 2, 32, 32}, 132},
    {{7, 3, 20, 20}, 132}, {{3, 2, 33, 33}, 132}, {{8, 2, 32, 32}, 1},  {{1, 4, 48, 48}, 132},
    {{16, 1, 64, 64}, 132},
};

/// The block-level result of the stats kernel for (c, s): the threads' states merged (in thread order
/// here; the device merges in a shuffle tree — the same values, differently rounded).
template <int VEC>
m::Welford block_stats(const float* x, int64_t c, int64_t s, const m::BnPartition& p) {
  m::Welford w{0, 0, 0};
  for (int64_t t = 0; t < m::kBnThreads; ++t)
    w = m::welford_merge(w, m::bn_stats_thread<VEC>(x, c, s, t, m::kBnThreads, p));
  return w;
}

/// Every value of each channel of a tensor of shape s read once by `threads` threads per block walking
/// partition p (the split path's kBnThreads, or a per-channel block's bn_channel_threads).
template <int VEC>
void check_partition_coverage(const Shape& s, const m::BnPartition& p, int64_t threads) {
  ASSERT_GE(p.splits, 1);
  ASSERT_EQ(p.chunk % 4, 0);
  ASSERT_GE(p.chunk * p.splits, p.M);
  // x[i] = i (exact in float32 below 2^24): every value counted once shows as count == M and
  // sum(count * mean) == the sum of the channel's flat offsets.
  const int64_t numel = shape_numel(s);
  ASSERT_LT(numel, int64_t(1) << 24);
  std::vector<float> x(numel);
  for (int64_t i = 0; i < numel; ++i) x[i] = float(i);
  for (int64_t c = 0; c < p.C; ++c) {
    double count = 0, sum = 0, want_sum = 0;
    for (int64_t n = 0; n < s[0]; ++n)
      for (int64_t k = 0; k < p.HW; ++k) want_sum += double((n * p.C + c) * p.HW + k);
    for (int64_t sp = 0; sp < p.splits; ++sp)
      for (int64_t t = 0; t < threads; ++t) {
        const m::Welford w = m::bn_stats_thread<VEC>(x.data(), c, sp, t, threads, p);
        count += w.n;
        sum += double(w.n) * double(w.mean);
      }
    EXPECT_EQ(count, double(p.M)) << "channel " << c << ": values counted";
    EXPECT_NEAR(sum, want_sum, 1e-6 * want_sum) << "channel " << c << ": sum of the values' offsets";
  }
}

TEST(CudaBnPoolMath, BatchNormPartitionCoversEveryValueOnce) {
  for (const BnShapeCase& sc : kBnShapes) {
    SCOPED_TRACE(shape_str(sc.shape) + " planned for " + std::to_string(sc.sms) + " SMs");
    const Shape& s = sc.shape;
    const m::BnPartition p = m::bn_partition(s[0], s[1], s[2] * s[3], sc.sms);
    check_partition_coverage<1>(s, p, m::kBnThreads);
    if ((s[2] * s[3]) % 4 == 0) check_partition_coverage<4>(s, p, m::kBnThreads);
  }
}

// The one-kernel path (cuda::BnKernel::Channel): a block of bn_channel_threads(M) threads walks the
// channel's one chunk of all M values and reads each once; the thread count is whole warps, 32 to 1,024,
// about 16 values each; auto takes the path where C blocks fill half of the SMs and M <= 65,536.
TEST(CudaBnPoolMath, ChannelBlockCoversEveryValueOnce) {
  EXPECT_EQ(m::bn_channel_threads(1), 32);
  EXPECT_EQ(m::bn_channel_threads(49), 32);
  EXPECT_EQ(m::bn_channel_threads(3136), 224);  // 196 threads of 16 values, rounded up to 7 warps
  EXPECT_EQ(m::bn_channel_threads(16384), 1024);
  EXPECT_EQ(m::bn_channel_threads(int64_t(1) << 24), 1024);
  EXPECT_TRUE(m::bn_channel_fits(32, 1664, 7 * 7, 132));     // DenseNet-169's norm5 at batch 32
  EXPECT_TRUE(m::bn_channel_fits(64, 128, 28 * 28, 132));    // a norm2 at 28x28, batch 64: 50,176 values
  EXPECT_FALSE(m::bn_channel_fits(32, 128, 56 * 56, 132));   // 100,352 values: split
  EXPECT_FALSE(m::bn_channel_fits(1, 64, 56 * 56, 132));     // 64 blocks on 132 SMs: split
  EXPECT_TRUE(m::bn_channel_fits(1, 128, 56 * 56, 132));
  EXPECT_FALSE(m::bn_channel_fits(0, 128, 7 * 7, 132));      // no values
  for (const Shape& s : {Shape{2, 3, 5, 7}, Shape{8, 2, 32, 32}, Shape{3, 5, 1, 1}, Shape{16, 1, 64, 64},
                         Shape{1, 4, 48, 48}}) {
    SCOPED_TRACE(shape_str(s));
    const m::BnPartition p = m::bn_channel_partition(s[0], s[1], s[2] * s[3]);
    EXPECT_EQ(p.splits, 1);
    const int threads = m::bn_channel_threads(p.M);
    EXPECT_EQ(threads % 32, 0);
    check_partition_coverage<1>(s, p, threads);
    if ((s[2] * s[3]) % 4 == 0) check_partition_coverage<4>(s, p, threads);
  }
}

// Which BatchNorms take a block per channel for their map without a reduction (eval; training given the
// statistics): DenseNet-169's 14x14 and 7x7 ones at every batch, not 28x28, not too few channels.
TEST(CudaBnPoolMath, SmallPlanesAreNormalisedByChannel) {
  EXPECT_TRUE(m::bn_planes_by_channel(64, 1664, 7 * 7, 132));
  EXPECT_TRUE(m::bn_planes_by_channel(1, 256, 14 * 14, 132));
  EXPECT_TRUE(m::bn_planes_by_channel(32, 66, 16 * 16, 132));
  EXPECT_FALSE(m::bn_planes_by_channel(64, 512, 28 * 28, 132));
  EXPECT_FALSE(m::bn_planes_by_channel(64, 65, 7 * 7, 132));  // 65 blocks on 132 SMs: by plane
  EXPECT_FALSE(m::bn_planes_by_channel(0, 640, 7 * 7, 132));
}

// The cluster kernels (cuda::BnKernel::Cluster): every value of the channel held by exactly one thread of
// its cluster, at most kBnClusterValues a thread; whole warps; one block up to 8,192 values with the
// per-channel kernel's threads (the same walk, so the same bits); at most 8 blocks of at most 512 threads.
TEST(CudaBnPoolMath, ClusterThreadsHoldEveryValueOnce) {
  auto shape_of = [](int64_t M) {
    const m::BnClusterShape s = m::bn_cluster_shape(M);
    return std::pair<int, int>{s.threads, s.blocks};
  };
  EXPECT_EQ(shape_of(3136), (std::pair<int, int>{224, 1}));  // a 7x7 BatchNorm at batch 64
  EXPECT_EQ(shape_of(8192), (std::pair<int, int>{512, 1}));
  EXPECT_EQ(shape_of(12544), (std::pair<int, int>{416, 1}));   // 14x14 at batch 64: 392 threads of 32
  EXPECT_EQ(shape_of(50176), (std::pair<int, int>{416, 4}));   // 28x28 at batch 64
  EXPECT_EQ(shape_of(100352), (std::pair<int, int>{448, 7}));  // 56x56 at batch 32
  EXPECT_EQ(shape_of(131072), (std::pair<int, int>{512, 8}));
  EXPECT_EQ(shape_of(131073), (std::pair<int, int>{0, 0}));  // 56x56 at batch 64 does not fit
  EXPECT_EQ(shape_of(0), (std::pair<int, int>{0, 0}));
  for (int64_t M = 1; M <= 8192; M += 97) EXPECT_EQ(m::bn_cluster_shape(M).threads, m::bn_channel_threads(M));
  for (const Shape& s : {Shape{2, 3, 5, 7}, Shape{4, 1, 48, 48}, Shape{20, 1, 33, 33}, Shape{9, 1, 64, 64},
                         Shape{32, 1, 56, 56}, Shape{64, 1, 28, 28}, Shape{64, 1, 7, 7}, Shape{1, 1, 1, 1}}) {
    SCOPED_TRACE(shape_str(s));
    const int HW = static_cast<int>(s[2] * s[3]), M = static_cast<int>(s[0]) * HW;
    const m::BnClusterShape cs = m::bn_cluster_shape(M);
    ASSERT_GT(cs.threads, 0);
    EXPECT_EQ(cs.threads % 32, 0);
    EXPECT_LE(cs.threads, m::kBnClusterThreads);
    EXPECT_LE(cs.blocks, m::kBnMaxClusterBlocks);
    auto check = [&](auto vec) {
      constexpr int VEC = decltype(vec)::value;
      const int U = cs.threads * cs.blocks;
      std::vector<int> held(static_cast<std::size_t>(M), 0);
      for (int u = 0; u < U; ++u) {
        int values = 0;
        for (int it = 0; it < m::kBnClusterValues / VEC; ++it) {
          const m::BnHeldGroup h = m::bn_cluster_group<VEC>(u, it, U, HW);
          if (h.j >= M) break;
          ASSERT_EQ(int64_t(h.n) * HW + h.r, h.j);
          ASSERT_LT(h.r + VEC - 1, HW) << "a group straddles two samples";
          for (int q = 0; q < VEC; ++q) ++held[static_cast<std::size_t>(h.j + q)];
          values += VEC;
        }
        ASSERT_LE(values, m::kBnClusterValues);
      }
      for (int j = 0; j < M; ++j) ASSERT_EQ(held[static_cast<std::size_t>(j)], 1) << "value " << j;
    };
    check(std::integral_constant<int, 1>{});
    if (HW % 4 == 0) check(std::integral_constant<int, 4>{});
  }
}

// x as a channel prefix of a wider buffer (samples sN = (C + 3) * HW apart, the other channels NaN): the
// stats and gradient threads read the same values as from the packed tensor, so every block gives the same
// bits; dy and relu_y stay packed. sample_offset maps packed indices to the spaced ones.
TEST(CudaBnPoolMath, SpacedSamplesAreReadLikePackedOnes) {
  Generator gen(77);
  const int64_t N = 3, C = 4, HW = 20, extra = 3;
  const std::vector<float> x = floats(Tensor::normal({N, C, 4, 5}, 0.5, 2.0, gen));
  const std::vector<float> dy = floats(Tensor::normal({N, C, 4, 5}, 0, 1, gen));
  std::vector<float> spaced(static_cast<std::size_t>(N * (C + extra) * HW), NAN);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t i = 0; i < C * HW; ++i) spaced[n * (C + extra) * HW + i] = x[n * C * HW + i];
  for (int64_t i = 0; i < N * C * HW; ++i) ASSERT_EQ(spaced[m::sample_offset(i, C * HW, (C + extra) * HW)], x[i]);
  m::BnPartition packed = m::bn_partition(N, C, HW, 1);
  EXPECT_EQ(packed.sN, C * HW);
  m::BnPartition wide = packed;
  wide.sN = (C + extra) * HW;
  auto check = [&](auto vec) {
    constexpr int VEC = decltype(vec)::value;
    for (int64_t c = 0; c < C; ++c)
      for (int64_t sp = 0; sp < packed.splits; ++sp)
        for (int64_t t = 0; t < m::kBnThreads; ++t) {
          const m::Welford a = m::bn_stats_thread<VEC>(x.data(), c, sp, t, m::kBnThreads, packed);
          const m::Welford b = m::bn_stats_thread<VEC>(spaced.data(), c, sp, t, m::kBnThreads, wide);
          ASSERT_EQ(a.n, b.n);
          ASSERT_EQ(a.mean, b.mean);
          ASSERT_EQ(a.m2, b.m2);
          float a1, a2, b1, b2;
          m::bn_grad_thread<VEC>(dy.data(), x.data(), 0.25f, c, sp, t, m::kBnThreads, packed, a1, a2);
          m::bn_grad_thread<VEC>(dy.data(), spaced.data(), 0.25f, c, sp, t, m::kBnThreads, wide, b1, b2);
          ASSERT_EQ(a1, b1);
          ASSERT_EQ(a2, b2);
        }
  };
  check(std::integral_constant<int, 1>{});
  check(std::integral_constant<int, 4>{});
}

// The fused BatchNorm-ReLU's backward mask recomputed from x (BnMaskFromX, what the training dense
// block's norm1 uses) gives the bits of the mask read from the forward's output, the forward emulated
// with the functions the native kernels use (the finalize's bn_train_scale, bn_normalize, bn_relu).
// On the edge: each channel's shift is -fl((x_k - mean) * scale) for one chosen x_k, so the fused
// multiply-add leaves only the product's rounding error there — a sign that an unfused or 1-ulp-off
// recomputation gets wrong (the control below shows such a change flips masks).
TEST(CudaBnPoolMath, ReluMaskFromXEqualsTheMaskFromY) {
  Generator gen(78);
  const int64_t N = 3, C = 32, HW = 20;
  const std::vector<float> x = floats(Tensor::normal({N, C, 4, 5}, 0.5, 2.0, gen));
  const std::vector<float> dy = floats(Tensor::normal({N, C, 4, 5}, 0, 1, gen));
  const std::vector<float> gamma = floats(Tensor::uniform({C}, 0.5, 1.5, gen));
  const std::vector<float> mean = floats(Tensor::normal({C}, 0.5, 0.3, gen));
  const std::vector<float> invstd = floats(Tensor::uniform({C}, 0.3, 3.0, gen));
  std::vector<float> beta(C);
  for (int64_t c = 0; c < C; ++c) {
    const float xk = x[c * HW + 7];  // sample 0, element 7 of channel c
    beta[c] = -((xk - mean[c]) * m::bn_train_scale(gamma[c], invstd[c]));
  }
  std::vector<float> y(x.size());
  int zeros = 0, edge_on = 0;
  for (int64_t i = 0; i < N * C * HW; ++i) {
    const int64_t c = (i / HW) % C;
    y[i] = m::bn_relu(m::bn_normalize(x[i], mean[c], m::bn_train_scale(gamma[c], invstd[c]), beta[c]));
    zeros += y[i] == 0.0f;
    if (i % (C * HW) == c * HW + 7 && i < C * HW) edge_on += y[i] > 0.0f;
  }
  ASSERT_GT(zeros, 20);
  ASSERT_LT(zeros, N * C * HW - 20);
  // Both signs occur on the edge (the rounding errors' signs), so the edge decides something.
  ASSERT_GT(edge_on, 0);
  ASSERT_LT(edge_on, C);
  const m::BnPartition p = m::bn_partition(N, C, HW, 1);
  auto check = [&](auto vec) {
    constexpr int VEC = decltype(vec)::value;
    for (int64_t c = 0; c < C; ++c) {
      const m::BnMaskFromX from_x{true, m::bn_train_scale(gamma[c], invstd[c]), beta[c]};
      for (int64_t i = 0; i < N * HW; ++i) {  // the elementwise rule, as the dx kernel applies it
        const int64_t k = (i / HW * C + c) * HW + i % HW;
        ASSERT_EQ(m::bn_relu_on(x[k], mean[c], from_x), y[k] > 0.0f) << "element " << k;
      }
      for (int64_t sp = 0; sp < p.splits; ++sp)
        for (int64_t t = 0; t < m::kBnThreads; ++t) {
          float a1, a2, b1, b2;
          m::bn_grad_thread<VEC>(dy.data(), x.data(), mean[c], c, sp, t, m::kBnThreads, p, a1, a2, y.data());
          m::bn_grad_thread<VEC>(dy.data(), x.data(), mean[c], c, sp, t, m::kBnThreads, p, b1, b2, nullptr, from_x);
          ASSERT_EQ(a1, b1);
          ASSERT_EQ(a2, b2);
        }
    }
  };
  check(std::integral_constant<int, 1>{});
  check(std::integral_constant<int, 4>{});
  // Control: the unfused expression, or a scale one ulp off, decides some edge element differently.
  int unfused_flips = 0, ulp_flips = 0;
  for (int64_t c = 0; c < C; ++c) {
    const float scale = m::bn_train_scale(gamma[c], invstd[c]);
    const float xk = x[c * HW + 7];
    const bool on = m::bn_relu_on(xk, mean[c], {true, scale, beta[c]});
    volatile float prod = (xk - mean[c]) * scale;  // rounded: no fused multiply-add
    unfused_flips += (prod + beta[c] > 0.0f) != on;
    ulp_flips += m::bn_relu_on(xk, mean[c], {true, std::nextafter(scale, 10.0f), beta[c]}) != on;
  }
  EXPECT_GT(unfused_flips, 0);
  EXPECT_GT(ulp_flips, 0);
}

// A transition's training backward from the pooled gradient (cuda/batchnorm.cu's bn_pool_grad_partial and
// bn_pool_backward_dx, for tiling windows): each value's gradient is avg_pool_backward_at's to the bit, so
// the per-thread sums are bn_grad_thread<1>'s over the full-size gradient and dx is bn_dx of it, bit for
// bit — masked from x, over a split partition of channels read in place (samples spaced), for 2x2/2 on
// odd sizes (the last row and column in no window) and 3x3/3. Windows that overlap, pad or overhang do
// not tile.
TEST(CudaBnPoolMath, TransitionBackwardFromThePooledGradientIsTheFullOnes) {
  Generator gen(79);
  struct Case {
    int64_t N, C, H, W, k;
  };
  for (const Case& cs : {Case{3, 5, 7, 9, 2}, Case{2, 4, 8, 8, 2}, Case{2, 3, 10, 9, 3}}) {
    SCOPED_TRACE(std::to_string(cs.H) + "x" + std::to_string(cs.W) + " window " + std::to_string(cs.k));
    const int64_t HW = cs.H * cs.W, OH = cs.H / cs.k, OW = cs.W / cs.k, CW = cs.C + 2;
    const m::PoolGeom g{cs.H, cs.W, OH, OW, cs.k, cs.k, cs.k, cs.k, 0, 0, true};
    ASSERT_TRUE(m::avg_pool_tiles(g));
    // x: channels [0, C) of a (N, C + 2, H, W) buffer; dy: the pooled gradient.
    const std::vector<float> xw = floats(Tensor::normal({cs.N, CW, cs.H, cs.W}, 0.5, 2.0, gen));
    const std::vector<float> dy = floats(Tensor::normal({cs.N, cs.C, OH, OW}, 0, 1, gen));
    std::vector<float> full(cs.N * cs.C * HW), x(cs.N * cs.C * HW);
    for (int64_t i = 0; i < cs.N * cs.C * HW; ++i) {
      full[i] = m::avg_pool_backward_at(dy.data(), i, g);
      const int64_t n = i / (cs.C * HW), r = i - n * cs.C * HW;
      x[i] = xw[n * CW * HW + r];
    }
    m::BnPartition p = m::bn_channel_partition(cs.N, cs.C, HW);  // then three chunks (by hand: too small
    p.splits = 3;                                                // for bn_partition to split)
    p.chunk = ((p.M + 2) / 3 + 3) / 4 * 4;
    m::BnPartition spaced = p;
    spaced.sN = CW * HW;
    for (int64_t c = 0; c < cs.C; ++c) {
      const float mu = 0.4f + 0.01f * float(c);
      const m::BnMaskFromX from_x{true, 0.9f, -0.2f};
      for (int64_t sp = 0; sp < p.splits; ++sp)
        for (int64_t t = 0; t < m::kBnThreads; ++t) {
          float a1, a2, b1, b2;
          m::bn_grad_thread<1>(full.data(), x.data(), mu, c, sp, t, m::kBnThreads, p, a1, a2, nullptr,
                               from_x);
          m::bn_pool_grad_thread(dy.data(), xw.data(), mu, c, sp, t, m::kBnThreads, spaced, g, from_x, b1,
                                 b2);
          ASSERT_EQ(a1, b1) << "channel " << c << " split " << sp << " thread " << t;
          ASSERT_EQ(a2, b2) << "channel " << c << " split " << sp << " thread " << t;
        }
    }
    for (int64_t i = 0; i < cs.N * cs.C * HW; ++i) {
      const int64_t c = (i / HW) % cs.C;
      const float mu = 0.4f + 0.01f * float(c);
      const m::BnMaskFromX from_x{true, 0.9f, -0.2f};
      const float d = m::bn_relu_on(x[i], mu, from_x) ? full[i] : 0.0f;
      const int64_t plane = i / HW;
      ASSERT_EQ(m::bn_pool_dx(dy.data() + plane * OH * OW, x[i], static_cast<int32_t>(i - plane * HW), g, mu,
                              from_x, 1.3f, 0.05f, 0.02f),
                m::bn_dx(d, x[i], mu, 1.3f, 0.05f, 0.02f))
          << "value " << i;
    }
  }
  EXPECT_FALSE(m::avg_pool_tiles(m::PoolGeom{8, 8, 4, 4, 3, 3, 2, 2, 1, 1, true})) << "overlapping, padded";
  EXPECT_FALSE(m::avg_pool_tiles(m::PoolGeom{7, 7, 4, 4, 2, 2, 2, 2, 0, 0, true}))
      << "ceil mode's last window";
}

TEST(CudaBnPoolMath, BatchNormPartitionFillsAnH100) {
  // (32, 64, 112, 112): 64 channels alone would leave half of 132 SMs idle; the partition splits them.
  const m::BnPartition p = m::bn_partition(32, 64, 112 * 112, 132);
  EXPECT_GE(p.C * p.splits, 132 * 4);
  // (32, 1664, 7, 7): channels fill the GPU, and 1568 values per channel are too few to split.
  EXPECT_EQ(m::bn_partition(32, 1664, 49, 132).splits, 1);
}

template <int VEC>
void check_bn_forward(const BnShapeCase& sc, Generator& gen) {
  const Shape& s = sc.shape;
  const int64_t C = s[1], HW = s[2] * s[3];
  const double momentum = 0.2, eps = 1e-3;
  const m::BnPartition p = m::bn_partition(s[0], C, HW, sc.sms);
  const Tensor x = Tensor::normal(s, 0.5, 2.0, gen);
  const Tensor gamma = Tensor::uniform({C}, 0.5, 1.5, gen), beta = Tensor::uniform({C}, -0.5, 0.5, gen);
  const Tensor rm0 = Tensor::normal({C}, 0, 1, gen), rv0 = Tensor::uniform({C}, 0.5, 2, gen);
  Tensor rm = f64(rm0), rv = f64(rv0);
  const ops::BatchNormForward ref = ops::batch_norm_forward_train(f64(x), f64(gamma), f64(beta), rm, rv, momentum, eps);

  const std::vector<float> xf = floats(x);
  const std::vector<double> g = gamma.to_vector(), b = beta.to_vector(), rm0v = rm0.to_vector(), rv0v = rv0.to_vector();
  std::vector<double> mean(C), invstd(C), run_mean(C), run_var(C), y(x.numel()), n_abs(C, 0.0);
  for (int64_t c = 0; c < C; ++c) {
    std::vector<float> partial(3 * p.splits);
    for (int64_t sp = 0; sp < p.splits; ++sp) {
      const m::Welford w = block_stats<VEC>(xf.data(), c, sp, p);
      partial[3 * sp] = w.n;
      partial[3 * sp + 1] = w.mean;
      partial[3 * sp + 2] = w.m2;
    }
    const m::BnChannelStats st = m::bn_merge_partials(partial.data(), p.splits, eps);
    mean[c] = float(st.mean);
    invstd[c] = float(st.invstd);
    run_mean[c] = float(m::bn_running_mean(rm0v[c], momentum, st));
    run_var[c] = float(m::bn_running_var(rv0v[c], momentum, st));
    const float scale = m::bn_train_scale(float(g[c]), invstd[c]), shift = float(b[c]);  // the finalize's
    for (int64_t n = 0; n < s[0]; ++n)
      for (int64_t k = 0; k < HW; ++k) {
        const int64_t i = (n * C + c) * HW + k;
        y[i] = m::bn_normalize(xf[i], float(st.mean), scale, shift);
        n_abs[c] += std::fabs(xf[i]);
      }
  }
  std::vector<double> mean_scale(C);
  for (int64_t c = 0; c < C; ++c) mean_scale[c] = n_abs[c] / double(p.M);
  expect_near_all(mean, ref.save_mean.to_vector(), mean_scale, kSumTol, "save_mean");
  expect_near_all(invstd, ref.save_invstd.to_vector(), {}, kSumTol, "save_invstd");
  expect_near_all(run_mean, rm.to_vector(), {}, kSumTol, "running_mean");
  expect_near_all(run_var, rv.to_vector(), std::vector<double>(C, 0.0), kSumTol, "running_var");
  expect_near_all(y, ref.y.to_vector(), {}, kSumTol, "y");
}

TEST(CudaBnPoolMath, BatchNormForwardMatchesCpu) {
  Generator gen(4);
  for (const BnShapeCase& sc : kBnShapes) {
    SCOPED_TRACE(shape_str(sc.shape) + " planned for " + std::to_string(sc.sms) + " SMs");
    check_bn_forward<1>(sc, gen);
    if ((sc.shape[2] * sc.shape[3]) % 4 == 0) check_bn_forward<4>(sc, gen);
  }
}

// relu: the fused BatchNorm-ReLU's backward, masked by a forward output that is 0 about half the time.
template <int VEC>
void check_bn_backward(const BnShapeCase& sc, bool train, bool relu, Generator& gen) {
  const Shape& s = sc.shape;
  const int64_t C = s[1], HW = s[2] * s[3];
  const double eps = 1e-3;
  const m::BnPartition p = m::bn_partition(s[0], C, HW, sc.sms);
  const Tensor x = Tensor::normal(s, 0.5, 2.0, gen), dy = Tensor::normal(s, 0, 1, gen);
  const Tensor gamma = Tensor::uniform({C}, 0.5, 1.5, gen);
  const Tensor relu_y = relu ? ops::relu(Tensor::normal(s, 0, 1, gen)) : Tensor();
  // The statistics: saved by a forward (training) or running ones (eval), float32 for both sides.
  Tensor mean_t, invstd_t, rm, rv;
  ops::BatchNormGrads ref;
  if (train) {
    Tensor none;
    const ops::BatchNormForward f = ops::batch_norm_forward_train(f64(x), Tensor(), Tensor(), none, none, 0.1, eps);
    mean_t = f.save_mean.to(DType::Float32);
    invstd_t = f.save_invstd.to(DType::Float32);
    ref = ops::batch_norm_backward_train(f64(dy), f64(x), f64(gamma), f64(mean_t), f64(invstd_t), f64(relu_y));
  } else {
    rm = Tensor::normal({C}, 0, 1, gen);
    rv = Tensor::uniform({C}, 0.5, 2, gen);
    mean_t = rm;
    ref = ops::batch_norm_backward_eval(f64(dy), f64(x), f64(gamma), f64(rm), f64(rv), eps, f64(relu_y));
  }
  const std::vector<float> xf = floats(x), dyf = floats(dy);
  const std::vector<float> mask = relu ? floats(relu_y) : std::vector<float>();
  const float* mask_p = relu ? mask.data() : nullptr;
  const std::vector<double> g = gamma.to_vector(), mu = mean_t.to_vector();
  std::vector<double> dgamma(C), dbeta(C), dx(x.numel()), dy_abs(C, 0.0), dg_abs(C, 0.0);
  for (int64_t c = 0; c < C; ++c) {
    const double is = train ? invstd_t.to_vector()[c] : 1.0 / std::sqrt(rv.to_vector()[c] + eps);
    double sum_dy = 0, sum_dy_xmu = 0;  // the finalize kernel adds the blocks' float sums in double
    for (int64_t sp = 0; sp < p.splits; ++sp) {
      float block_dy = 0, block_dy_xmu = 0;
      for (int64_t t = 0; t < m::kBnThreads; ++t) {
        float a, b;
        m::bn_grad_thread<VEC>(dyf.data(), xf.data(), float(mu[c]), c, sp, t, m::kBnThreads, p, a, b, mask_p);
        block_dy += a;
        block_dy_xmu += b;
      }
      sum_dy += block_dy;
      sum_dy_xmu += block_dy_xmu;
    }
    const m::BnGradCoefs k = m::bn_grad_coefs(sum_dy, sum_dy_xmu, is, g[c], double(p.M), train);
    dgamma[c] = float(k.dgamma);
    dbeta[c] = float(k.dbeta);
    for (int64_t n = 0; n < s[0]; ++n)
      for (int64_t q = 0; q < HW; ++q) {
        const int64_t i = (n * C + c) * HW + q;
        const float d = relu ? m::bn_relu_grad(dyf[i], mask[i]) : dyf[i];
        dx[i] = m::bn_dx(d, xf[i], float(mu[c]), float(k.k), float(k.mean_dy), float(k.proj));
        dy_abs[c] += std::fabs(dyf[i]);
        dg_abs[c] += std::fabs(dyf[i] * (xf[i] - mu[c]) * is);
      }
  }
  expect_near_all(dbeta, ref.dbeta.to_vector(), dy_abs, kSumTol, "dbeta");
  expect_near_all(dgamma, ref.dgamma.to_vector(), dg_abs, kSumTol, "dgamma");
  expect_near_all(dx, ref.dx.to_vector(), {}, kSumTol, "dx");
}

TEST(CudaBnPoolMath, BatchNormBackwardMatchesCpu) {
  Generator gen(5);
  for (const BnShapeCase& sc : kBnShapes)
    for (bool train : {true, false})
      for (bool relu : {false, true}) {
        SCOPED_TRACE(shape_str(sc.shape) + (train ? " train" : " eval") + (relu ? " relu" : "") + " planned for " +
                     std::to_string(sc.sms) + " SMs");
        check_bn_backward<1>(sc, train, relu, gen);
        if ((sc.shape[2] * sc.shape[3]) % 4 == 0) check_bn_backward<4>(sc, train, relu, gen);
      }
}

}  // namespace
}  // namespace ladnn
