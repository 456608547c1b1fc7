// tests/cuda_runtime_test.cpp — device discovery and host<->device copies. Skips with the reason
// when no GPU is usable (CI has none); `ladnn info` prints the same reason.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "cuda/runtime.h"
#include "tensor/ops.h"
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
    EXPECT_THROW(cuda::PinnedBuffer(64), std::runtime_error);
    EXPECT_THROW(cuda::StreamEvent(), std::runtime_error);
    float host[4] = {};
    EXPECT_THROW(cuda::copy_async(host, Device::cpu(), host + 2, Device::cuda(), 8), std::runtime_error);
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

// Pinned memory and queued copies (what GraphedTrainStep's pipeline is made of): a round trip through
// the device with the host waiting only on the event; pageable host memory and host-to-host copies are
// refused with a sentence.
TEST(CudaRuntime, QueuedCopiesThroughPinnedMemory) {
  if (!cuda::available()) GTEST_SKIP() << "no GPU: " << cuda::unavailable_reason();
  const int64_t n = 1 << 16;
  Generator g(6);
  const Tensor host = Tensor::normal({n}, 0, 1, g);
  cuda::PinnedBuffer in(n * sizeof(float)), out(n * sizeof(float));
  ASSERT_NE(in.data(), nullptr);
  EXPECT_EQ(in.size(), static_cast<std::size_t>(n) * sizeof(float));
  std::memcpy(in.data(), host.data<float>(), in.size());
  Tensor dev = Tensor::empty({n}, DType::Float32, Device::cuda());
  cuda::StreamEvent done;
  done.wait();  // never recorded: returns at once
  cuda::copy_async(dev.raw_data(), Device::cuda(), in.data(), Device::cpu(), in.size());
  ops::mul_scalar_(dev, 2.0);
  cuda::copy_async(out.data(), Device::cpu(), dev.raw_data(), Device::cuda(), out.size());
  done.record();
  done.wait();
  const float* o = static_cast<const float*>(out.data());
  const float* h = host.data<float>();
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(o[i], 2.0f * h[i]) << i;

  // Moves hand the buffer over.
  cuda::PinnedBuffer moved = std::move(in);
  EXPECT_EQ(in.data(), nullptr);
  EXPECT_EQ(moved.size(), out.size());

  std::vector<float> pageable(16);
  try {
    cuda::copy_async(dev.raw_data(), Device::cuda(), pageable.data(), Device::cpu(), 64);
    FAIL() << "a pageable source was accepted";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("not pinned"), std::string::npos) << e.what();
  }
  EXPECT_THROW(cuda::copy_async(out.data(), Device::cpu(), moved.data(), Device::cpu(), 64), std::runtime_error);
}
