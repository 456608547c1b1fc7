// layers/module.h — the Module tree: named parameters, buffers and submodules, as torch.nn.Module.
//
// A Module owns, in registration order, its parameters (Variables that require a gradient, so an
// optimizer holding the same Variables updates the model), its buffers (Tensors that are state but not
// trained: BatchNorm's running statistics) and its child modules. Names join with '.' exactly as
// PyTorch's do ("features.denseblock1.denselayer1.norm1.weight"), so a torchvision state dict maps one
// to one onto ours.
//
// Layers keep handles to their parameters (a Variable handle shares its node, so replacing the data,
// e.g. on a dtype or device move, is seen through every handle) but look their buffers up by name
// (`buffer("running_mean")`): the Module's table is the one place a buffer lives.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "autograd/variable.h"
#include "tensor/tensor.h"

namespace ladnn {

/// Named tensors in insertion order, looked up by name — the shape of torch's OrderedDict state dict.
/// Tensors are handles: a state dict from Module::state_dict() shares storage with the module.
class StateDict {
 public:
  using Item = std::pair<std::string, Tensor>;

  StateDict() = default;
  /// Appends `name`; throws if it is already present.
  void insert(const std::string& name, const Tensor& tensor);
  /// Replaces the tensor of an existing name, or appends a new one.
  void set(const std::string& name, const Tensor& tensor);
  bool contains(const std::string& name) const;
  /// Throws std::out_of_range naming the key when absent.
  const Tensor& at(const std::string& name) const;
  Tensor& at(const std::string& name);
  /// Removes `name` if present; returns whether it was.
  bool erase(const std::string& name);

  std::size_t size() const { return items_.size(); }
  bool empty() const { return items_.empty(); }
  std::vector<std::string> keys() const;
  const std::vector<Item>& items() const { return items_; }
  std::vector<Item>::const_iterator begin() const { return items_.begin(); }
  std::vector<Item>::const_iterator end() const { return items_.end(); }

 private:
  const Item* find(const std::string& name) const;
  std::vector<Item> items_;
  std::unordered_map<std::string, std::size_t> index_;  // name -> position in items_
};

class Module : public std::enable_shared_from_this<Module> {
 public:
  /// `type_name` is the class name used in error messages ("Conv2d", "BatchNorm2d", …).
  explicit Module(std::string type_name = "Module");
  virtual ~Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  /// The computation. The base class throws: a Module without a forward is a container.
  virtual Variable forward(const Variable& x);
  Variable operator()(const Variable& x) { return forward(x); }

  const std::string& type_name() const { return type_name_; }

  // ---- mode -------------------------------------------------------------------------------------
  /// Sets training mode on this module and every descendant (Dropout and BatchNorm read it).
  void train(bool on = true);
  void eval() { train(false); }
  bool is_training() const { return training_; }

  // ---- the tree ------------------------------------------------------------------------------------
  /// Every parameter of the tree with its dotted name, depth first in registration order (own
  /// parameters before children's). A Variable reachable twice (a shared submodule) is listed once.
  std::vector<std::pair<std::string, Variable>> named_parameters() const;
  std::vector<Variable> parameters() const;
  /// Every buffer of the tree with its dotted name (same order and de-duplication).
  std::vector<std::pair<std::string, Tensor>> named_buffers() const;
  /// Direct children in registration order.
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> named_children() const;
  /// This module (name "") then every descendant, pre-order, each module once. Requires this module to
  /// be owned by a std::shared_ptr (make modules with std::make_shared).
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> named_modules();

  /// This module's own parameter / buffer / child by name; throws naming the module type and the name.
  const Variable& parameter(const std::string& name) const;
  Tensor& buffer(const std::string& name);
  const Tensor& buffer(const std::string& name) const;
  std::shared_ptr<Module> child(const std::string& name) const;
  /// A descendant by dotted path ("features.norm5"); throws naming the first missing component.
  std::shared_ptr<Module> submodule(const std::string& path) const;

  /// Clears the gradient of every parameter of the tree.
  void zero_grad();

  // ---- state ---------------------------------------------------------------------------------------
  /// Parameters then buffers of each module, pre-order in registration order, as PyTorch. The tensors
  /// share storage with the module (no copy). Unlike named_parameters, a shared submodule appears under
  /// each of its names, as in PyTorch.
  StateDict state_dict() const;
  /// Copies every entry of `state` into the tensor of the same name (dtype converted). Checks
  /// everything first and throws one std::invalid_argument that lists every missing key, every
  /// unexpected key (both ignored when !strict) and every shape mismatch with both shapes; on a throw
  /// nothing has been copied.
  void load_state_dict(const StateDict& state, bool strict = true);

  /// Converts every floating parameter and buffer of the tree to `dtype` (Int64 buffers such as
  /// num_batches_tracked keep theirs). Gradients are cleared. Returns *this.
  Module& to(DType dtype);
  /// Moves every parameter and buffer of the tree to `device`. Gradients are cleared.
  Module& to(Device device);

  // ---- registration (public, as in PyTorch; subclasses call these in their constructors) -------------
  /// Registers a trainable tensor: returns the Variable (a leaf with requires_grad) that the module
  /// and any optimizer share. Names must be non-empty, free of '.', and unique within this module.
  Variable register_parameter(const std::string& name, Tensor tensor);
  /// Registers non-trained state; returns the same handle (see buffer() for access after moves).
  Tensor register_buffer(const std::string& name, Tensor tensor);
  /// Registers a child; returns it with its own type for convenience.
  template <typename M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> module) {
    register_module_impl(name, module);
    return module;
  }

 private:
  void check_new_name(const std::string& name, const char* kind) const;
  void register_module_impl(const std::string& name, std::shared_ptr<Module> module);
  bool reaches(const Module* target) const;
  void collect_state(const std::string& prefix, StateDict& out) const;
  template <typename Visit>
  void visit_unique(const std::string& prefix, std::vector<const Module*>& seen, Visit&& visit) const;
  void convert_all(const std::function<Tensor(const Tensor&)>& convert, bool skip_int64);

  std::string type_name_;
  bool training_ = true;
  std::vector<std::pair<std::string, Variable>> parameters_;
  std::vector<std::pair<std::string, Tensor>> buffers_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
};

}  // namespace ladnn
