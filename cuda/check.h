// cuda/check.h — throwing status checks for every CUDA, cuDNN and cuBLAS call (STYLE.md habit 4).
//
//   CUDA_CHECK(cudaMemcpyAsync(...));   // throws ladnn::cuda::Error("cudaMemcpyAsync(...) failed at
//                                       //   cuda/runtime.cu:42: invalid argument")
//   launch_kernel(kernel, grid, block, 0, stream, ...);  // cuda/launch.h: throws naming the kernel
//   CUDA_CHECK_LAUNCH();                                 // and any earlier asynchronous error, here
#pragma once

#include <stdexcept>
#include <string>

#include <cuda_runtime.h>

namespace ladnn::cuda {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

inline std::string failure(const char* expr, const char* file, int line, const char* what) {
  return std::string(expr) + " failed at " + file + ":" + std::to_string(line) + ": " + what;
}

}  // namespace ladnn::cuda

#define CUDA_CHECK(expr)                                                                         \
  do {                                                                                           \
    cudaError_t ladnn_status_ = (expr);                                                          \
    if (ladnn_status_ != cudaSuccess)                                                            \
      throw ::ladnn::cuda::Error(                                                                \
          ::ladnn::cuda::failure(#expr, __FILE__, __LINE__, cudaGetErrorString(ladnn_status_))); \
  } while (0)

/// After every launch: reports at the launch site an error an earlier asynchronous call left behind.
#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())

// cuDNN and cuBLAS statuses, checked the same way. Included only by .cu files (and .cpp files built
// with the CUDA backend), since they need the libraries' headers.
#if defined(LADNN_CHECK_CUDNN)
#include <cudnn.h>
#define CUDNN_CHECK(expr)                                                                           \
  do {                                                                                              \
    cudnnStatus_t ladnn_status_ = (expr);                                                           \
    if (ladnn_status_ != CUDNN_STATUS_SUCCESS)                                                      \
      throw ::ladnn::cuda::Error(                                                                   \
          ::ladnn::cuda::failure(#expr, __FILE__, __LINE__, cudnnGetErrorString(ladnn_status_)));   \
  } while (0)
#endif

#if defined(LADNN_CHECK_CUBLAS)
#include <cublas_v2.h>
#define CUBLAS_CHECK(expr)                                                                          \
  do {                                                                                              \
    cublasStatus_t ladnn_status_ = (expr);                                                          \
    if (ladnn_status_ != CUBLAS_STATUS_SUCCESS)                                                     \
      throw ::ladnn::cuda::Error(                                                                   \
          ::ladnn::cuda::failure(#expr, __FILE__, __LINE__, cublasGetStatusString(ladnn_status_))); \
  } while (0)
#endif
