// cuda/bnpool_math.h — the arithmetic of the batch-norm and pooling kernels (cuda/batchnorm.cu,
// cuda/pool.cu) as functions that compile for the host and the device alike.
//
// Why a separate header: the kernels are thin loops over these functions (which element a thread
// takes, which window an output covers, how statistics merge), and tests/cuda_bnpool_math_test.cpp
// runs the very same functions on the CPU against the CPU ops — so the index arithmetic, the window
// and divisor rules, the chunking of a channel across blocks and the Welford merges are checked on
// every machine, with or without a GPU. What stays GPU-only is the launch geometry and the
// warp/block reductions, which tests/cuda_bnpool_test.cpp checks on the device.
//
// Plain C++17: no CUDA header is needed (LADNN_HD is empty outside nvcc). NaN is tested as v != v,
// which nvcc and the host compilers keep as long as fast-math is off (it is: see CMakeLists.txt).
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define LADNN_HD __host__ __device__ __forceinline__
#else
#define LADNN_HD inline
#endif

namespace ladnn::cuda::math {

LADNN_HD int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
LADNN_HD int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }

/// Four consecutive floats: one 16-byte load on the device (p must be 16-byte aligned), four on the host.
LADNN_HD void load4(const float* p, float (&v)[4]) {
#if defined(__CUDA_ARCH__)
  const float4 q = *reinterpret_cast<const float4*>(p);
  v[0] = q.x;
  v[1] = q.y;
  v[2] = q.z;
  v[3] = q.w;
#else
  v[0] = p[0];
  v[1] = p[1];
  v[2] = p[2];
  v[3] = p[3];
#endif
}

LADNN_HD void store4(float* p, const float (&v)[4]) {
#if defined(__CUDA_ARCH__)
  *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
#else
  p[0] = v[0];
  p[1] = v[1];
  p[2] = v[2];
  p[3] = v[3];
#endif
}

// =====================================================================================================
// Batch norm
// =====================================================================================================

/// Running count, mean and sum of squared deviations (M2) of a set of values. Trivially constructible
/// (it lives in __shared__ memory): initialise with Welford{0, 0, 0}.
struct Welford {
  float n, mean, m2;
};

/// Welford's update: no E[x^2] - mean^2 cancellation, whatever the mean.
LADNN_HD void welford_add(Welford& w, float x) {
  w.n += 1.0f;
  const float d = x - w.mean;
  w.mean += d / w.n;
  w.m2 += d * (x - w.mean);
}

/// Four values at once: their own mean and M2 (exact up to rounding), merged as Chan et al. merge two
/// states. One division per four values instead of four, and a dependency chain a quarter as long as
/// four welford_adds (the statistics pass of the training BatchNorm walks its values with it); as
/// accurate (tests/cuda_bnpool_math_test.cpp measures both against float64, offsets up to 1e5).
LADNN_HD void welford_add4(Welford& w, const float v[4]) {
  const float m4 = ((v[0] + v[1]) + (v[2] + v[3])) * 0.25f;
  const float d0 = v[0] - m4, d1 = v[1] - m4, d2 = v[2] - m4, d3 = v[3] - m4;
  const float q4 = (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3);
  const float n = w.n + 4.0f, d = m4 - w.mean, f = 4.0f / n;
  w.mean += d * f;
  w.m2 += q4 + d * d * w.n * f;
  w.n = n;
}

/// Chan et al.'s pairwise combination of two states (either may be empty).
LADNN_HD Welford welford_merge(const Welford& a, const Welford& b) {
  if (b.n == 0.0f) return a;
  if (a.n == 0.0f) return b;
  const float n = a.n + b.n;
  const float d = b.mean - a.mean;
  const float fb = b.n / n;
  return Welford{n, a.mean + d * fb, a.m2 + b.m2 + d * d * a.n * fb};
}

/// How a channel's M = N*HW values are split: `splits` chunks of `chunk` values (the last may be
/// shorter), value j of channel c at x[(n*C + c)*HW + k] with n = j / HW, k = j % HW. chunk is a
/// multiple of 4, so with HW % 4 == 0 a group of 4 never straddles a chunk or a row.
struct BnPartition {
  int64_t C = 0, HW = 0, M = 0, chunk = 0;
  int splits = 1;
  int64_t sN = 0;  // elements between x's samples: C * HW when packed, more for a channel prefix
};

