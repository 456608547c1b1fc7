// optim/lr_schedule.cpp — StepLR and CosineAnnealingLR as closed forms of the epoch.
#include "optim/lr_schedule.h"

#include <cmath>
#include <string>

namespace ladnn {

LRScheduler::LRScheduler(Optimizer& optimizer)
    : optimizer_(optimizer), base_lr_(optimizer.lr()), last_lr_(optimizer.lr()) {}

void LRScheduler::apply() {
  last_lr_ = lr_at(last_epoch_);
  optimizer_.set_lr(last_lr_);
}

void LRScheduler::step() {
  ++last_epoch_;
  apply();
}

std::map<std::string, double> LRScheduler::state_dict() const {
  return {{"last_epoch", static_cast<double>(last_epoch_)}, {"base_lr", base_lr_}};
}

void LRScheduler::load_state_dict(const std::map<std::string, double>& state) {
  const std::string where = "LRScheduler::load_state_dict: ";
  for (const char* key : {"last_epoch", "base_lr"})
    check(state.count(key) == 1, where + "missing key '" + key + "'");
  for (const auto& item : state)
    check(item.first == "last_epoch" || item.first == "base_lr",
          where + "unexpected key '" + item.first + "'");
  const double epoch = state.at("last_epoch");
  const double base = state.at("base_lr");
  check(epoch >= 0.0 && epoch == std::floor(epoch) && epoch < 9.0e15,
        where + "key 'last_epoch' must be a non-negative integer, got " + std::to_string(epoch));
  check(base >= 0.0, where + "key 'base_lr' must be non-negative, got " + std::to_string(base));
  last_epoch_ = static_cast<int64_t>(epoch);
  base_lr_ = base;
  apply();
}

StepLR::StepLR(Optimizer& optimizer, int64_t step_size, double gamma)
    : LRScheduler(optimizer), step_size_(step_size), gamma_(gamma) {
  check(step_size > 0, "StepLR: step_size must be positive, got " + std::to_string(step_size));
  check(gamma > 0.0, "StepLR: gamma must be positive, got " + std::to_string(gamma));
  apply();
}

double StepLR::lr_at(int64_t epoch) const {
  return base_lr() * std::pow(gamma_, static_cast<double>(epoch / step_size_));
}

CosineAnnealingLR::CosineAnnealingLR(Optimizer& optimizer, int64_t T_max, double eta_min)
    : LRScheduler(optimizer), t_max_(T_max), eta_min_(eta_min) {
  check(T_max > 0, "CosineAnnealingLR: T_max must be positive, got " + std::to_string(T_max));
  check(eta_min >= 0.0, "CosineAnnealingLR: eta_min must be non-negative, got " + std::to_string(eta_min));
  apply();
}

double CosineAnnealingLR::lr_at(int64_t epoch) const {
  const double pi = std::acos(-1.0);
  return eta_min_ + (base_lr() - eta_min_) *
                        (1.0 + std::cos(pi * static_cast<double>(epoch) / static_cast<double>(t_max_))) / 2.0;
}

}  // namespace ladnn
