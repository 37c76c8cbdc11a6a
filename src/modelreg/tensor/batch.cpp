#include "modelreg/tensor/batch.hpp"

#include <cstring>
#include <numeric>
#include <string>

#include "modelreg/messages/error.hpp"

namespace modelreg {

namespace {

/// Copies `t` (any layout) into `dst` as C-contiguous bytes.
caf::error copy_contiguous(const tensor& t, std::byte* dst) {
  if (t.is_contiguous()) {
    std::memcpy(dst, t.data(), t.nbytes());
    return {};
  }
  auto copy = t.contiguous_copy();
  if (!copy)
    return copy.error();
  std::memcpy(dst, copy->data(), copy->nbytes());
  return {};
}

} // namespace

int64_t batch_rows(const tensor_map& inputs) {
  int64_t rows = -1;
  for (const auto& [name, t] : inputs) {
    if (t.rank() == 0)
      return -1;
    if (rows >= 0 && t.shape()[0] != rows)
      return -1;
    rows = t.shape()[0];
  }
  return rows;
}

bool batch_compatible(const tensor_map& a, const tensor_map& b) {
  if (a.size() != b.size())
    return false;
  for (auto i = a.begin(), j = b.begin(); i != a.end(); ++i, ++j) {
    if (i->first != j->first || i->second.type() != j->second.type() ||
        i->second.rank() != j->second.rank())
      return false;
    for (size_t d = 1; d < i->second.rank(); ++d)
      if (i->second.shape()[d] != j->second.shape()[d])
        return false;
  }
  return true;
}

caf::expected<tensor_map> concat_rows(const std::vector<const tensor_map*>& parts) {
  if (parts.empty())
    return make_error(errc::invalid_argument, "nothing to batch");
  int64_t total = 0;
  for (const auto* p : parts) {
    auto rows = batch_rows(*p);
    if (rows < 0 || !batch_compatible(*parts.front(), *p))
      return make_error(errc::invalid_argument, "requests that cannot be batched together");
    total += rows;
  }
  tensor_map joined;
  for (const auto& [name, first] : *parts.front()) {
    auto shape = first.shape();
    shape[0] = total;
    auto t = tensor::allocate(first.type(), shape);
    if (!t)
      return t.error();
    auto* dst = t->mutable_data();
    for (const auto* p : parts) {
      const auto& part = p->at(name);
      if (auto err = copy_contiguous(part, dst))
        return err;
      dst += part.nbytes();
    }
    joined.emplace(name, std::move(*t));
  }
  return joined;
}

caf::expected<std::vector<tensor_map>> split_rows(const tensor_map& outputs,
                                                  const std::vector<int64_t>& rows) {
  auto total = std::accumulate(rows.begin(), rows.end(), int64_t{0});
  std::vector<tensor_map> answers(rows.size());
  for (const auto& [name, t] : outputs) {
    if (t.rank() == 0 || t.shape()[0] != total || !t.is_contiguous())
      return make_error(errc::infer_failed, "batched output '" + name +
                                              "' does not have one row per input row (" +
                                              std::to_string(total) + " rows)");
    auto row_bytes = total == 0 ? 0 : t.nbytes() / static_cast<size_t>(total);
    size_t offset = t.byte_offset();
    for (size_t k = 0; k < rows.size(); ++k) {
      tensor_layout layout;
      layout.type = t.type();
      layout.shape = t.shape();
      layout.shape[0] = rows[k];
      layout.byte_offset = offset;
      auto view = tensor::wrap(t.owner(), t.storage_base(), t.storage_capacity(), layout);
      if (!view)
        return view.error();
      answers[k].emplace(name, std::move(*view));
      offset += row_bytes * static_cast<size_t>(rows[k]);
    }
  }
  return answers;
}

} // namespace modelreg