constexpr int kBnThreads = 256;  // threads per block of the reduction kernels
constexpr int kBnMaxSplits = 128;

/// Chunks per channel so that C * splits blocks fill the GPU (about 8 resident blocks of kBnThreads
/// per SM) while each thread still gets >= 4 values; 1 when the channels alone fill it.
inline BnPartition bn_partition(int64_t N, int64_t C, int64_t HW, int num_sms) {
  BnPartition p;
  p.C = C;
  p.HW = HW;
  p.M = N * HW;
  const int64_t target_blocks = int64_t(num_sms) * 8;
  int64_t splits = C > 0 ? (target_blocks + C - 1) / C : 1;
  const int64_t by_work = p.M / (int64_t(kBnThreads) * 4);
  if (splits > by_work) splits = by_work;
  if (splits > kBnMaxSplits) splits = kBnMaxSplits;
  if (splits < 1) splits = 1;
  p.splits = static_cast<int>(splits);
  const int64_t chunk = (p.M + p.splits - 1) / p.splits;
  p.chunk = (chunk + 3) / 4 * 4;
  p.sN = C * HW;
  return p;
}

/// One block per channel (cuda::BnKernel::Channel): a training forward's statistics and map, or a
/// backward's sums and dx, in one kernel instead of three. Auto takes it when the C blocks alone fill at
/// least half the GPU's SMs (below that, the split path's C * splits blocks read faster) and a channel
/// holds at most kBnChannelMaxValues values: the map then re-reads values its block read moments before,
/// and a channel's 256 KB (512 KB for a backward's dy and x) of some hundred resident blocks stay mostly
/// in L2. DenseNet-169 on 132 SMs at batch 32 and 64: every BatchNorm at 28x28 and below; at batch 1
/// all but those of 64 channels (the stem's norm0, the first dense layer's norm1).
constexpr int64_t kBnChannelMaxValues = 65536;
inline bool bn_channel_fits(int64_t N, int64_t C, int64_t HW, int num_sms) {
  const int64_t M = N * HW;
  return M > 0 && M <= kBnChannelMaxValues && 2 * C >= num_sms;
}
/// Threads of a per-channel block: about 16 of the channel's M values each (4 float4 loads per pass), a
/// whole number of warps, 32 to 1,024.
inline int bn_channel_threads(int64_t M) {
  int64_t t = (M + 15) / 16;
  t = (t + 31) / 32 * 32;
  return static_cast<int>(t < 32 ? 32 : (t > 1024 ? 1024 : t));
}
/// The normalising kernels without a reduction (eval, and training given the batch statistics) take a
/// block per channel instead of a block per (n, c) plane when the planes are small (up to 16x16) and the
/// channels alone fill half the GPU: DenseNet's 14x14 and 7x7 BatchNorms (256 to 1,664 channels). A
/// 7x7 plane is 49 values, a block per plane handles one value a thread and derives its channel's
/// coefficients (double arithmetic) in every thread of every plane.
inline bool bn_planes_by_channel(int64_t N, int64_t C, int64_t HW, int num_sms) {
  return N > 0 && HW > 0 && HW <= 256 && 2 * C >= num_sms;
}

/// A channel's values held in registers (cuda::BnKernel::Cluster): a cluster of `blocks` blocks (Hopper
/// thread block clusters; one block where it suffices) of `threads` threads takes one channel, and each
/// thread at most kBnClusterValues of its values — groups u, u + U, u + 2U, ... of VEC values, u the
/// thread's rank in the cluster (block rank * threads + thread), U = blocks * threads — read once: the
/// statistics (or the backward's sums) are merged across the cluster through distributed shared memory,
/// then the map is computed from the registers. Up to 8,192 values it is one block of
/// bn_channel_threads(M) threads (at most 16 values each), walking the channel as the per-channel kernel
/// does: the same bits. Beyond, blocks of at most kBnClusterThreads threads (a backward holds 64 floats a
/// thread: 512 threads stay within the register file), in clusters of at most kBnMaxClusterBlocks (the
/// portable size). threads == 0: the channel does not fit (more than 8 * 512 * 32 = 131,072 values).
constexpr int kBnClusterValues = 32;
constexpr int kBnClusterThreads = 512;
constexpr int kBnMaxClusterBlocks = 8;
struct BnClusterShape {
  int threads = 0, blocks = 0;
};
inline BnClusterShape bn_cluster_shape(int64_t M) {
  if (M <= 0) return {};
  if (M <= 16 * int64_t(kBnClusterThreads)) return {bn_channel_threads(M), 1};
  constexpr int64_t per_block = int64_t(kBnClusterValues) * kBnClusterThreads;
  const int64_t blocks = (M + per_block - 1) / per_block;
  if (blocks > kBnMaxClusterBlocks) return {};
  int64_t t = (M + kBnClusterValues * blocks - 1) / (kBnClusterValues * blocks);
  t = (t + 31) / 32 * 32;
  return {static_cast<int>(t), static_cast<int>(blocks)};
}

