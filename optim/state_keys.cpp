// optim/state_keys.cpp — validation of optimizer state dicts (see state_keys.h).
#include "optim/state_keys.h"

#include <algorithm>

namespace ladnn::optim_detail {

bool parse_param_key(const std::string& key, std::size_t& index, std::string& field) {
  std::size_t dot = key.find('.');
  if (dot == std::string::npos || dot == 0 || dot + 1 >= key.size()) return false;
  if (dot > 9) return false;  // no optimizer holds a billion parameters; avoids overflow
  for (std::size_t k = 0; k < dot; ++k)
    if (key[k] < '0' || key[k] > '9') return false;
  index = std::stoul(key.substr(0, dot));
  field = key.substr(dot + 1);
  return true;
}

std::vector<bool> validate_state(const std::string& who, const OptimizerState& state,
                                 const std::vector<Variable>& params,
                                 const std::vector<std::string>& tensor_fields,
                                 const std::vector<std::string>& scalar_fields,
                                 const std::vector<std::string>& global_scalars) {
  const std::string where = who + "::load_state_dict: ";
  auto listed = [](const std::vector<std::string>& names, const std::string& name) {
    return std::find(names.begin(), names.end(), name) != names.end();
  };
  for (const std::string& name : global_scalars)
    check(state.scalars.count(name) == 1, where + "missing scalar '" + name + "'");

  std::vector<bool> has(params.size(), false);
  auto check_param_key = [&](const std::string& key, const std::vector<std::string>& fields,
                             const char* kind) {
    std::size_t i = 0;
    std::string field;
    check(parse_param_key(key, i, field) && listed(fields, field),
          where + "unexpected " + kind + " '" + key + "'");
    check(i < params.size(), where + kind + " '" + key + "' names parameter " + std::to_string(i) +
                                 ", but the optimizer has " + std::to_string(params.size()));
    has[i] = true;
  };
  for (const auto& item : state.scalars)
    if (!listed(global_scalars, item.first)) check_param_key(item.first, scalar_fields, "scalar");
  for (const auto& item : state.tensors) check_param_key(item.first, tensor_fields, "tensor");

  for (std::size_t i = 0; i < params.size(); ++i) {
    if (!has[i]) continue;
    const std::string prefix = std::to_string(i) + ".";
    for (const std::string& field : tensor_fields) {
      auto it = state.tensors.find(prefix + field);
      check(it != state.tensors.end(), where + "missing tensor '" + prefix + field + "'");
      check(it->second.defined(), where + "tensor '" + prefix + field + "' is undefined");
      check(it->second.shape() == params[i].shape(),
            where + "tensor '" + prefix + field + "' has shape " + shape_str(it->second.shape()) +
                ", but parameter " + std::to_string(i) + " has shape " + shape_str(params[i].shape()));
    }
    for (const std::string& field : scalar_fields)
      check(state.scalars.count(prefix + field) == 1, where + "missing scalar '" + prefix + field + "'");
  }
  return has;
}

Tensor restore_tensor(const Tensor& saved, const Variable& param) {
  Tensor out = Tensor::empty(param.shape(), param.dtype(), param.tensor().device());
  out.copy_(saved);
  return out;
}

}  // namespace ladnn::optim_detail
