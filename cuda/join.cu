// cuda/join.cu — cat on the GPU (split stays a view: tensor/cpu/join.cpp serves every device).
//
// Same picture as the CPU kernel: the output is (outer, total * inner) rows, outer = product of the
// sizes before `dim`, inner = product after; part p fills columns [col_p, col_p + chunk_p) of every row,
// chunk_p = size_p(dim) * inner. DenseNet concatenates up to 33 feature maps per dense layer, so all
// parts go in ONE launch (up to kMaxParts per launch): blockIdx.y picks the part, and a grid-stride loop
// over x copies its outer * chunk_p elements. Reads are contiguous per part; writes are contiguous runs
// of chunk_p elements (C_p * H * W for NCHW along channels). Elements move as 4- or 8-byte words, so
// every dtype (int64 indices too) is accepted.
#include <vector>

#include "cuda/kernel_util.cuh"
#include "cuda/launch.h"
#include "cuda/ops.h"

namespace ladnn::cuda {
namespace {

using namespace detail;

constexpr int kMaxParts = 64;  // 64 * 24 B of kernel parameters: well under the 4 KiB limit

struct CatBatch {
  const void* src[kMaxParts];
  int64_t chunk[kMaxParts];  // elements per output row of this part
  int64_t col[kMaxParts];    // its first column in an output row
};

template <typename Word, typename I>
__global__ void cat_kernel(Word* __restrict__ out, CatBatch batch, I outer, I row) {
  pdl_enter();
  const int p = blockIdx.y;
  const I chunk = static_cast<I>(batch.chunk[p]);
  const I col = static_cast<I>(batch.col[p]);
  const Word* __restrict__ src = static_cast<const Word*>(batch.src[p]);
  const I n = outer * chunk;
  for (I i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    const I o = i / chunk;
    const I c = i - o * chunk;
    out[o * row + col + c] = src[i];
  }
}

template <typename Word>
void launch_cat(void* out, const std::vector<const void*>& src, const std::vector<int64_t>& chunk,
                const std::vector<int64_t>& col, int64_t outer, int64_t row) {
  cudaStream_t st = current_stream();
  const bool small = outer * row <= std::numeric_limits<int32_t>::max();
  for (std::size_t first = 0; first < src.size(); first += kMaxParts) {
    const std::size_t count = std::min<std::size_t>(kMaxParts, src.size() - first);
    CatBatch batch{};
    int64_t longest = 0;
    for (std::size_t i = 0; i < count; ++i) {
      batch.src[i] = src[first + i];
      batch.chunk[i] = chunk[first + i];
      batch.col[i] = col[first + i];
      longest = std::max(longest, outer * chunk[first + i]);
    }
    const dim3 grid(grid_for(longest), static_cast<unsigned>(count));
    if (small)
      launch_kernel(cat_kernel<Word, uint32_t>, grid, kThreads, 0, st, static_cast<Word*>(out), batch,
                    static_cast<uint32_t>(outer), static_cast<uint32_t>(row));
    else
      launch_kernel(cat_kernel<Word, uint64_t>, grid, kThreads, 0, st, static_cast<Word*>(out), batch,
                    static_cast<uint64_t>(outer), static_cast<uint64_t>(row));
    CUDA_CHECK_LAUNCH();
  }
}

}  // namespace

Tensor cat(const std::vector<Tensor>& parts, int64_t dim) {
  // tensor/ops.h has checked the parts (same rank, dtype, device; sizes equal but along dim).
  const Tensor& first = parts[0];
  const int64_t nd = first.dim();
  if (dim < 0) dim += nd;
  Shape out_shape = first.shape();
  int64_t total = 0;
  for (const Tensor& t : parts) total += t.size(dim);
  out_shape[dim] = total;
  Tensor out = Tensor::empty(out_shape, first.dtype(), first.device());
  if (out.numel() == 0) return out;

  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < dim; ++d) outer *= out_shape[d];
  for (int64_t d = dim + 1; d < nd; ++d) inner *= out_shape[d];

  std::vector<Tensor> keep;  // contiguous versions of strided parts, alive until the launch is queued
  std::vector<const void*> src;
  std::vector<int64_t> chunk, col;
  int64_t c = 0;
  for (const Tensor& t : parts) {
    const int64_t ch = t.size(dim) * inner;
    if (ch > 0) {
      keep.push_back(t.contiguous());
      src.push_back(keep.back().raw_data());
      chunk.push_back(ch);
      col.push_back(c);
    }
    c += ch;
  }
  if (dtype_size(first.dtype()) == 4)
    launch_cat<uint32_t>(out.raw_data(), src, chunk, col, outer, total * inner);
  else
    launch_cat<uint64_t>(out.raw_data(), src, chunk, col, outer, total * inner);
  return out;  // `keep` goes back to the cache now; the queued kernel still reads it (stream order)
}

}  // namespace ladnn::cuda
