// tensor/random.cpp — Generator and the kaiming initialisations.
#include "tensor/random.h"

#include <cmath>
#include <sstream>

namespace ladnn {

double Generator::uniform01() {
  // 53 random bits -> a double in [0, 1), the same on every platform (std::uniform_real_distribution
  // is implementation-defined; this is not).
  return static_cast<double>(engine_() >> 11) * 0x1.0p-53;
}

double Generator::normal01() {
  // Box–Muller on two uniforms; 1 - u keeps the log argument in (0, 1].
  double u1 = 1.0 - uniform01();
  double u2 = uniform01();
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2);
}

uint64_t Generator::below(uint64_t n) {
  check(n > 0, "Generator::below: n must be positive");
  // Rejection sampling removes the modulo bias.
  uint64_t limit = UINT64_MAX - UINT64_MAX % n;
  uint64_t x;
  do x = engine_();
  while (x >= limit);
  return x % n;
}

std::string Generator::state() const {
  std::ostringstream os;
  os << seed_ << ' ' << engine_;
  return os.str();
}

void Generator::set_state(const std::string& state) {
  std::istringstream is(state);
  uint64_t seed = 0;
  std::mt19937_64 engine;
  is >> seed >> engine;
  check(!is.fail(), "Generator::set_state: the text is not a saved generator state");
  seed_ = seed;
  engine_ = engine;
}

Generator& default_generator() {
  static Generator gen(0);
  return gen;
}

void manual_seed(uint64_t seed) { default_generator().seed(seed); }

Fans compute_fans(const Shape& shape) {
  check(shape.size() >= 2, "compute_fans: fan in/out need a tensor of at least 2 dims, got " +
                               shape_str(shape));
  int64_t receptive = 1;
  for (size_t i = 2; i < shape.size(); ++i) receptive *= shape[i];
  return {shape[1] * receptive, shape[0] * receptive};
}

static double kaiming_std(const Shape& shape, double a, FanMode mode) {
  Fans f = compute_fans(shape);
  int64_t fan = mode == FanMode::FanIn ? f.fan_in : f.fan_out;
  check(fan > 0, "kaiming init: zero fan for shape " + shape_str(shape));
  double gain = std::sqrt(2.0 / (1.0 + a * a));
  return gain / std::sqrt(static_cast<double>(fan));
}

Tensor kaiming_uniform(const Shape& shape, double a, Generator& gen, FanMode mode, DType dtype) {
  double bound = std::sqrt(3.0) * kaiming_std(shape, a, mode);
  return Tensor::uniform(shape, -bound, bound, gen, dtype);
}

Tensor kaiming_normal(const Shape& shape, double a, Generator& gen, FanMode mode, DType dtype) {
  return Tensor::normal(shape, 0.0, kaiming_std(shape, a, mode), gen, dtype);
}

}  // namespace ladnn
