// Element types of tensors, with the names and sizes used on the wire,
// in .npy files and in DLPack.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace modelreg {

/// The element type of a tensor. Values are stable: they travel on the wire.
enum class dtype : uint8_t {
  f16 = 1, f32 = 2, f64 = 3,
  i8 = 10, i16 = 11, i32 = 12, i64 = 13,
  u8 = 20, u16 = 21, u32 = 22, u64 = 23,
  boolean = 30,
};

/// Bytes per element, or 0 for a value outside the enum.
size_t itemsize(dtype t) noexcept;

/// "f32", "i16", ... (NumPy-style short names).
std::string to_string(dtype t);

/// Parses "f32"/"float32", "i16"/"int16", "bool", ...; nothing if unknown.
std::optional<dtype> parse_dtype(std::string_view name);

/// True if `raw` names a member of the enum (for untrusted input).
bool is_valid_dtype(uint8_t raw) noexcept;

/// The dtype of a C++ element type.
template <class T> constexpr dtype dtype_of();
template <> constexpr dtype dtype_of<float>() { return dtype::f32; }
template <> constexpr dtype dtype_of<double>() { return dtype::f64; }
template <> constexpr dtype dtype_of<int8_t>() { return dtype::i8; }
template <> constexpr dtype dtype_of<int16_t>() { return dtype::i16; }
template <> constexpr dtype dtype_of<int32_t>() { return dtype::i32; }
template <> constexpr dtype dtype_of<int64_t>() { return dtype::i64; }
template <> constexpr dtype dtype_of<uint8_t>() { return dtype::u8; }
template <> constexpr dtype dtype_of<uint16_t>() { return dtype::u16; }
template <> constexpr dtype dtype_of<uint32_t>() { return dtype::u32; }
template <> constexpr dtype dtype_of<uint64_t>() { return dtype::u64; }
template <> constexpr dtype dtype_of<bool>() { return dtype::boolean; }

} // namespace modelreg