/// Group `it` of cluster thread u (of U, the cluster's threads): its first value's index j in the channel
/// (j >= M: the thread has no such group) and that value's sample n and offset r in the sample's plane.
struct BnHeldGroup {
  int j, n, r;
};
template <int VEC>
LADNN_HD BnHeldGroup bn_cluster_group(int u, int it, int U, int HW) {
  BnHeldGroup h;
  h.j = (u + it * U) * VEC;
  h.n = h.j / HW;
  h.r = h.j - h.n * HW;
  return h;
}

/// The partition of a per-channel block: one chunk of all M values (bn_stats_thread and bn_grad_thread
/// with s = 0 then walk the whole channel).
inline BnPartition bn_channel_partition(int64_t N, int64_t C, int64_t HW) {
  BnPartition p;
  p.C = C;
  p.HW = HW;
  p.M = N * HW;
  p.splits = 1;
  p.chunk = (p.M + 3) / 4 * 4;
  p.sN = C * HW;
  return p;
}

/// Offset of value j (of the M = N*HW) of channel c in a packed (N, C, HW) tensor: dy, relu_y, dx.
LADNN_HD int64_t bn_offset(int64_t j, int64_t c, const BnPartition& p) {
  const int64_t n = j / p.HW, k = j - n * p.HW;
  return (n * p.C + c) * p.HW + k;
}

/// The same in x, whose samples are p.sN apart (a dense block's channel prefix, read in place).
LADNN_HD int64_t bn_x_offset(int64_t j, int64_t c, const BnPartition& p) {
  const int64_t n = j / p.HW, k = j - n * p.HW;
  return n * p.sN + c * p.HW + k;
}

/// Packed flat index i of an (N, C*HW) tensor -> the element's offset when samples are sN apart.
LADNN_HD int64_t sample_offset(int64_t i, int64_t CHW, int64_t sN) {
  const int64_t n = i / CHW;
  return n * sN + (i - n * CHW);
}

/// The Welford state of thread t (of T) in block (c, s): values j = begin + t*VEC, stepping T*VEC,
/// of chunk s of channel c. VEC = 4 needs HW % 4 == 0 (and, on the device, x 16-byte aligned).
template <int VEC>
LADNN_HD Welford bn_stats_thread(const float* x, int64_t c, int64_t s, int64_t t, int64_t T, const BnPartition& p) {
  const int64_t begin = s * p.chunk;
  const int64_t end = imin(p.M, begin + p.chunk);
  Welford w{0.0f, 0.0f, 0.0f};
  for (int64_t j = begin + t * VEC; j < end; j += T * VEC) {
    const float* ptr = x + bn_x_offset(j, c, p);
    if constexpr (VEC == 4) {
      float v[4];
      load4(ptr, v);
      welford_add4(w, v);
    } else {
      welford_add(w, *ptr);
    }
  }
  return w;
}

/// Per-channel statistics from the chunks' partial states (count, mean, M2 for each of `splits`),
/// merged in double.
struct BnChannelStats {
  double n = 0, mean = 0, var = 0, invstd = 0;  // var biased (divides by n)
};
/// A channel's statistics from its count, mean and biased variance: what bn_merge_partials finishes
/// with, and what a forward given the batch statistics (ops::batch_norm_batch_stats) starts from.
LADNN_HD BnChannelStats bn_channel_stats(double n, double mean, double var, double eps) {
  BnChannelStats r;
  r.n = n;
  r.mean = mean;
  r.var = var;
  r.invstd = 1.0 / ::sqrt(var + eps);
  return r;
}
LADNN_HD BnChannelStats bn_merge_partials(const float* partial, int splits, double eps) {
  double n = 0.0, mean = 0.0, m2 = 0.0;
  for (int s = 0; s < splits; ++s) {
    const double nb = partial[3 * s], mb = partial[3 * s + 1], m2b = partial[3 * s + 2];
    if (nb == 0.0) continue;
    const double nn = n + nb, d = mb - mean;
    mean += d * nb / nn;
    m2 += m2b + d * d * n * nb / nn;
    n = nn;
  }
  return bn_channel_stats(n, mean, m2 / n, eps);
}

