// tensor/cpu/join.cpp — cat and split.
//
// cat views the output as (outer, size(dim) * inner) rows, where outer is the product of the sizes
// before `dim` and inner of those after it; part i fills columns [offset_i * inner, (offset_i +
// size_i) * inner) of every row with one memcpy. DenseNet joins NCHW feature maps along channels, so a
// row is one image and a part's chunk is its C_i * H * W contiguous values.
// split returns views (Tensor::narrow): no copy, the pieces share the input's storage.
// Both are pure data movement, so every dtype (Int64 too) is accepted. cat of CUDA tensors runs
// cuda::cat (cuda/join.cu) after the same checks; split's views serve every device.
#include <cstring>
#include <string>

#include "cuda/ops.h"
#include "tensor/ops.h"

namespace ladnn::ops {
namespace {

// Below this many bytes per part the OpenMP fork/join costs more than the copy.
constexpr int64_t kParallelMinBytes = 1 << 20;

char* byte_ptr(const Tensor& t) {
  return static_cast<char*>(t.storage()->data()) + t.offset() * static_cast<int64_t>(dtype_size(t.dtype()));
}

std::string dim_error(const char* op, int64_t dim, const Shape& shape) {
  return std::string(op) + ": dimension " + std::to_string(dim) + " is out of range for shape " +
         shape_str(shape) + " (expected " + std::to_string(-static_cast<int64_t>(shape.size())) + " to " +
         std::to_string(static_cast<int64_t>(shape.size()) - 1) + ")";
}

}  // namespace

Tensor cat(const std::vector<Tensor>& parts, int64_t dim) {
  check(!parts.empty(), "cat: expected at least one tensor, got an empty list");
  for (std::size_t i = 0; i < parts.size(); ++i)
    check(parts[i].defined(), "cat: part " + std::to_string(i) + " is undefined");
  const Tensor& first = parts[0];
  const int64_t nd = first.dim();
  check(nd > 0, "cat: part 0 is 0-d (shape ()); cat needs tensors with at least one dimension");
  check(dim >= -nd && dim < nd, dim_error("cat", dim, first.shape()));
  if (dim < 0) dim += nd;

  int64_t total = 0;
  for (std::size_t i = 0; i < parts.size(); ++i) {
    const Tensor& t = parts[i];
    const std::string part = "cat: part " + std::to_string(i) + " has shape " + shape_str(t.shape()) +
                             " but part 0 has shape " + shape_str(first.shape());
    check(t.dim() == nd, part + "; all parts must have the same number of dimensions");
    for (int64_t d = 0; d < nd; ++d)
      check(d == dim || t.size(d) == first.size(d),
            part + "; sizes must match except in dimension " + std::to_string(dim));
    check(t.dtype() == first.dtype(), "cat: part " + std::to_string(i) + " is " + dtype_name(t.dtype()) +
                                          " but part 0 is " + dtype_name(first.dtype()));
    check(t.device() == first.device(), "cat: part " + std::to_string(i) + " is on " + t.device().str() +
                                            " but part 0 is on " + first.device().str());
    total += t.size(dim);
  }
  if (first.device().is_cuda()) return cuda::cat(parts, dim);

  Shape out_shape = first.shape();
  out_shape[dim] = total;
  Tensor out = Tensor::empty(out_shape, first.dtype(), first.device());
  if (out.numel() == 0) return out;

  const int64_t esize = static_cast<int64_t>(dtype_size(first.dtype()));
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < dim; ++d) outer *= out_shape[d];
  for (int64_t d = dim + 1; d < nd; ++d) inner *= out_shape[d];
  const int64_t out_row = total * inner * esize;  // bytes per output row
  char* dst = byte_ptr(out);

  int64_t col = 0;  // byte offset of the current part within a row
  for (const Tensor& t : parts) {
    const int64_t chunk = t.size(dim) * inner * esize;  // bytes this part writes per row
    if (chunk > 0) {
      const Tensor tc = t.contiguous();
      const char* src = byte_ptr(tc);
#pragma omp parallel for schedule(static) if (outer > 1 && outer * chunk >= kParallelMinBytes)
      for (int64_t o = 0; o < outer; ++o) std::memcpy(dst + o * out_row + col, src + o * chunk, chunk);
    }
    col += chunk;
  }
  return out;
}

std::vector<Tensor> split(const Tensor& a, const std::vector<int64_t>& sizes, int64_t dim) {
  check(a.defined(), "split: input is undefined");
  const int64_t nd = a.dim();
  check(nd > 0, "split: input is 0-d (shape ()); split needs at least one dimension");
  check(dim >= -nd && dim < nd, dim_error("split", dim, a.shape()));
  if (dim < 0) dim += nd;
  int64_t total = 0;
  std::string list;
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    list += (i ? ", " : "") + std::to_string(sizes[i]);
    total += sizes[i];
  }
  for (int64_t s : sizes)
    check(s >= 0, "split: sizes (" + list + ") contain a negative size (input " + shape_str(a.shape()) + ")");
  check(total == a.size(dim), "split: sizes (" + list + ") add up to " + std::to_string(total) +
                                  " but dimension " + std::to_string(dim) + " of input " +
                                  shape_str(a.shape()) + " has size " + std::to_string(a.size(dim)));
  std::vector<Tensor> pieces;
  pieces.reserve(sizes.size());
  int64_t start = 0;
  for (int64_t s : sizes) {
    pieces.push_back(a.narrow(dim, start, s));
    start += s;
  }
  return pieces;
}

}  // namespace ladnn::ops
