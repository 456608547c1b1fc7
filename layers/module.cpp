// layers/module.cpp — the Module tree and state dicts.
#include "layers/module.h"

#include <algorithm>
#include <sstream>
#include <stdexcept>

namespace ladnn {

// ---- StateDict ------------------------------------------------------------------------------------

const StateDict::Item* StateDict::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &items_[it->second];
}

void StateDict::insert(const std::string& name, const Tensor& tensor) {
  check(find(name) == nullptr, "StateDict::insert: key '" + name + "' is already present");
  index_.emplace(name, items_.size());
  items_.emplace_back(name, tensor);
}

void StateDict::set(const std::string& name, const Tensor& tensor) {
  auto it = index_.find(name);
  if (it != index_.end()) {
    items_[it->second].second = tensor;
  } else {
    index_.emplace(name, items_.size());
    items_.emplace_back(name, tensor);
  }
}

bool StateDict::contains(const std::string& name) const {
  return find(name) != nullptr;
}

const Tensor& StateDict::at(const std::string& name) const {
  const Item* item = find(name);
  if (item == nullptr) throw std::out_of_range("StateDict::at: no key '" + name + "'");
  return item->second;
}

Tensor& StateDict::at(const std::string& name) {
  return const_cast<Tensor&>(static_cast<const StateDict&>(*this).at(name));
}

bool StateDict::erase(const std::string& name) {
  auto it = index_.find(name);
  if (it == index_.end()) return false;
  items_.erase(items_.begin() + static_cast<std::ptrdiff_t>(it->second));
  index_.clear();
  for (std::size_t i = 0; i < items_.size(); ++i) index_.emplace(items_[i].first, i);
  return true;
}

std::vector<std::string> StateDict::keys() const {
  std::vector<std::string> out;
  out.reserve(items_.size());
  for (const Item& item : items_) out.push_back(item.first);
  return out;
}

// ---- Module: basics ---------------------------------------------------------------------------------

Module::Module(std::string type_name) : type_name_(std::move(type_name)) {}

Variable Module::forward(const Variable&) {
  throw std::logic_error(type_name_ + "::forward: this module has no forward (it is a container)");
}

void Module::train(bool on) {
  training_ = on;
  for (auto& child : children_) child.second->train(on);
}

// ---- registration -------------------------------------------------------------------------------------

void Module::check_new_name(const std::string& name, const char* kind) const {
  std::string where = type_name_ + "::register_" + kind + ": ";
  check(!name.empty(), where + "name must not be empty");
  check(name.find('.') == std::string::npos,
        where + "name '" + name + "' must not contain '.' (dots join the names of nested modules)");
  auto taken = [&](const auto& list) {
    return std::any_of(list.begin(), list.end(), [&](const auto& item) { return item.first == name; });
  };
  check(!taken(parameters_), where + "name '" + name + "' is already a parameter of this module");
  check(!taken(buffers_), where + "name '" + name + "' is already a buffer of this module");
  check(!taken(children_), where + "name '" + name + "' is already a submodule of this module");
}

Variable Module::register_parameter(const std::string& name, Tensor tensor) {
  check_new_name(name, "parameter");
  check(tensor.defined(), type_name_ + "::register_parameter: tensor for '" + name + "' is undefined");
  check(tensor.dtype() != DType::Int64,
        type_name_ + "::register_parameter: '" + name + "' is int64; parameters must be floating");
  Variable v(std::move(tensor), /*requires_grad=*/true);
  parameters_.emplace_back(name, v);
  return v;
}

Tensor Module::register_buffer(const std::string& name, Tensor tensor) {
  check_new_name(name, "buffer");
  check(tensor.defined(), type_name_ + "::register_buffer: tensor for '" + name + "' is undefined");
  buffers_.emplace_back(name, tensor);
  return tensor;
}

bool Module::reaches(const Module* target) const {
  if (this == target) return true;
  for (const auto& child : children_)
    if (child.second->reaches(target)) return true;
  return false;
}

void Module::register_module_impl(const std::string& name, std::shared_ptr<Module> module) {
  check_new_name(name, "module");
  check(module != nullptr, type_name_ + "::register_module: module '" + name + "' is null");
  // A cycle would make every walk of the tree infinite.
  check(!module->reaches(this),
        type_name_ + "::register_module: registering '" + name + "' would make the module tree a cycle");
  children_.emplace_back(name, std::move(module));
}