/// PyTorch's running-statistics update: the batch variance enters unbiased, n / (n - 1).
LADNN_HD double bn_running_mean(double running, double momentum, const BnChannelStats& st) {
  return (1.0 - momentum) * running + momentum * st.mean;
}
LADNN_HD double bn_running_var(double running, double momentum, const BnChannelStats& st) {
  return (1.0 - momentum) * running + momentum * st.var * st.n / (st.n - 1.0);
}

/// The fused normalisation, (x - mean) first: accurate even when |mean| >> std. One fused multiply-add,
/// written out (not left to the compiler's contraction): the training backward recomputes the ReLU's
/// decisions from x with this very function and must get the forward's bits (BnMaskFromX).
LADNN_HD float bn_normalize(float x, float mean, float scale, float shift) {
#if defined(__CUDA_ARCH__)
  return __fmaf_rn(x - mean, scale, shift);
#else
  return std::fma(x - mean, scale, shift);
#endif
}

/// The training normalisation's per-channel scale: gamma * save_invstd, one float rounding. The native
/// forward's finalize writes it; the backward recomputes it from the same two floats.
LADNN_HD float bn_train_scale(float gamma, float invstd) { return gamma * invstd; }

/// The fused BatchNorm-ReLU's backward mask recomputed from x (the training dense block's: it then reads
/// no y): on when the forward's normalised value was > 0, from the channel's save_mean, scale
/// (bn_train_scale) and shift (beta), exactly as the native forward computed it.
struct BnMaskFromX {
  bool on = false;
  float scale = 0.0f, shift = 0.0f;
};
LADNN_HD bool bn_relu_on(float x, float mean, const BnMaskFromX& m) {
  return bn_normalize(x, mean, m.scale, m.shift) > 0.0f;
}

/// The fused BatchNorm-ReLU's activation, as ops::relu (NaN -> 0).
LADNN_HD float bn_relu(float v) { return v > 0.0f ? v : 0.0f; }
/// Its backward mask: dy where the forward's output y was > 0, else 0 (relu_backward's rule).
LADNN_HD float bn_relu_grad(float dy, float y) { return y > 0.0f ? dy : 0.0f; }

/// One group of VEC values (dy already masked) added to a thread's backward sums: sum(dy) and
/// sum(dy * (x - mu)), in the one order every backward kernel uses (so that a kernel holding its values
/// in registers, bn_backward_cluster, sums them to the same bits as one reading them, bn_grad_thread).
template <int VEC>
LADNN_HD void bn_grad_add(const float* d, const float* v, float mu, float& sum_dy, float& sum_dy_xmu) {
  if constexpr (VEC == 4) {
    sum_dy += (d[0] + d[1]) + (d[2] + d[3]);
    sum_dy_xmu += d[0] * (v[0] - mu) + d[1] * (v[1] - mu) + d[2] * (v[2] - mu) + d[3] * (v[3] - mu);
  } else {
    sum_dy += d[0];
    sum_dy_xmu += d[0] * (v[0] - mu);
  }
}

