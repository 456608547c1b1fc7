// cuda/mma_tf32.cuh — the four PTX instructions cuda/fused_conv_mma.cuh is built from, each behind a
// small inline function, so that the kernel reads as C++ and tests/cuda_tile_emulation_test.cpp can
// supply host models of the same functions (it compiles the kernel with LADNN_TILE_EMULATION, where
// this file declares nothing but the shared-memory macro).
//
//   tf32_bits(x)          cvt.rna.tf32.f32: x rounded to TF32 (10 mantissa bits, to nearest, ties away),
//                         as the 32-bit register mma.sync reads
//   mma_tf32_16x8x8       mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32: d += a * b for one warp's
//                         16 x 8 tile, k = 8. Lane l holds, with g = l / 4 and t = l % 4 (PTX ISA,
//                         "Matrix fragments for mma.m16n8k8", .tf32):
//                           a[0] = A(g, t)   a[1] = A(g + 8, t)   a[2] = A(g, t + 4)   a[3] = A(g + 8, t + 4)
//                           b[0] = B(t, g)   b[1] = B(t + 4, g)
//                           d[0] = D(g, 2t)  d[1] = D(g, 2t + 1)  d[2] = D(g + 8, 2t)  d[3] = D(g + 8, 2t +
//                           1)
//   cp_async_16 / _8 / _4 cp.async: copy 16 (8, 4) bytes global -> shared without going through registers,
//                         or write zeros when `in` is false (src-size 0: nothing is read)
//   cp_async_commit       close the group of this thread's copies issued since the last commit
//   cp_async_wait<N>      wait until at most N of this thread's groups are still in flight
//   cp_async_vec<VEC>     one of the three copies by width (4, 2 or 1 floats), below the #endif: it is the
//                         same code under the emulator
// All need sm_80; below it the kernel that uses them is a trap (the launcher never runs it there).
#pragma once

#include <cstdint>

#ifdef LADNN_TILE_EMULATION
// The emulator hands every block one buffer of the launch's dynamic shared-memory size.
#define LADNN_DYNAMIC_SMEM(name) float* name = emu_dynamic_smem()
#else
#define LADNN_DYNAMIC_SMEM(name)              \
  extern __shared__ float4 name##_storage[]; \
  float* name = reinterpret_cast<float*>(name##_storage)

namespace ladnn::cuda {
namespace {

#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
__device__ __forceinline__ uint32_t tf32_bits(float x) {
  uint32_t u;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(u) : "f"(x));
  return u;
}

__device__ __forceinline__ void mma_tf32_16x8x8(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

__device__ __forceinline__ void cp_async_16(float* smem, const float* gmem, bool in) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(in ? 16 : 0));
}

__device__ __forceinline__ void cp_async_8(float* smem, const float* gmem, bool in) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;\n" ::"r"(s), "l"(gmem), "r"(in ? 8 : 0));
}

__device__ __forceinline__ void cp_async_4(float* smem, const float* gmem, bool in) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(s), "l"(gmem), "r"(in ? 4 : 0));
}

__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::);
}

template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
#else
__device__ __forceinline__ uint32_t tf32_bits(float) {
  __trap();
  return 0;
}
__device__ __forceinline__ void mma_tf32_16x8x8(float (&)[4], const uint32_t (&)[4], const uint32_t (&)[2]) {
  __trap();
}
__device__ __forceinline__ void cp_async_16(float*, const float*, bool) {
  __trap();
}
__device__ __forceinline__ void cp_async_8(float*, const float*, bool) {
  __trap();
}
__device__ __forceinline__ void cp_async_4(float*, const float*, bool) {
  __trap();
}
__device__ __forceinline__ void cp_async_commit() {
  __trap();
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  __trap();
}
#endif

}  // namespace
}  // namespace ladnn::cuda
#endif  // LADNN_TILE_EMULATION

namespace ladnn::cuda {
namespace {
/// cp_async_16, _8 or _4 by VEC (4, 2 or 1 floats): the kernels that copy rows as wide as their shape
/// allows take the width as a template parameter.
template <int VEC>
__device__ __forceinline__ void cp_async_vec(float* smem, const float* gmem, bool in) {
  static_assert(VEC == 4 || VEC == 2 || VEC == 1, "16-, 8- or 4-byte copies");
  if constexpr (VEC == 4) {
    cp_async_16(smem, gmem, in);
  } else if constexpr (VEC == 2) {
    cp_async_8(smem, gmem, in);
  } else {
    cp_async_4(smem, gmem, in);
  }
}
}  // namespace
}  // namespace ladnn::cuda
