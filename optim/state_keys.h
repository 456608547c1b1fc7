// optim/state_keys.h — internal: checks an OptimizerState against an optimizer's parameters before
// anything is restored, so a bad checkpoint is refused whole, with the offending key named.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "optim/optimizer.h"

namespace ladnn::optim_detail {

/// Splits "<i>.<field>" into i and field; false for any other form ("lr", "x.exp_avg", "1.").
bool parse_param_key(const std::string& key, std::size_t& index, std::string& field);

/// Checks that `state` holds every scalar of `global_scalars`; that every other key is
/// "<i>.<field>" with i a parameter index and field one of `tensor_fields` / `scalar_fields`; that a
/// parameter with any per-parameter key has all of them; and that each tensor has its parameter's
/// shape. Throws std::invalid_argument naming `who` and the key. Returns, per parameter, whether the
/// state carries its per-parameter entries.
std::vector<bool> validate_state(const std::string& who, const OptimizerState& state,
                                 const std::vector<Variable>& params,
                                 const std::vector<std::string>& tensor_fields,
                                 const std::vector<std::string>& scalar_fields,
                                 const std::vector<std::string>& global_scalars);

/// The saved tensor as this optimizer's own copy, in the parameter's dtype and on its device.
Tensor restore_tensor(const Tensor& saved, const Variable& param);

}  // namespace ladnn::optim_detail
