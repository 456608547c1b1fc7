// layers/sequential.h — a chain of modules, as torch.nn.Sequential.
#pragma once

#include <cstddef>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "layers/module.h"

namespace ladnn {

/// forward runs the children in order. Children pushed without a name are named by their position
/// ("0", "1", …: PyTorch's naming), so Sequential{conv, bn, relu} gives "0.weight", "1.running_mean", ….
class Sequential : public Module {
 public:
  Sequential() : Module("Sequential") {}
  Sequential(std::initializer_list<std::shared_ptr<Module>> modules);

  /// Appends `module` named by its position (the current size, as PyTorch's append).
  void push_back(std::shared_ptr<Module> module);
  /// Appends `module` under `name` (torchvision builds its DenseNet "features" this way).
  void push_back(const std::string& name, std::shared_ptr<Module> module);

  Variable forward(const Variable& x) override;

  std::size_t size() const { return modules_.size(); }
  bool empty() const { return modules_.empty(); }
  /// The i-th module in order; throws when out of range.
  std::shared_ptr<Module> operator[](std::size_t i) const;

 private:
  std::vector<std::shared_ptr<Module>> modules_;  // the children, in order
};

}  // namespace ladnn
