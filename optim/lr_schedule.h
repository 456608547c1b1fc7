// optim/lr_schedule.h — learning-rate schedules, as torch.optim.lr_scheduler (closed forms).
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "optim/optimizer.h"

namespace ladnn {

/// A schedule sets its optimizer's lr to lr_at(epoch). Construction records base_lr = optimizer.lr()
/// and applies epoch 0 (as torch's constructor); each step() advances one epoch and applies it. The
/// optimizer is kept by reference and must outlive the schedule.
class LRScheduler {
 public:
  explicit LRScheduler(Optimizer& optimizer);
  virtual ~LRScheduler() = default;
  LRScheduler(const LRScheduler&) = delete;
  LRScheduler& operator=(const LRScheduler&) = delete;

  /// The learning rate at `epoch` (>= 0), from base_lr.
  virtual double lr_at(int64_t epoch) const = 0;

  /// Advances one epoch and sets the optimizer's lr.
  void step();
  int64_t last_epoch() const { return last_epoch_; }
  double base_lr() const { return base_lr_; }
  /// The lr the schedule last applied.
  double get_last_lr() const { return last_lr_; }

  /// {"last_epoch", "base_lr"}.
  std::map<std::string, double> state_dict() const;
  /// Restores both keys (throws naming a missing, unexpected or invalid key) and applies that epoch's lr.
  void load_state_dict(const std::map<std::string, double>& state);

 protected:
  /// Call at the end of a derived constructor (after its fields are set): applies epoch 0.
  void apply();

 private:
  Optimizer& optimizer_;
  double base_lr_;
  int64_t last_epoch_ = 0;
  double last_lr_;
};

/// lr = base_lr * gamma ^ floor(epoch / step_size)   (torch.optim.lr_scheduler.StepLR).
class StepLR : public LRScheduler {
 public:
  StepLR(Optimizer& optimizer, int64_t step_size, double gamma = 0.1);
  double lr_at(int64_t epoch) const override;

 private:
  int64_t step_size_;
  double gamma_;
};

/// lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2
/// (torch.optim.lr_scheduler.CosineAnnealingLR's closed form; periodic past T_max).
class CosineAnnealingLR : public LRScheduler {
 public:
  CosineAnnealingLR(Optimizer& optimizer, int64_t T_max, double eta_min = 0.0);
  double lr_at(int64_t epoch) const override;

 private:
  int64_t t_max_;
  double eta_min_;
};

}  // namespace ladnn
