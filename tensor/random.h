// tensor/random.h — the seeded generator and PyTorch's weight initialisations.
//
// One Generator per device (DESIGN.md): the same seed gives the same numbers on every run. The state
// can be saved and restored (checkpoints resume mid-run as if never stopped).
#pragma once

#include <cstdint>
#include <random>
#include <string>

#include "tensor/tensor.h"

namespace ladnn {

class Generator {
 public:
  explicit Generator(uint64_t seed = 0) : engine_(seed), seed_(seed) {}
  void seed(uint64_t s) {
    engine_.seed(s);
    seed_ = s;
  }
  uint64_t initial_seed() const { return seed_; }
  /// Uniform double in [0, 1).
  double uniform01();
  /// Standard normal (Box–Muller).
  double normal01();
  /// Uniform integer in [0, n).
  uint64_t below(uint64_t n);
  /// The full engine state as text (std::mt19937_64's stream form), and back.
  std::string state() const;
  void set_state(const std::string& state);

 private:
  std::mt19937_64 engine_;
  uint64_t seed_;
};

/// The process-wide CPU generator, seeded with 0 until `manual_seed` is called.
Generator& default_generator();
void manual_seed(uint64_t seed);

/// fan_in and fan_out as torch.nn.init computes them: dim 1 and dim 0 times the receptive field.
struct Fans {
  int64_t fan_in;
  int64_t fan_out;
};
Fans compute_fans(const Shape& shape);

enum class FanMode { FanIn, FanOut };

/// torch.nn.init.kaiming_uniform_(w, a, mode, nonlinearity='leaky_relu'):
/// bound = sqrt(3) * sqrt(2 / (1 + a^2)) / sqrt(fan).
Tensor kaiming_uniform(const Shape& shape, double a, Generator& gen, FanMode mode = FanMode::FanIn,
                       DType dtype = DType::Float32);
/// torch.nn.init.kaiming_normal_(w, a, mode, nonlinearity='leaky_relu'): std = sqrt(2/(1+a^2))/sqrt(fan).
Tensor kaiming_normal(const Shape& shape, double a, Generator& gen, FanMode mode = FanMode::FanIn,
                      DType dtype = DType::Float32);

}  // namespace ladnn
