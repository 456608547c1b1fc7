// tests/tensor_test.cpp — Tensor: creation, geometry, views, copies, printing, errors; Generator.
#include <gtest/gtest.h>

#include <cmath>

#include "tensor/ops.h"
#include "tensor/random.h"
#include "tensor/tensor.h"
#include "tests/test_util.h"

using namespace ladnn;

TEST(Tensor, CreationFillsValues) {
  Tensor z = Tensor::zeros({2, 3});
  EXPECT_EQ(z.shape(), (Shape{2, 3}));
  EXPECT_EQ(z.dtype(), DType::Float32);
  for (double v : z.to_vector()) EXPECT_EQ(v, 0.0);
  for (double v : Tensor::ones({4}, DType::Float64).to_vector()) EXPECT_EQ(v, 1.0);
  for (double v : Tensor::full({2, 2}, -2.5).to_vector()) EXPECT_EQ(v, -2.5);
  EXPECT_EQ(Tensor::arange(0, 5).to_vector(), (std::vector<double>{0, 1, 2, 3, 4}));
  EXPECT_EQ(Tensor::arange(1, 2, 0.25, DType::Float64).to_vector(),
            (std::vector<double>{1, 1.25, 1.5, 1.75}));
  Tensor d = Tensor::from_vector({1, 2, 3, 4, 5, 6}, {2, 3}, DType::Float64);
  EXPECT_EQ(d.at({1, 2}), 6.0);
  EXPECT_EQ(d.at({0, 1}), 2.0);
  const int64_t raw[3] = {7, -1, 9};
  Tensor i = Tensor::from_data(raw, {3});
  EXPECT_EQ(i.dtype(), DType::Int64);
  EXPECT_EQ(i.to_vector(), (std::vector<double>{7, -1, 9}));
}

TEST(Tensor, ZeroDimAndEmpty) {
  Tensor s = Tensor::full({}, 3.0);
  EXPECT_EQ(s.dim(), 0);
  EXPECT_EQ(s.numel(), 1);
  EXPECT_EQ(s.item(), 3.0);
  Tensor e = Tensor::zeros({0, 4});
  EXPECT_EQ(e.numel(), 0);
  EXPECT_TRUE(e.to_vector().empty());
}

TEST(Tensor, ReshapeViewsShareStorage) {
  Tensor a = Tensor::arange(0, 24).reshape({2, 3, 4});
  Tensor b = a.view({6, -1});
  EXPECT_EQ(b.shape(), (Shape{6, 4}));
  EXPECT_TRUE(b.shares_storage(a));
  b.data<float>()[5] = 100.f;
  EXPECT_EQ(a.at({0, 1, 1}), 100.0);
  EXPECT_EQ(a.flatten().shape(), (Shape{24}));
  EXPECT_EQ(a.flatten(1).shape(), (Shape{2, 12}));
  EXPECT_EQ(a.flatten(0, 1).shape(), (Shape{6, 4}));
  EXPECT_EQ(a.unsqueeze(0).shape(), (Shape{1, 2, 3, 4}));
  EXPECT_EQ(a.unsqueeze(-1).shape(), (Shape{2, 3, 4, 1}));
}

TEST(Tensor, NarrowIsAChannelSliceView) {
  // (N=2, C=4, H=1, W=2): channel c of image n holds 10*n + c in both pixels.
  std::vector<double> v;
  for (int n = 0; n < 2; ++n)
    for (int c = 0; c < 4; ++c) v.insert(v.end(), {10.0 * n + c, 10.0 * n + c});
  Tensor x = Tensor::from_vector(v, {2, 4, 1, 2});
  Tensor s = x.narrow(1, 1, 2);
  EXPECT_EQ(s.shape(), (Shape{2, 2, 1, 2}));
  EXPECT_TRUE(s.shares_storage(x));
  EXPECT_FALSE(s.is_contiguous());
  EXPECT_EQ(s.to_vector(), (std::vector<double>{1, 1, 2, 2, 11, 11, 12, 12}));
  s.fill_(-1);
  EXPECT_EQ(x.at({1, 2, 0, 1}), -1.0);
  EXPECT_EQ(x.at({1, 3, 0, 1}), 13.0);
  Tensor c = s.contiguous();
  EXPECT_TRUE(c.is_contiguous());
  EXPECT_FALSE(c.shares_storage(x));
}

