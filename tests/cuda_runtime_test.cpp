// tests/cuda_runtime_test.cpp — device discovery and host<->device copies. Skips with the reason
// when no GPU is usable (CI has none); `ladnn info` prints the same reason.
#include <gtest/gtest.h>

#include "cuda/runtime.h"
#include "tensor/random.h"

using namespace ladnn;

TEST(CudaRuntime, ReportsWhyNoDeviceIsUsable) {
  if (cuda::available()) {
    EXPECT_TRUE(cuda::unavailable_reason().empty());
    EXPECT_GE(cuda::device_count(), 1);
  } else {
    EXPECT_FALSE(cuda::unavailable_reason().empty());
    EXPECT_EQ(cuda::device_count(), 0);
    EXPECT_THROW(Tensor::zeros({2}, DType::Float32, Device::cuda()), std::runtime_error);
  }
}

TEST(CudaRuntime, TensorRoundTripThroughTheDevice) {
  if (!cuda::available()) GTEST_SKIP() << "no GPU: " << cuda::unavailable_reason();
  cuda::DeviceInfo info = cuda::device_info(0);
  EXPECT_FALSE(info.name.empty());
  EXPECT_GT(info.total_memory, 0u);
  Generator g(5);
  Tensor host = Tensor::normal({3, 5, 7}, 0, 1, g);
  Tensor dev = host.to(Device::cuda());
  EXPECT_TRUE(dev.device().is_cuda());
  Tensor back = dev.to(Device::cpu());
  EXPECT_EQ(back.to_vector(), host.to_vector());
  // A strided view is made contiguous on the way.
  Tensor t = host.transpose(0, 2).to(Device::cuda()).to(Device::cpu());
  EXPECT_EQ(t.to_vector(), host.transpose(0, 2).to_vector());
}
