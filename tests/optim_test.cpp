// tests/optim_test.cpp — SGD, Adam and AdamW against hand-written float64 references of torch.optim's
// update rules on a small quadratic; state dicts that resume a run exactly; LR schedules against
// torch's recursive (chainable) formulas.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "autograd/functions.h"
#include "optim/adam.h"
#include "optim/lr_schedule.h"
#include "optim/sgd.h"
#include "tensor/ops.h"
#include "tests/test_util.h"

using namespace ladnn;

namespace {

template <typename Fn>
std::string error_of(Fn&& fn) {
  try {
    fn();
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected std::invalid_argument";
  return "";
}

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

// ---- the problem ----------------------------------------------------------------------------------
// Three parameters: p0 (2, 3) and p1 (4) in the loss 0.5 * sum(a * (p - c)^2), whose gradient is
// a * (p - c); p1 only takes part on even steps (so its step count lags, as torch's per-parameter
// state does); p2 (3) never gets a gradient and must stay untouched and stateless.
struct Problem {
  std::vector<Shape> shapes{{2, 3}, {4}, {3}};
  std::vector<std::vector<double>> init, a, c;
  explicit Problem(uint64_t seed) {
    Generator g(seed);
    for (const Shape& s : shapes) {
      const int64_t n = shape_numel(s);
      std::vector<double> p0(n), ai(n), ci(n);
      for (int64_t k = 0; k < n; ++k) {
        p0[k] = 2.0 * g.uniform01() - 1.0;
        ai[k] = 0.5 + 2.0 * g.uniform01();  // curvatures in [0.5, 2.5]
        ci[k] = 3.0 + g.uniform01();        // minima far from the start: gradients stay O(1)
      }
      init.push_back(p0);
      a.push_back(ai);
      c.push_back(ci);
    }
  }
  static bool in_loss(std::size_t i, int step) { return i == 0 || (i == 1 && step % 2 == 0); }
};

std::vector<Variable> make_params(const Problem& pr, DType dtype) {
  std::vector<Variable> out;
  for (std::size_t i = 0; i < pr.shapes.size(); ++i)
    out.emplace_back(Tensor::from_vector(pr.init[i], pr.shapes[i], dtype), true);
  return out;
}

// `values` as a tensor of `dtype` stores them (rounded to float32 where that is the dtype).
std::vector<double> stored(const std::vector<double>& values, DType dtype) {
  return Tensor::from_vector(values, {static_cast<int64_t>(values.size())}, dtype).to_vector();
}

// One forward/backward of the quadratic with ladnn's autograd (step counts from 1).
void compute_grads(const Problem& pr, std::vector<Variable>& params, int step) {
  for (Variable& p : params) p.zero_grad();
  Variable loss;
  for (std::size_t i = 0; i < params.size(); ++i) {
    if (!Problem::in_loss(i, step)) continue;
    Variable a(Tensor::from_vector(pr.a[i], pr.shapes[i], params[i].dtype()));
    Variable c(Tensor::from_vector(pr.c[i], pr.shapes[i], params[i].dtype()));
    Variable d = params[i] - c;
    Variable term = mul_scalar(sum(a * d * d), 0.5);
    loss = loss.defined() ? loss + term : term;
  }
  loss.backward();
}

// ---- float64 references of torch.optim's rules, written from the torch source ------------------------
struct RefState {
  std::vector<double> p, buf, m, v;
  int64_t t = 0;
};

struct SGDConfig {
  double lr, momentum, dampening, weight_decay;
  bool nesterov;
};

void ref_sgd_step(RefState& s, const std::vector<double>& g, const SGDConfig& cfg) {
  const std::size_t n = s.p.size();
  std::vector<double> d(n);
  for (std::size_t k = 0; k < n; ++k) d[k] = g[k] + cfg.weight_decay * s.p[k];
  if (cfg.momentum != 0.0) {
    if (s.buf.empty()) {
      s.buf = d;
    } else {
      for (std::size_t k = 0; k < n; ++k) s.buf[k] = cfg.momentum * s.buf[k] + (1.0 - cfg.dampening) * d[k];
    }
    for (std::size_t k = 0; k < n; ++k) d[k] = cfg.nesterov ? d[k] + cfg.momentum * s.buf[k] : s.buf[k];
  }
  for (std::size_t k = 0; k < n; ++k) s.p[k] -= cfg.lr * d[k];
}

struct AdamConfig {
  double lr, beta1, beta2, eps, weight_decay;
  bool decoupled;  // AdamW
};

void ref_adam_step(RefState& s, std::vector<double> g, const AdamConfig& cfg) {
  const std::size_t n = s.p.size();
  if (s.m.empty()) s.m.assign(n, 0.0), s.v.assign(n, 0.0);
  s.t += 1;
  for (std::size_t k = 0; k < n; ++k) {
    if (cfg.decoupled)
      s.p[k] *= 1.0 - cfg.lr * cfg.weight_decay;
    else
      g[k] += cfg.weight_decay * s.p[k];
    s.m[k] = cfg.beta1 * s.m[k] + (1.0 - cfg.beta1) * g[k];
    s.v[k] = cfg.beta2 * s.v[k] + (1.0 - cfg.beta2) * g[k] * g[k];
    const double bc1 = 1.0 - std::pow(cfg.beta1, static_cast<double>(s.t));
    const double bc2 = 1.0 - std::pow(cfg.beta2, static_cast<double>(s.t));
    const double denom = std::sqrt(s.v[k]) / std::sqrt(bc2) + cfg.eps;
    s.p[k] -= cfg.lr / bc1 * s.m[k] / denom;
  }
}

using RefStep = std::function<void(RefState&, const std::vector<double>&)>;

// Runs `steps` steps of `opt` on the problem and of the reference, comparing every parameter after
// every step within `tol` (absolute; the parameters are O(1)).
void run_against_reference(const Problem& pr, std::vector<Variable>& params, Optimizer& opt,
                           const RefStep& ref_step, int steps, double tol) {
  std::vector<RefState> ref(params.size());
  for (std::size_t i = 0; i < params.size(); ++i) ref[i].p = pr.init[i];
  for (int step = 1; step <= steps; ++step) {
    compute_grads(pr, params, step);
    opt.step();
    for (std::size_t i = 0; i < params.size(); ++i) {
      if (!Problem::in_loss(i, step)) continue;  // torch skips parameters without a gradient
      std::vector<double> g(ref[i].p.size());
      for (std::size_t k = 0; k < g.size(); ++k) g[k] = pr.a[i][k] * (ref[i].p[k] - pr.c[i][k]);
      ref_step(ref[i], g);
    }
    for (std::size_t i = 0; i < params.size(); ++i) {
      std::vector<double> got = params[i].tensor().to_vector();
      for (std::size_t k = 0; k < got.size(); ++k)
        ASSERT_NEAR(got[k], ref[i].p[k], tol) << "step " << step << " parameter " << i << " element " << k;
    }
  }
  // p2 never had a gradient: unchanged.
  EXPECT_EQ(params[2].tensor().to_vector(), stored(pr.init[2], params[2].dtype()));
}

// Tolerances: float64 runs differ from the reference only by rounding (~1e-16 per op, a few dozen
// ops per step, 8 steps): 1e-12 is far above that and far below any rule error (an update is ~1e-2).
// float32 runs carry the float32 rounding of values O(1) (6e-8 per op) accumulated over 8 steps;
// Adam divides by sqrt(v) of gradients O(1), which does not amplify it: 2e-5 bounds that with margin
// and is still three orders of magnitude under a single step's size.
constexpr double kTol64 = 1e-12;
constexpr double kTol32 = 2e-5;
constexpr int kSteps = 8;

}  // namespace

TEST(OptimSGD, MatchesTorchRules) {
  const std::vector<SGDConfig> configs = {
      {0.1, 0.0, 0.0, 0.0, false},    // plain
      {0.05, 0.9, 0.0, 0.0, false},   // momentum
      {0.05, 0.9, 0.3, 0.0, false},   // momentum with dampening (first buffer is undampened)
      {0.05, 0.9, 0.0, 0.0, true},    // nesterov
      {0.05, 0.8, 0.0, 0.05, false},  // weight decay with momentum
      {0.1, 0.5, 0.0, 0.1, true},     // weight decay with nesterov
      {0.1, 0.0, 0.0, 0.2, false},    // weight decay alone
  };
  Problem pr(1);
  for (std::size_t ci = 0; ci < configs.size(); ++ci) {
    const SGDConfig cfg = configs[ci];
    for (DType dtype : {DType::Float64, DType::Float32}) {
      SCOPED_TRACE("config " + std::to_string(ci) + " " + dtype_name(dtype));
      std::vector<Variable> params = make_params(pr, dtype);
      SGD opt(params, cfg.lr, cfg.momentum, cfg.dampening, cfg.weight_decay, cfg.nesterov);
      run_against_reference(
          pr, params, opt, [&](RefState& s, const std::vector<double>& g) { ref_sgd_step(s, g, cfg); },
          kSteps, dtype == DType::Float64 ? kTol64 : kTol32);
    }
  }
}

TEST(OptimAdam, MatchesTorchRules) {
  const std::vector<AdamConfig> configs = {
      {1e-2, 0.9, 0.999, 1e-8, 0.0, false},  // Adam defaults but lr
      {5e-2, 0.8, 0.99, 1e-6, 0.1, false},   // Adam with L2
      {1e-2, 0.9, 0.999, 1e-8, 1e-2, true},  // AdamW defaults but lr
      {5e-2, 0.85, 0.95, 1e-4, 0.3, true},   // AdamW, strong decay
  };
  Problem pr(2);
  for (std::size_t ci = 0; ci < configs.size(); ++ci) {
    const AdamConfig cfg = configs[ci];
    for (DType dtype : {DType::Float64, DType::Float32}) {
      SCOPED_TRACE("config " + std::to_string(ci) + " " + dtype_name(dtype));
      std::vector<Variable> params = make_params(pr, dtype);
      std::unique_ptr<Optimizer> opt;
      if (cfg.decoupled)
        opt = std::make_unique<AdamW>(params, cfg.lr, cfg.beta1, cfg.beta2, cfg.eps, cfg.weight_decay);
      else
        opt = std::make_unique<Adam>(params, cfg.lr, cfg.beta1, cfg.beta2, cfg.eps, cfg.weight_decay);
      run_against_reference(
          pr, params, *opt, [&](RefState& s, const std::vector<double>& g) { ref_adam_step(s, g, cfg); },
          kSteps, dtype == DType::Float64 ? kTol64 : kTol32);
      auto* adam = dynamic_cast<Adam*>(opt.get());
      EXPECT_EQ(adam->param_step(0), kSteps);
      EXPECT_EQ(adam->param_step(1), kSteps / 2);  // only the even steps had a gradient
      EXPECT_EQ(adam->param_step(2), 0);
    }
  }
}

TEST(OptimAdam, DefaultsAreTorchs) {
  std::vector<Variable> params = make_params(Problem(3), DType::Float32);
  Adam adam(params);
  EXPECT_EQ(adam.lr(), 1e-3);
  EXPECT_EQ(adam.beta1(), 0.9);
  EXPECT_EQ(adam.beta2(), 0.999);
  EXPECT_EQ(adam.eps(), 1e-8);
  EXPECT_EQ(adam.weight_decay(), 0.0);
  AdamW adamw(make_params(Problem(3), DType::Float32));
  EXPECT_EQ(adamw.weight_decay(), 1e-2);
  SGD sgd(make_params(Problem(3), DType::Float32), 0.1);
  EXPECT_EQ(sgd.momentum(), 0.0);
  EXPECT_FALSE(sgd.nesterov());
}

namespace {
// Runs `first` steps, saves optimizer state and parameters, restores both into a fresh optimizer
// built by `make` (with different hyperparameters, which the state must override), then runs `second`
// more steps on both: the two runs must stay bit-identical.
void expect_resume_identical(
    const std::function<std::unique_ptr<Optimizer>(std::vector<Variable>, bool)>& make, int first,
    int second) {
  Problem pr(4);
  std::vector<Variable> pa = make_params(pr, DType::Float32);
  std::unique_ptr<Optimizer> a = make(pa, false);
  for (int step = 1; step <= first; ++step) {
    compute_grads(pr, pa, step);
    a->step();
  }
  OptimizerState saved = a->state_dict();

  std::vector<Variable> pb;
  for (const Variable& p : pa) pb.emplace_back(p.tensor().clone(), true);
  std::unique_ptr<Optimizer> b = make(pb, true);
  b->load_state_dict(saved);
  EXPECT_EQ(b->lr(), a->lr());

  for (int step = first + 1; step <= first + second; ++step) {
    compute_grads(pr, pa, step);
    a->step();
    compute_grads(pr, pb, step);
    b->step();
    for (std::size_t i = 0; i < pa.size(); ++i)
      ASSERT_EQ(ops::max_abs_diff(pa[i].tensor(), pb[i].tensor()), 0.0)
          << "step " << step << " parameter " << i;
  }
  // And the state written by the restored optimizer equals the original's.
  OptimizerState sa = a->state_dict(), sb = b->state_dict();
  EXPECT_EQ(sa.scalars, sb.scalars);
  ASSERT_EQ(sa.tensors.size(), sb.tensors.size());
  for (const auto& item : sa.tensors)
    EXPECT_EQ(ops::max_abs_diff(item.second, sb.tensors.at(item.first)), 0.0) << item.first;
}
}  // namespace

TEST(OptimSGD, StateDictResumesExactly) {
  expect_resume_identical(
      [](std::vector<Variable> p, bool other) -> std::unique_ptr<Optimizer> {
        if (other) return std::make_unique<SGD>(std::move(p), 0.5);
        return std::make_unique<SGD>(std::move(p), 0.05, 0.9, 0.1, 0.01, false);
      },
      3, 4);
}

TEST(OptimAdam, StateDictResumesExactly) {
  for (bool decoupled : {false, true}) {
    expect_resume_identical(
        [decoupled](std::vector<Variable> p, bool other) -> std::unique_ptr<Optimizer> {
          // The class (coupled or decoupled decay) is the caller's choice; hyperparameters are state.
          if (decoupled) {
            if (other) return std::make_unique<AdamW>(std::move(p), 0.3, 0.5, 0.5, 0.1, 0.0);
            return std::make_unique<AdamW>(std::move(p), 0.02, 0.8, 0.99, 1e-6, 0.1);
          }
          if (other) return std::make_unique<Adam>(std::move(p), 0.3, 0.5, 0.5, 0.1, 0.0);
          return std::make_unique<Adam>(std::move(p), 0.02, 0.8, 0.99, 1e-6, 0.1);
        },
        3, 4);
  }
}

TEST(OptimAdam, StateDictKeys) {
  Problem pr(5);
  std::vector<Variable> params = make_params(pr, DType::Float32);
  Adam adam(params, 0.01);
  for (int step = 1; step <= 3; ++step) {
    compute_grads(pr, params, step);
    adam.step();
  }
  OptimizerState s = adam.state_dict();
  std::vector<std::string> tensors, scalars;
  for (auto& t : s.tensors) tensors.push_back(t.first);
  for (auto& t : s.scalars) scalars.push_back(t.first);
  EXPECT_EQ(tensors, (std::vector<std::string>{"0.exp_avg", "0.exp_avg_sq", "1.exp_avg", "1.exp_avg_sq"}));
  EXPECT_EQ(scalars, (std::vector<std::string>{"0.step", "1.step", "beta1", "beta2", "eps", "lr", "step",
                                               "weight_decay"}));
  EXPECT_EQ(s.scalars.at("step"), 3.0);
  EXPECT_EQ(s.scalars.at("0.step"), 3.0);
  EXPECT_EQ(s.scalars.at("1.step"), 1.0);  // a gradient on step 2 only
  EXPECT_EQ(s.tensors.at("0.exp_avg").shape(), (Shape{2, 3}));
}

TEST(OptimAdam, LoadErrorsNameTheKey) {
  Problem pr(6);
  std::vector<Variable> params = make_params(pr, DType::Float32);
  Adam adam(params, 0.01);
  for (int step = 1; step <= 2; ++step) {
    compute_grads(pr, params, step);
    adam.step();
  }
  const OptimizerState good = adam.state_dict();
  Adam other(make_params(pr, DType::Float32), 0.123);

  auto broken = [&](const std::function<void(OptimizerState&)>& edit) {
    OptimizerState s = good;
    edit(s);
    return error_of([&] { other.load_state_dict(s); });
  };
  EXPECT_EQ(broken([](OptimizerState& s) { s.scalars.erase("lr"); }),
            "Adam::load_state_dict: missing scalar 'lr'");
  EXPECT_EQ(broken([](OptimizerState& s) { s.tensors.erase("1.exp_avg_sq"); }),
            "Adam::load_state_dict: missing tensor '1.exp_avg_sq'");
  EXPECT_EQ(broken([](OptimizerState& s) { s.scalars.erase("0.step"); }),
            "Adam::load_state_dict: missing scalar '0.step'");
  EXPECT_EQ(broken([](OptimizerState& s) {
              s.tensors["0.exp_avg"] = Tensor::zeros({3, 2});
            }),
            "Adam::load_state_dict: tensor '0.exp_avg' has shape (3, 2), but parameter 0 has shape (2, 3)");
  EXPECT_EQ(broken([](OptimizerState& s) {
              s.tensors["0.momentum_buffer"] = Tensor::zeros({2, 3});
            }),
            "Adam::load_state_dict: unexpected tensor '0.momentum_buffer'");
  EXPECT_EQ(broken([](OptimizerState& s) { s.scalars["amsgrad"] = 1.0; }),
            "Adam::load_state_dict: unexpected scalar 'amsgrad'");
  EXPECT_EQ(broken([](OptimizerState& s) { s.tensors["7.exp_avg"] = Tensor::zeros({1}); }),
            "Adam::load_state_dict: tensor '7.exp_avg' names parameter 7, but the optimizer has 3");
  EXPECT_EQ(broken([](OptimizerState& s) { s.scalars["0.step"] = 1.5; }),
            "Adam::load_state_dict: scalar '0.step' must be a positive integer, got 1.500000");
  EXPECT_EQ(broken([](OptimizerState& s) { s.scalars["beta2"] = 1.0; }),
            "Adam: invalid beta parameter at index 1: 1.000000");
  // Nothing was restored by the failed loads.
  EXPECT_EQ(other.lr(), 0.123);
  EXPECT_FALSE(other.exp_avg(0).defined());
}

TEST(OptimSGD, LoadErrorsNameTheKey) {
  Problem pr(7);
  std::vector<Variable> params = make_params(pr, DType::Float32);
  SGD sgd(params, 0.1, 0.9);
  compute_grads(pr, params, 1);
  sgd.step();
  OptimizerState s = sgd.state_dict();
  EXPECT_EQ(s.tensors.size(), 1u);  // only p0 had a gradient on step 1
  EXPECT_TRUE(s.tensors.count("0.momentum_buffer"));
  SGD other(make_params(pr, DType::Float32), 0.1, 0.9);
  OptimizerState bad = s;
  bad.tensors["0.momentum_buffer"] = Tensor::zeros({6});
  EXPECT_EQ(
      error_of([&] { other.load_state_dict(bad); }),
      "SGD::load_state_dict: tensor '0.momentum_buffer' has shape (6), but parameter 0 has shape (2, 3)");
  bad = s;
  bad.scalars.erase("nesterov");
  EXPECT_EQ(error_of([&] { other.load_state_dict(bad); }), "SGD::load_state_dict: missing scalar 'nesterov'");
  bad = s;
  bad.tensors["x.momentum_buffer"] = Tensor::zeros({1});
  EXPECT_EQ(error_of([&] { other.load_state_dict(bad); }),
            "SGD::load_state_dict: unexpected tensor 'x.momentum_buffer'");
  // A float64 checkpoint loads into float32 parameters (converted).
  OptimizerState wide = s;
  wide.tensors["0.momentum_buffer"] = s.tensors.at("0.momentum_buffer").to(DType::Float64);
  other.load_state_dict(wide);
  EXPECT_EQ(other.momentum_buffer(0).dtype(), DType::Float32);
  EXPECT_EQ(ops::max_abs_diff(other.momentum_buffer(0), sgd.momentum_buffer(0)), 0.0);
  EXPECT_FALSE(other.momentum_buffer(0).shares_storage(s.tensors.at("0.momentum_buffer")));
}

TEST(Optim, ConstructorErrors) {
  Problem pr(8);
  auto params = [&] { return make_params(pr, DType::Float32); };
  EXPECT_EQ(error_of([&] { SGD(params(), -0.1); }),
            "Optimizer: invalid learning rate -0.100000 (must be >= 0)");
  EXPECT_EQ(error_of([&] { SGD({}, 0.1); }), "Optimizer: got an empty parameter list");
  EXPECT_TRUE(contains(error_of([&] { SGD(params(), 0.1, 0.0, 0.0, 0.0, true); }),
                       "SGD: Nesterov momentum requires a momentum and zero dampening"));
  EXPECT_TRUE(contains(error_of([&] { SGD(params(), 0.1, 0.9, 0.1, 0.0, true); }),
                       "SGD: Nesterov momentum requires a momentum and zero dampening"));
  EXPECT_TRUE(contains(error_of([&] { SGD(params(), 0.1, -0.9); }), "SGD: invalid momentum value"));
  EXPECT_TRUE(
      contains(error_of([&] { Adam(params(), 0.1, 1.0); }), "Adam: invalid beta parameter at index 0"));
  EXPECT_TRUE(
      contains(error_of([&] { AdamW(params(), 0.1, 0.9, 0.999, -1.0); }), "AdamW: invalid epsilon value"));
  EXPECT_TRUE(contains(error_of([&] { AdamW(params(), 0.1, 0.9, 0.999, 1e-8, -0.1); }),
                       "AdamW: invalid weight_decay value"));
  std::vector<Variable> dup = params();
  dup.push_back(dup[0]);
  EXPECT_EQ(error_of([&] { SGD(dup, 0.1); }), "Optimizer: parameter 3 is the same Variable as parameter 0");
  Variable leaf(Tensor::ones({2}), true);
  Variable result = mul_scalar(leaf, 2.0);
  EXPECT_TRUE(contains(error_of([&] { SGD({result}, 0.1); }), "Optimizer: parameter 0 is not a leaf"));
  EXPECT_TRUE(contains(error_of([&] { SGD({Variable(Tensor::ones({2}))}, 0.1); }),
                       "Optimizer: parameter 0 does not require a gradient"));
}

TEST(Optim, ZeroGradClearsEveryGradient) {
  Problem pr(9);
  std::vector<Variable> params = make_params(pr, DType::Float32);
  SGD sgd(params, 0.1);
  compute_grads(pr, params, 2);
  EXPECT_TRUE(params[0].has_grad());
  EXPECT_TRUE(params[1].has_grad());
  sgd.zero_grad();
  for (const Variable& p : params) EXPECT_FALSE(p.has_grad());
  // A step without gradients changes nothing.
  sgd.step();
  for (std::size_t i = 0; i < params.size(); ++i)
    EXPECT_EQ(params[i].tensor().to_vector(), stored(pr.init[i], DType::Float32));
}

// ---- schedules ----------------------------------------------------------------------------------------

namespace {
std::unique_ptr<SGD> one_param_sgd(double lr) {
  return std::make_unique<SGD>(std::vector<Variable>{Variable(Tensor::zeros({1}), true)}, lr);
}
}  // namespace

TEST(LRSchedule, StepLRFollowsTorchsRecursion) {
  auto opt = one_param_sgd(0.2);
  StepLR sched(*opt, 3, 0.5);
  EXPECT_EQ(opt->lr(), 0.2);
  // torch's get_lr: unchanged unless last_epoch is a positive multiple of step_size, then * gamma.
  double expected = 0.2;
  for (int epoch = 1; epoch <= 12; ++epoch) {
    sched.step();
    if (epoch % 3 == 0) expected *= 0.5;
    EXPECT_EQ(sched.last_epoch(), epoch);
    EXPECT_NEAR(opt->lr(), expected, 1e-15) << "epoch " << epoch;
    EXPECT_EQ(sched.get_last_lr(), opt->lr());
  }
  EXPECT_NEAR(sched.lr_at(2), 0.2, 1e-15);
  EXPECT_NEAR(sched.lr_at(3), 0.1, 1e-15);
  EXPECT_NEAR(sched.lr_at(8), 0.05, 1e-15);
}

TEST(LRSchedule, CosineAnnealingFollowsTorchsRecursion) {
  const double base = 0.1, eta_min = 1e-3;
  const int T = 10;
  auto opt = one_param_sgd(base);
  CosineAnnealingLR sched(*opt, T, eta_min);
  EXPECT_EQ(opt->lr(), base);
  // torch.optim.lr_scheduler.CosineAnnealingLR.get_lr (the chainable form), over two periods.
  const double pi = std::acos(-1.0);
  double lr = base;
  for (int e = 1; e <= 2 * T + 3; ++e) {
    if ((e - 1 - T) % (2 * T) == 0)
      lr = lr + (base - eta_min) * (1 - std::cos(pi / T)) / 2;
    else
      lr = (1 + std::cos(pi * e / T)) / (1 + std::cos(pi * (e - 1) / T)) * (lr - eta_min) + eta_min;
    sched.step();
    EXPECT_NEAR(opt->lr(), lr, 1e-12) << "epoch " << e;
  }
  EXPECT_NEAR(sched.lr_at(T / 2), (base + eta_min) / 2, 1e-15);
  EXPECT_NEAR(sched.lr_at(T), eta_min, 1e-15);
  EXPECT_NEAR(sched.lr_at(2 * T), base, 1e-15);
}

TEST(LRSchedule, StateDictResumes) {
  auto a_opt = one_param_sgd(0.1);
  CosineAnnealingLR a(*a_opt, 7, 0.0);
  for (int i = 0; i < 4; ++i) a.step();
  std::map<std::string, double> saved = a.state_dict();
  EXPECT_EQ(saved.at("last_epoch"), 4.0);
  EXPECT_EQ(saved.at("base_lr"), 0.1);

  auto b_opt = one_param_sgd(0.7);  // a resumed run may be built with another lr: the state wins
  CosineAnnealingLR b(*b_opt, 7, 0.0);
  b.load_state_dict(saved);
  EXPECT_EQ(b.last_epoch(), 4);
  EXPECT_EQ(b_opt->lr(), a_opt->lr());
  for (int i = 0; i < 5; ++i) {
    a.step();
    b.step();
    EXPECT_EQ(b_opt->lr(), a_opt->lr());
  }
}

TEST(LRSchedule, Errors) {
  auto opt = one_param_sgd(0.1);
  EXPECT_EQ(error_of([&] { StepLR(*opt, 0); }), "StepLR: step_size must be positive, got 0");
  EXPECT_EQ(error_of([&] { CosineAnnealingLR(*opt, 0); }),
            "CosineAnnealingLR: T_max must be positive, got 0");
  StepLR sched(*opt, 2);
  EXPECT_EQ(error_of([&] {
              sched.load_state_dict({{"base_lr", 0.1}});
            }),
            "LRScheduler::load_state_dict: missing key 'last_epoch'");
  EXPECT_EQ(error_of([&] {
              sched.load_state_dict({{"base_lr", 0.1}, {"last_epoch", 2}, {"gamma", 0.1}});
            }),
            "LRScheduler::load_state_dict: unexpected key 'gamma'");
  EXPECT_EQ(error_of([&] {
              sched.load_state_dict({{"base_lr", 0.1}, {"last_epoch", -1}});
            }),
            "LRScheduler::load_state_dict: key 'last_epoch' must be a non-negative integer, got -1.000000");
}

// replayed_step reports a replay of a captured step; without a capture there is nothing to replay.
TEST(OptimAdam, ReplayedStepWithoutACaptureIsRefused) {
  Variable w(Tensor::ones({3}), true);
  Adam opt({w}, 1e-2);
  EXPECT_THROW_WITH(opt.replayed_step(), "Adam::replayed_step", "no step of this optimizer was captured");
  EXPECT_EQ(opt.state_dict().scalars.at("step"), 0.0);
}

// Many parameters in one call: the result of one call each, and every parameter checked as one call
// checks it (the message says which).
TEST(AdamUpdate, MultiEqualsOneCallPerParameterAndChecksEach) {
  Generator gen(9);
  std::vector<Tensor> p1, p2, m1, m2, v1, v2, g;
  for (const Shape& s : {Shape{3, 4}, Shape{7}, Shape{2, 2, 2}}) {
    const Tensor p = Tensor::normal(s, 0, 1, gen, DType::Float64);
    p1.push_back(p.clone());
    p2.push_back(p.clone());
    for (auto* st : {&m1, &m2, &v1, &v2}) st->push_back(Tensor::zeros(s, DType::Float64));
    g.push_back(Tensor::normal(s, 0, 1, gen, DType::Float64));
  }
  ops::AdamStep s;
  s.lr = 0.1;
  std::vector<ops::AdamTensors> all;
  for (std::size_t i = 0; i < p1.size(); ++i) {
    ops::adam_update_(p1[i], g[i], m1[i], v1[i], s);
    all.push_back({&p2[i], &g[i], &m2[i], &v2[i]});
  }
  ops::adam_update_multi_(all, s);
  for (std::size_t i = 0; i < p1.size(); ++i) {
    EXPECT_EQ(ops::max_abs_diff(p1[i], p2[i]), 0.0);
    EXPECT_EQ(ops::max_abs_diff(m1[i], m2[i]), 0.0);
  }
  Tensor wrong = Tensor::zeros({5}, DType::Float64);
  all[1].exp_avg = &wrong;
  EXPECT_THROW_WITH(ops::adam_update_multi_(all, s), "adam_update_multi_ (parameter 1)", "exp_avg", "(5)", "(7)");
  all[1].exp_avg = &m2[1];
  Tensor p32 = Tensor::zeros({7}), m32 = Tensor::zeros({7}), v32 = Tensor::zeros({7}), g32 = Tensor::zeros({7});
  all.push_back({&p32, &g32, &m32, &v32});
  EXPECT_THROW_WITH(ops::adam_update_multi_(all, s), "parameter 3 is float32", "parameter 0 float64");
}

TEST(AdamUpdate, DeviceStepIsRefusedForCpuParameters) {
  Tensor p = Tensor::zeros({3}), g = Tensor::ones({3}), m = Tensor::zeros({3}), v = Tensor::zeros({3});
  ops::AdamStep s;
  s.device_step = Tensor::ones({}, DType::Int64);
  const std::string msg = error_of([&] { ops::adam_update_(p, g, m, v, s); });
  EXPECT_TRUE(contains(msg, "device_step")) << msg;
  EXPECT_TRUE(contains(msg, "GPU")) << msg;
  EXPECT_EQ(ops::max_abs_diff(p, Tensor::zeros({3})), 0.0) << "nothing is updated on a refusal";
}