/// sum(dy) and sum(dy * (x - mu)) of thread t (of T) in block (c, s), as bn_stats_thread walks.
/// `relu_y` (null for a plain BatchNorm): the fused BatchNorm-ReLU's output, masking dy; or, with
/// `from_x.on`, the same mask recomputed from x (relu_y null).
template <int VEC>
LADNN_HD void bn_grad_thread(const float* dy, const float* x, float mu, int64_t c, int64_t s, int64_t t, int64_t T,
                             const BnPartition& p, float& sum_dy, float& sum_dy_xmu,
                             const float* relu_y = nullptr, BnMaskFromX from_x = {}) {
  const int64_t begin = s * p.chunk;
  const int64_t end = imin(p.M, begin + p.chunk);
  sum_dy = 0.0f;
  sum_dy_xmu = 0.0f;
  for (int64_t j = begin + t * VEC; j < end; j += T * VEC) {
    const int64_t off = bn_offset(j, c, p), xoff = bn_x_offset(j, c, p);
    if constexpr (VEC == 4) {
      float d[4], v[4];
      load4(dy + off, d);
      load4(x + xoff, v);
      if (relu_y) {
        float y[4];
        load4(relu_y + off, y);
        for (int k = 0; k < 4; ++k) d[k] = bn_relu_grad(d[k], y[k]);
      } else if (from_x.on) {
        for (int k = 0; k < 4; ++k) d[k] = bn_relu_on(v[k], mu, from_x) ? d[k] : 0.0f;
      }
      bn_grad_add<4>(d, v, mu, sum_dy, sum_dy_xmu);
    } else {
      const float xv = x[xoff];
      const float d = relu_y ? bn_relu_grad(dy[off], relu_y[off])
                             : (from_x.on && !bn_relu_on(xv, mu, from_x) ? 0.0f : dy[off]);
      bn_grad_add<1>(&d, &xv, mu, sum_dy, sum_dy_xmu);
    }
  }
}

/// The backward's per-channel results: dbeta = sum(dy), dgamma = sum(dy (x - mean)) invstd, and
/// dx = k (dy - mean_dy - (x - mean) proj). Frozen statistics (eval) have mean_dy = proj = 0.
struct BnGradCoefs {
  double dgamma, dbeta, k, mean_dy, proj;
};
LADNN_HD BnGradCoefs bn_grad_coefs(double sum_dy, double sum_dy_xmu, double invstd, double gamma, double M,
                                   bool through_stats) {
  BnGradCoefs r;
  r.dbeta = sum_dy;
  r.dgamma = sum_dy_xmu * invstd;
  r.k = gamma * invstd;
  r.mean_dy = through_stats ? sum_dy / M : 0.0;
  r.proj = through_stats ? sum_dy_xmu * invstd * invstd / M : 0.0;
  return r;
}

LADNN_HD float bn_dx(float dy, float x, float mean, float k, float mean_dy, float proj) {
  return k * (dy - mean_dy - (x - mean) * proj);
}

// =====================================================================================================
// Pooling (tensor/cpu/pool.cpp's rules)
// =====================================================================================================

/// Input plane, output plane and window parameters.
struct PoolGeom {
  int64_t H, W, OH, OW;
  int64_t kh, kw, sh, sw, ph, pw;
  bool include_pad;
};

/// Output o = ((plane * OH) + oh) * OW + ow.
struct OutPos {
  int64_t plane, oh, ow;
};
LADNN_HD OutPos out_pos(int64_t o, int64_t OH, int64_t OW) {
  const int64_t ow = o % OW, t = o / OW;
  return {t / OH, t % OH, ow};
}

/// The identity, the pools' default map.
struct NoMap {
  LADNN_HD float operator()(float v) const { return v; }
};
/// A BatchNorm (then ReLU when relu) as its kernels map each value, (x - mean) * scale + shift: with an eval
/// BatchNorm's coefficients (bn_eval_plane_kernel's), the map of the fused inference BatchNorm-ReLU-average
/// pool (a DenseNet transition's); with a training BatchNorm's (its batch statistics), the training ones
/// (a transition's average pool, the stem's max pool).
struct BnEvalMap {
  float mean, scale, shift;
  bool relu;
  LADNN_HD float operator()(float v) const {
    const float y = bn_normalize(v, mean, scale, shift);
    return relu ? bn_relu(y) : y;
  }
};

/// Max over the window of output o of map(x), clipped to the input (padding never selected), scanning rows
/// then columns; a strictly larger value or a NaN takes over: ties keep the first maximum, a NaN wins.
/// `index` is h * W + w within the plane.
template <class Map = NoMap>
LADNN_HD void max_pool_at(const float* x, int64_t o, const PoolGeom& g, float& value, int64_t& index,
                          const Map& map = Map()) {
  const OutPos q = out_pos(o, g.OH, g.OW);
  int64_t h0 = q.oh * g.sh - g.ph, w0 = q.ow * g.sw - g.pw;
  const int64_t h1 = imin(h0 + g.kh, g.H), w1 = imin(w0 + g.kw, g.W);
  h0 = imax(h0, 0);
  w0 = imax(w0, 0);
  const float* xp = x + q.plane * g.H * g.W;
  int64_t best = h0 * g.W + w0;
  float best_v = -INFINITY;
  for (int64_t h = h0; h < h1; ++h)
    for (int64_t w = w0; w < w1; ++w) {
      const float v = map(xp[h * g.W + w]);
      if (v > best_v || v != v) {
        best_v = v;
        best = h * g.W + w;
      }
    }
  value = best_v;
  index = best;
}

