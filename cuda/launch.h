// cuda/launch.h — how every hand-written kernel is launched, and the one statement each begins with.
//
// A replayed DenseNet-169 training step is ~1,600 kernels in one stream, each waiting for the one
// before it: the GPU drains a kernel's last blocks, makes its writes visible, then starts fetching and
// scheduling the next one's. At batch 1 that step takes ~6 us a node on an H200 (GPU run 7), most of
// it not arithmetic. Programmatic dependent launch (PDL, compute capability 9.0+) lets the next kernel's
// blocks be scheduled while the current one still runs; they then wait, in the kernel, for the data:
//
//   host    launch_kernel(kernel, grid, block, smem, stream, args...) — cudaLaunchKernelEx, with
//           cudaLaunchAttributeProgrammaticStreamSerialization when cuda::programmatic_launch() is on
//           (LADNN_PDL=1) and the device is sm_90 or newer; without it, exactly a <<<...>>> launch.
//   device  pdl_enter(), the first statement of every __global__ function in cuda/ (a CPU test reads
//           the sources and fails on a kernel without it, or on a <<<...>>> launch):
//             griddepcontrol.wait               wait until the grid before this one has completed and
//                                               its writes are visible (at once when this grid was
//                                               launched without the attribute);
//             griddepcontrol.launch_dependents  from now on the next grid may be scheduled: once every
//                                               block of this grid has said so, its blocks take the SM
//                                               slots this grid frees and wait in their own pdl_enter().
//
// Why first, in every kernel, before any early return: a block that read its inputs before the wait
// could read what the previous kernel has not written yet; one that wrote before it could overwrite
// memory the previous kernel still reads (the caching allocator hands a freed block to the next op,
// stream-ordered); and a grid whose blocks all skipped the wait could complete before the grid before
// it, so that the next grid, which waits only on its own predecessor, would read unfinished data.
// Triggering only after the wait keeps at most two grids resident: the one running and the next,
// waiting. Library kernels (cuDNN, cuBLAS) launch as they always do; a kernel of ours after one of theirs
// waits for it to complete all the same.
#pragma once

namespace ladnn::cuda {

/// The first statement of every kernel (see above). A no-op below sm_90 and on the host (the tile
/// emulator compiles the kernels as host code).
__device__ __forceinline__ void pdl_enter() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

}  // namespace ladnn::cuda

#if defined(__CUDACC__)
#include <cuda_runtime.h>

#include <cstddef>
#include <string>
#include <utility>

#include "cuda/check.h"
#include "cuda/context.h"
#include "cuda/runtime.h"

namespace ladnn::cuda {

/// True when the code this device runs for our kernels was compiled for compute capability 9.0 or newer
/// (cudaFuncGetAttributes' ptxVersion of a probe kernel in cuda/runtime.cu; every .cu file is compiled for
/// the same architectures): only then does pdl_enter() hold the griddepcontrol.wait that makes the
/// attribute safe. A build for sm_80 run on an H100 (its PTX compiled at load) has kernels that would not
/// wait, so they launch without the attribute. Read once.
bool kernels_wait_for_pdl();

/// Whether launch_kernel() sets the programmatic attribute now: the switch, on a device that has PDL,
/// with kernels compiled to wait for it.
inline bool launch_programmatic() {
  return programmatic_launch() && compute_capability() >= 90 && kernels_wait_for_pdl();
}

/// Throws cuda::Error naming the kernel (cudaFuncGetName), its launch shape and the status.
[[noreturn]] inline void launch_failed(const void* kernel, dim3 grid, dim3 block, std::size_t smem,
                                       cudaError_t status) {
  const char* name = nullptr;
  if (cudaFuncGetName(&name, kernel) != cudaSuccess || name == nullptr) name = "(unnamed kernel)";
  cudaGetLastError();  // the failed launch's status is reported here; do not leave it for the next check
  throw Error(std::string("launching ") + name + " on grid (" + std::to_string(grid.x) + ", " +
              std::to_string(grid.y) + ", " + std::to_string(grid.z) + "), block (" +
              std::to_string(block.x) + ", " + std::to_string(block.y) + ", " + std::to_string(block.z) +
              "), " + std::to_string(smem) +
              " bytes of dynamic shared memory: " + cudaGetErrorString(status));
}

/// kernel<<<grid, block, smem, stream>>>(args...) in clusters of `cluster_x` blocks along x (Hopper thread
/// block clusters; 1: none, an ordinary launch; grid.x a multiple of it), with programmatic dependent launch
/// when launch_programmatic(); the launch's status is checked (cuda::Error naming the kernel).
template <typename... Params, typename... Args>
void launch_kernel_clustered(unsigned cluster_x, void (*kernel)(Params...), dim3 grid, dim3 block,
                             std::size_t smem, cudaStream_t stream, Args&&... args) {
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attributes[2] = {};
  unsigned n = 0;
  if (launch_programmatic()) {
    attributes[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attributes[n].val.programmaticStreamSerializationAllowed = 1;
    ++n;
  }
  if (cluster_x > 1) {
    attributes[n].id = cudaLaunchAttributeClusterDimension;
    attributes[n].val.clusterDim.x = cluster_x;
    attributes[n].val.clusterDim.y = 1;
    attributes[n].val.clusterDim.z = 1;
    ++n;
  }
  config.attrs = n > 0 ? attributes : nullptr;
  config.numAttrs = n;
  const cudaError_t status = cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
  if (status != cudaSuccess) launch_failed(reinterpret_cast<const void*>(kernel), grid, block, smem, status);
}

/// kernel<<<grid, block, smem, stream>>>(args...), or the same with programmatic dependent launch
/// (launch_programmatic()); the launch's status is checked (cuda::Error naming the kernel and its shape).
template <typename... Params, typename... Args>
void launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, std::size_t smem, cudaStream_t stream,
                   Args&&... args) {
  launch_kernel_clustered(1, kernel, grid, block, smem, stream, std::forward<Args>(args)...);
}

}  // namespace ladnn::cuda
#endif