TEST(Tensor, TransposeAndReshapeCopiesWhenNeeded) {
  Tensor a = Tensor::from_vector({1, 2, 3, 4, 5, 6}, {2, 3});
  Tensor t = a.transpose(0, 1);
  EXPECT_EQ(t.shape(), (Shape{3, 2}));
  EXPECT_EQ(t.to_vector(), (std::vector<double>{1, 4, 2, 5, 3, 6}));
  EXPECT_THROW(t.view({6}), std::invalid_argument);
  Tensor r = t.reshape({6});
  EXPECT_FALSE(r.shares_storage(a));
  EXPECT_EQ(r.to_vector(), (std::vector<double>{1, 4, 2, 5, 3, 6}));
}

TEST(Tensor, CopyConvertsDtypeAndStrides) {
  Tensor a = Tensor::from_vector({1.5, -2.25, 3, 4}, {2, 2}, DType::Float64);
  Tensor f = a.to(DType::Float32);
  EXPECT_EQ(f.dtype(), DType::Float32);
  EXPECT_EQ(f.to_vector(), a.to_vector());
  Tensor dst = Tensor::zeros({2, 2});
  dst.copy_(a.transpose(0, 1));
  EXPECT_EQ(dst.to_vector(), (std::vector<double>{1.5, 3, -2.25, 4}));
  Tensor c = a.clone();
  c.fill_(0);
  EXPECT_EQ(a.at({0, 0}), 1.5);  // clone does not share
}

TEST(Tensor, ErrorsNameTheShape) {
  Tensor a = Tensor::zeros({2, 3});
  try {
    a.view({4, 2});
    FAIL() << "view to a wrong size must throw";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("(2, 3)"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("(4, 2)"), std::string::npos) << e.what();
  }
  EXPECT_THROW(a.view({-1, -1}), std::invalid_argument);
  EXPECT_THROW(a.narrow(1, 2, 2), std::invalid_argument);
  EXPECT_THROW(a.size(2), std::invalid_argument);
  EXPECT_THROW(a.transpose(0, 5), std::invalid_argument);
  EXPECT_THROW(a.item(), std::invalid_argument);
  EXPECT_THROW(a.data<double>(), std::invalid_argument);
  EXPECT_THROW(Tensor::from_vector({1, 2, 3}, {2, 2}), std::invalid_argument);
  EXPECT_THROW(Tensor::zeros({2, -1}), std::invalid_argument);
  EXPECT_THROW(Tensor::zeros({3}).copy_(Tensor::zeros({4})), std::invalid_argument);
  EXPECT_THROW(Tensor().shape().at(0), std::out_of_range);
  EXPECT_THROW(Tensor().device(), std::logic_error);
}

TEST(Tensor, PrintsLikePyTorch) {
  Tensor a = Tensor::from_vector({1, 2, 3, 4}, {2, 2});
  EXPECT_EQ(a.str(), "tensor([[1.0000, 2.0000],\n        [3.0000, 4.0000]], dtype=float32)");
  EXPECT_EQ(Tensor::full({}, 2.0, DType::Float64).str(), "tensor(2.0000, dtype=float64)");
  std::string big = Tensor::zeros({5000}).str();
  EXPECT_NE(big.find("..."), std::string::npos);
  EXPECT_LT(big.size(), 200u);
}

TEST(Generator, SeededAndRestorable) {
  Generator g1(42), g2(42), g3(43);
  Tensor a = Tensor::normal({100}, 0, 1, g1);
  Tensor b = Tensor::normal({100}, 0, 1, g2);
  Tensor c = Tensor::normal({100}, 0, 1, g3);
  EXPECT_EQ(a.to_vector(), b.to_vector());
  EXPECT_NE(a.to_vector(), c.to_vector());
  std::string state = g1.state();
  double next = g1.uniform01();
  g2.set_state(state);
  EXPECT_EQ(g2.uniform01(), next);
  EXPECT_THROW(g2.set_state("not a state"), std::invalid_argument);
}

