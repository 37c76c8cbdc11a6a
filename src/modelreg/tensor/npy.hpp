// NumPy `.npy` files (format versions 1.0, 2.0 and 3.0) in and out of
// tensors: the format pipeline users already have their arrays in.
//
// Reading accepts little-endian (or byte-order-free) numeric and bool dtypes
// in C order; Fortran order, big-endian data, object arrays and structured
// dtypes get `invalid_argument` naming what is wrong, as does a file shorter
// than its header says. Writing produces version 1.0 (2.0 for huge headers),
// C order.
#pragma once

#include <string>

#include <caf/expected.hpp>

#include "modelreg/tensor/tensor.hpp"

namespace modelreg::npy {

/// Parses a whole .npy file held in memory into a heap tensor.
caf::expected<tensor> parse(const std::string& bytes);

/// Reads the .npy file at `path`.
caf::expected<tensor> load(const std::string& path);

/// The .npy encoding of `t` (any layout; written C-contiguous).
caf::expected<std::string> serialize(const tensor& t);

/// Writes `t` to `path`.
caf::error save(const std::string& path, const tensor& t);

} // namespace modelreg::npy