/// The window of output (oh, ow) clipped to the input, and its divisor: the window clipped to the
/// padded input (count_include_pad) or to the input (otherwise).
struct AvgWindow {
  int64_t h0, h1, w0, w1, divisor;
};
LADNN_HD AvgWindow avg_window(int64_t oh, int64_t ow, const PoolGeom& g) {
  int64_t h0 = oh * g.sh - g.ph, w0 = ow * g.sw - g.pw;
  int64_t h1 = imin(h0 + g.kh, g.H + g.ph), w1 = imin(w0 + g.kw, g.W + g.pw);
  const int64_t padded_size = (h1 - h0) * (w1 - w0);
  h0 = imax(h0, 0);
  w0 = imax(w0, 0);
  h1 = imin(h1, g.H);
  w1 = imin(w1, g.W);
  return {h0, h1, w0, w1, g.include_pad ? padded_size : (h1 - h0) * (w1 - w0)};
}

/// Average over the window of output o of map(x) (map applied to each input cell: a padding cell counts
/// as 0 in the sum, as when the mapped input is pooled), summed rows then columns, divided by the
/// window's divisor.
template <class Map = NoMap>
LADNN_HD float avg_pool_at(const float* x, int64_t o, const PoolGeom& g, const Map& map = Map()) {
  const OutPos q = out_pos(o, g.OH, g.OW);
  const AvgWindow win = avg_window(q.oh, q.ow, g);
  if (win.h0 >= win.h1 || win.w0 >= win.w1) return 0.0f;  // cannot happen with checked parameters; as the CPU
  const float* xp = x + q.plane * g.H * g.W;
  float sum = 0.0f;
  for (int64_t h = win.h0; h < win.h1; ++h)
    for (int64_t w = win.w0; w < win.w1; ++w) sum += map(xp[h * g.W + w]);
  return sum / static_cast<float>(win.divisor);
}

/// Input element i = ((plane * H) + h) * W + w and the outputs whose windows may contain it, for the
/// backward gathers: the windows [oh*sh - ph, oh*sh - ph + kh) that contain h are oh in
/// [floor((h + ph - kh) / sh) + 1, floor((h + ph) / sh)] (clipped to [0, OH)); likewise for w.
struct Covering {
  int64_t plane, h, w;
  int64_t oh_lo, oh_hi, ow_lo, ow_hi;  // inclusive
};
LADNN_HD Covering covering_outputs(int64_t i, const PoolGeom& g) {
  Covering c;
  c.w = i % g.W;
  const int64_t t = i / g.W;
  c.h = t % g.H;
  c.plane = t / g.H;
  c.oh_lo = c.h + g.ph < g.kh ? 0 : (c.h + g.ph - g.kh) / g.sh + 1;
  c.oh_hi = imin(g.OH - 1, (c.h + g.ph) / g.sh);
  c.ow_lo = c.w + g.pw < g.kw ? 0 : (c.w + g.pw - g.kw) / g.sw + 1;
  c.ow_hi = imin(g.OW - 1, (c.w + g.pw) / g.sw);
  return c;
}

/// dx at input element i: the CPU's scatter as a gather over covering_outputs.
LADNN_HD float avg_pool_backward_at(const float* dy, int64_t i, const PoolGeom& g) {
  const Covering c = covering_outputs(i, g);
  const float* dyp = dy + c.plane * g.OH * g.OW;
  float sum = 0.0f;
  for (int64_t oh = c.oh_lo; oh <= c.oh_hi; ++oh)
    for (int64_t ow = c.ow_lo; ow <= c.ow_hi; ++ow) {
      const AvgWindow win = avg_window(oh, ow, g);
      if (c.h < win.h0 || c.h >= win.h1 || c.w < win.w0 || c.w >= win.w1) continue;  // defensive: always inside
      sum += dyp[oh * g.OW + ow] / static_cast<float>(win.divisor);
    }
  return sum;
}