// ---- lookup --------------------------------------------------------------------------------------------

const Variable& Module::parameter(const std::string& name) const {
  for (const auto& p : parameters_)
    if (p.first == name) return p.second;
  throw std::out_of_range(type_name_ + " has no parameter '" + name + "'");
}

Tensor& Module::buffer(const std::string& name) {
  for (auto& b : buffers_)
    if (b.first == name) return b.second;
  throw std::out_of_range(type_name_ + " has no buffer '" + name + "'");
}

const Tensor& Module::buffer(const std::string& name) const {
  return const_cast<Module*>(this)->buffer(name);
}

std::shared_ptr<Module> Module::child(const std::string& name) const {
  for (const auto& c : children_)
    if (c.first == name) return c.second;
  throw std::out_of_range(type_name_ + " has no submodule '" + name + "'");
}

std::shared_ptr<Module> Module::submodule(const std::string& path) const {
  check(!path.empty(), type_name_ + "::submodule: path is empty");
  std::shared_ptr<Module> current;
  const Module* node = this;
  std::string walked;
  std::size_t start = 0;
  while (true) {
    std::size_t dot = path.find('.', start);
    std::string part = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    bool found = false;
    for (const auto& c : node->children_) {
      if (c.first == part) {
        current = c.second;
        found = true;
        break;
      }
    }
    if (!found) {
      throw std::out_of_range("submodule '" + path +
                              "': " + (walked.empty() ? std::string("the root") : "'" + walked + "'") + " (" +
                              node->type_name_ + ") has no submodule '" + part + "'");
    }
    walked += (walked.empty() ? "" : ".") + part;
    node = current.get();
    if (dot == std::string::npos) return current;
    start = dot + 1;
  }
}

// ---- walks -----------------------------------------------------------------------------------------------

// Pre-order over the tree, each module once (by identity), calling visit(prefix, module).
// Recursion is fine here: module trees are a handful of levels deep (DenseNet: 4).
template <typename Visit>
void Module::visit_unique(const std::string& prefix, std::vector<const Module*>& seen, Visit&& visit) const {
  if (std::find(seen.begin(), seen.end(), this) != seen.end()) return;
  seen.push_back(this);
  visit(prefix, *this);
  for (const auto& c : children_)
    c.second->visit_unique(prefix.empty() ? c.first : prefix + "." + c.first, seen, visit);
}

std::vector<std::pair<std::string, Variable>> Module::named_parameters() const {
  std::vector<std::pair<std::string, Variable>> out;
  std::vector<const Module*> seen;
  visit_unique("", seen, [&](const std::string& prefix, const Module& m) {
    for (const auto& p : m.parameters_) {
      bool dup = std::any_of(out.begin(), out.end(), [&](const auto& q) { return q.second.same(p.second); });
      if (!dup) out.emplace_back(prefix.empty() ? p.first : prefix + "." + p.first, p.second);
    }
  });
  return out;
}

std::vector<Variable> Module::parameters() const {
  std::vector<Variable> out;
  for (auto& p : named_parameters()) out.push_back(p.second);
  return out;
}

std::vector<std::pair<std::string, Tensor>> Module::named_buffers() const {
  std::vector<std::pair<std::string, Tensor>> out;
  std::vector<const Module*> seen;
  visit_unique("", seen, [&](const std::string& prefix, const Module& m) {
    for (const auto& b : m.buffers_)
      out.emplace_back(prefix.empty() ? b.first : prefix + "." + b.first, b.second);
  });
  return out;
}

std::vector<std::pair<std::string, std::shared_ptr<Module>>> Module::named_children() const {
  return children_;
}

std::vector<std::pair<std::string, std::shared_ptr<Module>>> Module::named_modules() {
  std::shared_ptr<Module> self = weak_from_this().lock();
  check(self != nullptr, type_name_ +
                             "::named_modules: the module must be owned by a std::shared_ptr "
                             "(create it with std::make_shared)");
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> out;
  out.emplace_back("", self);
  // Pre-order as PyTorch: a module, then each child's whole subtree in registration order.
  std::function<void(const Module&, const std::string&)> walk = [&](const Module& m,
                                                                    const std::string& prefix) {
    for (const auto& c : m.children_) {
      bool dup = std::any_of(out.begin(), out.end(), [&](const auto& q) { return q.second == c.second; });
      if (dup) continue;
      const std::string name = prefix.empty() ? c.first : prefix + "." + c.first;
      out.emplace_back(name, c.second);
      walk(*c.second, name);
    }
  };
  walk(*this, "");
  return out;
}