TEST(Generator, DistributionsHaveTheRightMoments) {
  Generator g(7);
  std::vector<double> u = Tensor::uniform({200000}, -2, 4, g, DType::Float64).to_vector();
  std::vector<double> n = Tensor::normal({200000}, 1.5, 3, g, DType::Float64).to_vector();
  auto moments = [](const std::vector<double>& v) {
    double m = 0, s = 0;
    for (double x : v) m += x;
    m /= v.size();
    for (double x : v) s += (x - m) * (x - m);
    return std::make_pair(m, std::sqrt(s / v.size()));
  };
  auto [um, us] = moments(u);
  auto [nm, ns] = moments(n);
  // Standard errors over 2e5 samples are ~0.004 (uniform) and ~0.007 (normal); 5 sigma margins.
  EXPECT_NEAR(um, 1.0, 0.02);
  EXPECT_NEAR(us, 6 / std::sqrt(12.0), 0.02);
  EXPECT_NEAR(nm, 1.5, 0.035);
  EXPECT_NEAR(ns, 3.0, 0.035);
  for (double x : u) ASSERT_TRUE(x >= -2 && x < 4);
}

TEST(Init, KaimingBoundsFollowTorch) {
  Generator g(1);
  // Conv weight (out 16, in 8, 3x3): fan_in 72, fan_out 144.
  Fans f = compute_fans({16, 8, 3, 3});
  EXPECT_EQ(f.fan_in, 72);
  EXPECT_EQ(f.fan_out, 144);
  // a = sqrt(5) (PyTorch's Conv2d default) gives bound 1/sqrt(fan_in).
  Tensor w = kaiming_uniform({16, 8, 3, 3}, std::sqrt(5.0), g);
  double bound = 1.0 / std::sqrt(72.0), mx = 0;
  for (double v : w.to_vector()) mx = std::max(mx, std::fabs(v));
  EXPECT_LE(mx, bound);
  EXPECT_GT(mx, 0.95 * bound);
  // kaiming_normal (a = 0, fan_in): std sqrt(2 / fan_in).
  Tensor k = kaiming_normal({64, 128, 3, 3}, 0.0, g, FanMode::FanIn, DType::Float64);
  double s = 0;
  for (double v : k.to_vector()) s += v * v;
  EXPECT_NEAR(std::sqrt(s / k.numel()), std::sqrt(2.0 / 1152), 0.01 * std::sqrt(2.0 / 1152));
  EXPECT_THROW(compute_fans({5}), std::invalid_argument);
}

TEST(Increment, CountsInPlaceAndRefusesWhatIsNotACounter) {
  Tensor c = Tensor::zeros({}, DType::Int64);
  ops::increment_(c);
  ops::increment_(c);
  EXPECT_EQ(c.item(), 2.0);
  Tensor f = Tensor::zeros({3});
  EXPECT_THROW_WITH(ops::increment_(f), "increment_", "Int64", "float32");
  Tensor t = Tensor::zeros({2, 3}, DType::Int64).transpose(0, 1);
  EXPECT_THROW_WITH(ops::increment_(t), "increment_", "contiguous");
}

// increment_all_: each counter + 1 (any size, empty ones too); every tensor checked before any changes.
TEST(Increment, AllCountersInOneCall) {
  Tensor a = Tensor::zeros({}, DType::Int64), b = Tensor::from_vector({5, -3, 7}, {3}, DType::Int64);
  Tensor e = Tensor::zeros({0}, DType::Int64);
  ops::increment_all_({a, b, e});
  ops::increment_all_({a, b});
  ops::increment_all_({});
  EXPECT_EQ(a.item(), 2.0);
  EXPECT_EQ(b.to_vector(), (std::vector<double>{7, -1, 9}));
  Tensor f = Tensor::zeros({3});
  EXPECT_THROW_WITH(ops::increment_all_({a, f}), "increment_all_", "counter 1", "Int64", "float32");
  EXPECT_EQ(a.item(), 2.0) << "nothing changes when a counter is refused";
  Tensor t = Tensor::zeros({2, 3}, DType::Int64).transpose(0, 1);
  EXPECT_THROW_WITH(ops::increment_all_({t}), "increment_all_", "counter 0", "contiguous");
}

TEST(CpuMemoryStats, CountLiveBytesAndThePeak) {
  const CpuMemoryStats before = cpu_memory_stats();
  reset_cpu_memory_peak();
  {
    Tensor a = Tensor::zeros({1000});  // 4000 bytes
    Tensor b = Tensor::zeros({500}, DType::Float64);  // 4000 bytes
    EXPECT_EQ(cpu_memory_stats().live_bytes, before.live_bytes + 8000);
  }
  EXPECT_EQ(cpu_memory_stats().live_bytes, before.live_bytes);
  EXPECT_GE(cpu_memory_stats().peak_bytes, before.live_bytes + 8000);
  reset_cpu_memory_peak();
  EXPECT_EQ(cpu_memory_stats().peak_bytes, before.live_bytes);
}