/// max_pool_backward_at for cell (h, w) of one plane, given that plane's dy and indices: the same sum in
/// the same order, with 32-bit index arithmetic (the caller checks that a plane's sizes fit) and no
/// division of a flat index by the plane's size.
LADNN_HD float max_pool_backward_cell(const float* dy_plane, const int64_t* ind_plane, int32_t h, int32_t w,
                                      const PoolGeom& g) {
  const int32_t kh = int32_t(g.kh), kw = int32_t(g.kw), sh = int32_t(g.sh), sw = int32_t(g.sw);
  const int32_t ph = int32_t(g.ph), pw = int32_t(g.pw), OH = int32_t(g.OH), OW = int32_t(g.OW);
  const int32_t oh_lo = h + ph < kh ? 0 : (h + ph - kh) / sh + 1,
                oh_hi = OH - 1 < (h + ph) / sh ? OH - 1 : (h + ph) / sh;
  const int32_t ow_lo = w + pw < kw ? 0 : (w + pw - kw) / sw + 1,
                ow_hi = OW - 1 < (w + pw) / sw ? OW - 1 : (w + pw) / sw;
  const int64_t cell = int64_t(h) * g.W + w;
  float sum = 0.0f;
  for (int32_t oh = oh_lo; oh <= oh_hi; ++oh)
    for (int32_t ow = ow_lo; ow <= ow_hi; ++ow) {
      const int32_t o = oh * OW + ow;
      if (ind_plane[o] == cell) sum += dy_plane[o];
    }
  return sum;
}

/// Whether an average pool's windows tile its input: kernel == stride, no padding, and no window past the
/// input's end (floor mode): each input cell lies in at most one window, the cells after the last whole
/// window in none. A DenseNet transition's 2x2/2.
LADNN_HD bool avg_pool_tiles(const PoolGeom& g) {
  return g.kh == g.sh && g.kw == g.sw && g.ph == 0 && g.pw == 0 && g.OH * g.kh <= g.H && g.OW * g.kw <= g.W;
}

/// For tiling windows (avg_pool_tiles): the pool's gradient at cell (h, w) of a plane whose pooled gradient
/// is dy_plane — avg_pool_backward_at's value, to the bit (its sum starts at 0.0f; a window's divisor is
/// kh * kw). 32-bit index arithmetic (the callers check that the sizes fit), a shift for 2x2.
LADNN_HD float avg_pool_tile_grad(const float* dy_plane, int32_t h, int32_t w, const PoolGeom& g) {
  const int32_t kh = static_cast<int32_t>(g.kh), kw = static_cast<int32_t>(g.kw);
  const int32_t oh = kh == 2 ? h >> 1 : h / kh, ow = kw == 2 ? w >> 1 : w / kw;
  if (oh >= g.OH || ow >= g.OW) return 0.0f;
  return 0.0f + dy_plane[int64_t(oh) * g.OW + ow] / static_cast<float>(kh * kw);
}

/// The training BatchNorm's backward sums (bn_grad_thread<1>'s, value by value in the same order) when its
/// output gradient is a tiling average pool's: dy is the pooled gradient (N, C, OH, OW), each value's
/// gradient avg_pool_tile_grad of it, masked by the ReLU's decisions recomputed from x (from_x). The
/// transition's backward then never writes the full-size gradient. Needs p.M and the planes under 2^31.
LADNN_HD void bn_pool_grad_thread(const float* dy, const float* x, float mu, int64_t c, int64_t s, int64_t t,
                                  int64_t T, const BnPartition& p, const PoolGeom& g, BnMaskFromX from_x,
                                  float& sum_dy, float& sum_dy_xmu) {
  const int64_t begin = s * p.chunk;
  const int64_t end = imin(p.M, begin + p.chunk);
  const int32_t HW = static_cast<int32_t>(p.HW), W = static_cast<int32_t>(g.W);
  sum_dy = 0.0f;
  sum_dy_xmu = 0.0f;
  for (int64_t j = begin + t; j < end; j += T) {
    const int32_t n = static_cast<int32_t>(j) / HW, k = static_cast<int32_t>(j) - n * HW;
    const int32_t h = k / W, w = k - h * W;
    const float xv = x[n * p.sN + c * p.HW + k];
    float d = avg_pool_tile_grad(dy + (n * p.C + c) * g.OH * g.OW, h, w, g);
    if (from_x.on && !bn_relu_on(xv, mu, from_x)) d = 0.0f;
    sum_dy += d;
    sum_dy_xmu += d * (xv - mu);
  }
}

