// DLPack interchange: hand a modelreg tensor to NumPy, PyTorch or any DLPack
// consumer without a copy, and take theirs the same way.
//
// Export: the DLManagedTensor holds a copy of the tensor, and so a hold on its
// storage (heap memory, a shared-memory lease, ...); the consumer's call to
// `deleter` releases it. Import: the returned tensor views the producer's
// memory and calls the producer's `deleter` when its last copy dies. CPU
// tensors only. DLPack 0.6 has no boolean type: `boolean` tensors are
// exported as 8-bit unsigned integers.
#pragma once

#include <caf/expected.hpp>

#include "modelreg/tensor/tensor.hpp"

struct DLManagedTensor;

namespace modelreg {

/// Exports `t`. The caller owns the result and must call its `deleter` once.
DLManagedTensor* to_dlpack(const tensor& t);

/// Imports `managed` (taking ownership: its deleter runs when the tensor's
/// last copy goes, or at once if the import fails). `writable` says whether
/// the producer allows writes.
caf::expected<tensor> from_dlpack(DLManagedTensor* managed, bool writable = false);

} // namespace modelreg
