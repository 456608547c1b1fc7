// cuda/allocator_common.cpp — the parts of cuda/allocator.h that need no GPU (size classes, byte
// formatting, Buffer's plumbing). Compiled in every build; the cache itself is cuda/allocator.cu (or
// cuda/ops_stub.cpp without the CUDA backend).
#include <cstdio>

#include "cuda/allocator.h"

namespace ladnn::cuda {

namespace {
constexpr std::size_t kMinBlock = 512;         // small requests round to this
constexpr std::size_t kSmallLimit = 1u << 20;  // up to 1 MiB: multiples of 512 B
constexpr std::size_t kPow2Limit = 32u << 20;  // up to 32 MiB: 4 steps per power of two
constexpr std::size_t kLargeStep = 2u << 20;   // beyond: multiples of 2 MiB

std::size_t round_up(std::size_t n, std::size_t step) {
  return (n + step - 1) / step * step;
}
}  // namespace

std::size_t round_size(std::size_t nbytes) {
  if (nbytes <= kSmallLimit) return nbytes == 0 ? kMinBlock : round_up(nbytes, kMinBlock);
  if (nbytes <= kPow2Limit) {
    // 2^k < n <= 2^(k+1): classes 2^k * {1.25, 1.5, 1.75, 2}, i.e. steps of 2^k / 4.
    const int k = 63 - __builtin_clzll(static_cast<unsigned long long>(nbytes - 1));
    return round_up(nbytes, std::size_t{1} << (k - 2));
  }
  return round_up(nbytes, kLargeStep);
}

std::string format_bytes(std::size_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024.0 && u < 4) {
    v /= 1024.0;
    ++u;
  }
  char buf[96];
  if (u == 0)
    std::snprintf(buf, sizeof buf, "%zu bytes", bytes);
  else
    std::snprintf(buf, sizeof buf, "%.2f %s (%zu bytes)", v, units[u], bytes);
  return buf;
}

Buffer::Buffer(std::size_t nbytes) : size_(nbytes) {
  if (nbytes > 0) ptr_ = allocate(nbytes);
}

Buffer& Buffer::operator=(Buffer&& o) noexcept {
  if (this != &o) {
    deallocate(ptr_);
    ptr_ = o.ptr_;
    size_ = o.size_;
    o.ptr_ = nullptr;
    o.size_ = 0;
  }
  return *this;
}

}  // namespace ladnn::cuda