/// Its dx at cell r (< 2^31) of a plane: x's value there xv, the plane's pooled gradient dy_plane, the
/// channel's coefficients — the value bn_backward_dx writes from the full-size gradient.
LADNN_HD float bn_pool_dx(const float* dy_plane, float xv, int32_t r, const PoolGeom& g, float mu,
                          BnMaskFromX from_x, float k, float mean_dy, float proj) {
  const int32_t W = static_cast<int32_t>(g.W), h = r / W, w = r - h * W;
  float d = avg_pool_tile_grad(dy_plane, h, w, g);
  if (from_x.on && !bn_relu_on(xv, mu, from_x)) d = 0.0f;
  return bn_dx(d, xv, mu, k, mean_dy, proj);
}

/// dx at input element i for max pooling, as a gather: the sum of dy over the outputs whose windows
/// contain the cell (covering_outputs) and whose saved index names it,
/// in increasing output order — the CPU scatter's order, so the float sum is the CPU's to the bit, and
/// the same on every run (the scatter form needs atomicAdd where windows overlap: run-to-run noise).
LADNN_HD float max_pool_backward_at(const float* dy, const int64_t* ind, int64_t i, const PoolGeom& g) {
  const Covering c = covering_outputs(i, g);
  const int64_t cell = c.h * g.W + c.w;
  const int64_t base = c.plane * g.OH * g.OW;
  float sum = 0.0f;
  for (int64_t oh = c.oh_lo; oh <= c.oh_hi; ++oh)
    for (int64_t ow = c.ow_lo; ow <= c.ow_hi; ++ow) {
      const int64_t o = base + oh * g.OW + ow;
      if (ind[o] == cell) sum += dy[o];
    }
  return sum;
}

/// torch's adaptive bounds: output i averages [floor(i*in/out), ceil((i+1)*in/out)).
LADNN_HD int64_t adaptive_start(int64_t i, int64_t in, int64_t out) { return (i * in) / out; }
LADNN_HD int64_t adaptive_end(int64_t i, int64_t in, int64_t out) { return ((i + 1) * in + out - 1) / out; }

/// Lane `lane` of `lanes`'s share of output o's window sum: cells k = lane, lane + lanes, ... of the
/// window in row-major order. `count` gets the window's size.
LADNN_HD float adaptive_avg_lane_sum(const float* x, int64_t o, int64_t lane, int64_t lanes, int64_t H, int64_t W,
                                     int64_t OH, int64_t OW, int64_t& count) {
  const OutPos q = out_pos(o, OH, OW);
  const int64_t h0 = adaptive_start(q.oh, H, OH), h1 = adaptive_end(q.oh, H, OH);
  const int64_t w0 = adaptive_start(q.ow, W, OW), w1 = adaptive_end(q.ow, W, OW);
  const int64_t ww = w1 - w0;
  count = (h1 - h0) * ww;
  const float* xp = x + q.plane * H * W;
  float sum = 0.0f;
  for (int64_t k = lane; k < count; k += lanes) sum += xp[(h0 + k / ww) * W + (w0 + k % ww)];
  return sum;
}

/// dx at input element i: sum of dy / count over the outputs whose windows contain it. The first
/// output row whose window can reach row h is floor(h*OH/H) (every earlier window ends at or before
/// h); the walk stops at the first window that starts after h.
LADNN_HD float adaptive_avg_backward_at(const float* dy, int64_t i, int64_t H, int64_t W, int64_t OH, int64_t OW) {
  const int64_t w = i % W, t = i / W;
  const int64_t h = t % H, plane = t / H;
  const float* dyp = dy + plane * OH * OW;
  float sum = 0.0f;
  for (int64_t oh = (h * OH) / H; oh < OH && adaptive_start(oh, H, OH) <= h; ++oh) {
    const int64_t h0 = adaptive_start(oh, H, OH), h1 = adaptive_end(oh, H, OH);
    if (h < h0 || h >= h1) continue;
    for (int64_t ow = (w * OW) / W; ow < OW && adaptive_start(ow, W, OW) <= w; ++ow) {
      const int64_t w0 = adaptive_start(ow, W, OW), w1 = adaptive_end(ow, W, OW);
      if (w < w0 || w >= w1) continue;
      sum += dyp[oh * OW + ow] / static_cast<float>((h1 - h0) * (w1 - w0));
    }
  }
  return sum;
}

}  // namespace ladnn::cuda::math
