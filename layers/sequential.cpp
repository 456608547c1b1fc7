// layers/sequential.cpp — Sequential: ordered children and the chained forward.
#include "layers/sequential.h"

#include <stdexcept>

namespace ladnn {

Sequential::Sequential(std::initializer_list<std::shared_ptr<Module>> modules) : Module("Sequential") {
  for (const auto& m : modules) push_back(m);
}

void Sequential::push_back(std::shared_ptr<Module> module) {
  push_back(std::to_string(modules_.size()), std::move(module));
}

void Sequential::push_back(const std::string& name, std::shared_ptr<Module> module) {
  register_module(name, module);  // validates the name, null and cycles
  modules_.push_back(std::move(module));
}

Variable Sequential::forward(const Variable& x) {
  Variable h = x;
  for (const auto& m : modules_) h = m->forward(h);
  return h;
}

std::shared_ptr<Module> Sequential::operator[](std::size_t i) const {
  if (i >= modules_.size()) {
    throw std::out_of_range("Sequential: index " + std::to_string(i) + " is out of range for " +
                            std::to_string(modules_.size()) + " modules");
  }
  return modules_[i];
}

}  // namespace ladnn
