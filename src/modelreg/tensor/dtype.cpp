#include "modelreg/tensor/dtype.hpp"

#include <array>
#include <utility>

namespace modelreg {

namespace {

struct dtype_info {
  dtype type;
  size_t size;
  std::string_view name;
  std::string_view long_name;
};

constexpr std::array<dtype_info, 12> dtypes{{
  {dtype::f16, 2, "f16", "float16"},
  {dtype::f32, 4, "f32", "float32"},
  {dtype::f64, 8, "f64", "float64"},
  {dtype::i8, 1, "i8", "int8"},
  {dtype::i16, 2, "i16", "int16"},
  {dtype::i32, 4, "i32", "int32"},
  {dtype::i64, 8, "i64", "int64"},
  {dtype::u8, 1, "u8", "uint8"},
  {dtype::u16, 2, "u16", "uint16"},
  {dtype::u32, 4, "u32", "uint32"},
  {dtype::u64, 8, "u64", "uint64"},
  {dtype::boolean, 1, "bool", "boolean"},
}};

const dtype_info* find(dtype t) noexcept {
  for (const auto& d : dtypes)
    if (d.type == t)
      return &d;
  return nullptr;
}

} // namespace

size_t itemsize(dtype t) noexcept {
  auto* d = find(t);
  return d ? d->size : 0;
}

std::string to_string(dtype t) {
  auto* d = find(t);
  return d ? std::string{d->name} : "dtype(" + std::to_string(static_cast<int>(t)) + ")";
}

std::optional<dtype> parse_dtype(std::string_view name) {
  for (const auto& d : dtypes)
    if (d.name == name || d.long_name == name)
      return d.type;
  return std::nullopt;
}

bool is_valid_dtype(uint8_t raw) noexcept {
  return find(static_cast<dtype>(raw)) != nullptr;
}

} // namespace modelreg