void Module::zero_grad() {
  for (auto& p : named_parameters()) p.second.zero_grad();
}

// ---- state dict -------------------------------------------------------------------------------------------

void Module::collect_state(const std::string& prefix, StateDict& out) const {
  for (const auto& p : parameters_) out.insert(prefix + p.first, p.second.tensor());
  for (const auto& b : buffers_) out.insert(prefix + b.first, b.second);
  for (const auto& c : children_) c.second->collect_state(prefix + c.first + ".", out);
}

StateDict Module::state_dict() const {
  StateDict out;
  collect_state("", out);
  return out;
}

void Module::load_state_dict(const StateDict& state, bool strict) {
  // The destinations: handles sharing storage with the module, so copy_ writes into the model.
  StateDict own = state_dict();

  std::vector<std::string> missing, unexpected, mismatched;
  for (const auto& item : own) {
    if (!state.contains(item.first)) {
      missing.push_back(item.first);
      continue;
    }
    const Tensor& src = state.at(item.first);
    if (!src.defined()) {
      mismatched.push_back(item.first + ": checkpoint tensor is undefined, model has shape " +
                           shape_str(item.second.shape()));
    } else if (src.shape() != item.second.shape()) {
      mismatched.push_back(item.first + ": checkpoint has shape " + shape_str(src.shape()) +
                           ", model has shape " + shape_str(item.second.shape()));
    }
  }
  for (const auto& item : state)
    if (!own.contains(item.first)) unexpected.push_back(item.first);

  // As PyTorch: strict governs missing/unexpected keys; a shape mismatch is always an error.
  bool fail = !mismatched.empty() || (strict && (!missing.empty() || !unexpected.empty()));
  if (fail) {
    std::ostringstream msg;
    msg << "Error(s) in loading state_dict for " << type_name_ << ":";
    auto list = [&](const char* what, const std::vector<std::string>& names, const char* sep) {
      if (names.empty()) return;
      msg << " " << names.size() << " " << what << ": ";
      for (std::size_t i = 0; i < names.size(); ++i) msg << (i ? sep : "") << names[i];
      msg << ".";
    };
    if (strict) {
      list("missing key(s)", missing, ", ");
      list("unexpected key(s)", unexpected, ", ");
    }
    list("shape mismatch(es)", mismatched, "; ");
    throw std::invalid_argument(msg.str());
  }

  for (auto& item : own) {
    if (!state.contains(item.first)) continue;  // missing, tolerated when !strict
    Tensor dst = item.second;
    dst.copy_(state.at(item.first));
  }
}

// ---- conversions
// -------------------------------------------------------------------------------------------

void Module::convert_all(const std::function<Tensor(const Tensor&)>& convert, bool skip_int64) {
  std::vector<const Module*> seen;
  std::vector<Module*> modules;
  visit_unique("", seen,
               [&](const std::string&, const Module& m) { modules.push_back(const_cast<Module*>(&m)); });
  std::vector<Variable> done;
  for (Module* m : modules) {
    for (auto& p : m->parameters_) {
      bool dup = std::any_of(done.begin(), done.end(), [&](const Variable& v) { return v.same(p.second); });
      if (dup) continue;
      done.push_back(p.second);
      // Replacing the data inside the shared node: every handle (layer members, optimizers) sees it.
      p.second.zero_grad();
      p.second.mutable_tensor() = convert(p.second.tensor());
    }
    for (auto& b : m->buffers_) {
      if (skip_int64 && b.second.dtype() == DType::Int64) continue;
      b.second = convert(b.second);
    }
  }
}

Module& Module::to(DType dtype) {
  check(dtype != DType::Int64, type_name_ + "::to: parameters cannot be int64");
  convert_all([dtype](const Tensor& t) { return t.to(dtype); }, /*skip_int64=*/true);
  return *this;
}

Module& Module::to(Device device) {
  convert_all([device](const Tensor& t) { return t.to(device); }, /*skip_int64=*/false);
  return *this;
}

}  // namespace ladnn
