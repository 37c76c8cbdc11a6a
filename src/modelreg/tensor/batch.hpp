// The arithmetic of dynamic batching: which requests can run as one model
// call, joining their inputs along dimension 0, and giving each caller its
// own rows of the outputs back. Pure functions of tensors; no actors.
#pragma once

#include <cstdint>
#include <vector>

#include <caf/expected.hpp>

#include "modelreg/tensor/tensor.hpp"

namespace modelreg {

/// Rows of a request (dimension 0 of every input), or -1 if it cannot join
/// a batch: no inputs, a scalar, or inputs that disagree on their rows.
int64_t batch_rows(const tensor_map& inputs);

/// True if `a` and `b` can be concatenated: the same names, dtypes, ranks and
/// trailing dimensions.
bool batch_compatible(const tensor_map& a, const tensor_map& b);

/// The inputs of `parts` (compatible, each with `batch_rows` ≥ 0) joined
/// along dimension 0 into new contiguous tensors, in the order given.
caf::expected<tensor_map> concat_rows(const std::vector<const tensor_map*>& parts);

/// Each part's rows of every output: `rows[k]` rows for part k, in order,
/// as views of `outputs`' storage (no copy). An output without one row per
/// input row is the model's fault: `infer_failed` naming the output.
caf::expected<std::vector<tensor_map>> split_rows(const tensor_map& outputs,
                                                  const std::vector<int64_t>& rows);

} // namespace modelreg
