#include "doors/tensor_codec.hpp"

#include <charconv>
#include <cmath>
#include <cstring>
#include <limits>

#include <nlohmann/json.hpp>

#include "modelreg/messages/error.hpp"

namespace modelreg::doors {

using json = nlohmann::json;

namespace {

caf::error bad(const std::string& what) {
  return make_error(errc::invalid_argument, what);
}

// IEEE half <-> float (round to nearest even on the way down).
float half_to_float(uint16_t h) {
  uint32_t sign = (h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {
      exp = 127 - 15 + 1;
      while ((mant & 0x400u) == 0) {
        mant <<= 1;
        --exp;
      }
      bits = sign | (exp << 23) | ((mant & 0x3ffu) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp - 15 + 127) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t float_to_half(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  uint32_t exp = (x >> 23) & 0xffu;
  uint32_t mant = x & 0x7fffffu;
  if (exp == 0xff)
    return static_cast<uint16_t>(sign | 0x7c00u | (mant != 0 ? 0x200u : 0));
  int e = static_cast<int>(exp) - 127 + 15;
  if (e >= 31)
    return static_cast<uint16_t>(sign | 0x7c00u);
  if (e <= 0) {
    if (e < -10)
      return sign;
    mant |= 0x800000u;
    uint32_t shift = static_cast<uint32_t>(14 - e);
    uint32_t half = mant >> shift;
    uint32_t rest = mant & ((1u << shift) - 1);
    uint32_t mid = 1u << (shift - 1);
    if (rest > mid || (rest == mid && (half & 1u)))
      ++half;
    return static_cast<uint16_t>(sign | half);
  }
  uint32_t half = (static_cast<uint32_t>(e) << 10) | (mant >> 13);
  uint32_t rest = mant & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (half & 1u)))
    ++half;
  return static_cast<uint16_t>(sign | half);
}

/// Calls `f(T{})` with the C++ type of `t` (f16 as uint16_t).
template <class F>
auto visit_dtype(dtype t, F&& f) {
  switch (t) {
    case dtype::f16: return f(uint16_t{});
    case dtype::f32: return f(float{});
    case dtype::f64: return f(double{});
    case dtype::i8: return f(int8_t{});
    case dtype::i16: return f(int16_t{});
    case dtype::i32: return f(int32_t{});
    case dtype::i64: return f(int64_t{});
    case dtype::u8: return f(uint8_t{});
    case dtype::u16: return f(uint16_t{});
    case dtype::u32: return f(uint32_t{});
    case dtype::u64: return f(uint64_t{});
    case dtype::boolean: return f(bool{});
  }
  return f(uint8_t{});
}

/// Appends the leaves of nested arrays `v` (row-major) to `out`.
bool flatten(const json& v, std::vector<const json*>& out, size_t limit, int depth = 0) {
  if (!v.is_array()) {
    out.push_back(&v);
    return out.size() <= limit;
  }
  if (depth > 32)
    return false;
  for (const auto& x : v)
    if (!flatten(x, out, limit, depth + 1))
      return false;
  return true;
}

/// One JSON value into element `i` of `t`.
caf::error put(const tensor& t, size_t i, const json& v, const std::string& name) {
  auto* base = t.mutable_data();
  auto where = [&] { return "'" + name + "' element " + std::to_string(i); };
  return visit_dtype(t.type(), [&](auto tag) -> caf::error {
    using T = decltype(tag);
    T out{};
    if (t.type() == dtype::f16) {
      if (!v.is_number())
        return bad(where() + " is not a number");
      uint16_t h = float_to_half(v.get<float>());
      std::memcpy(base + i * 2, &h, 2);
      return {};
    }
    if constexpr (std::is_same_v<T, bool>) {
      if (!v.is_boolean())
        return bad(where() + " is not true or false (BOOL)");
      out = v.get<bool>();
    } else if constexpr (std::is_floating_point_v<T>) {
      if (!v.is_number())
        return bad(where() + " is not a number");
      out = v.get<T>();
    } else {
      if (v.is_number_unsigned()) {
        auto x = v.get<uint64_t>();
        if (x > static_cast<uint64_t>(std::numeric_limits<T>::max()))
          return bad(where() + " (" + std::to_string(x) + ") is out of range");
        out = static_cast<T>(x);
      } else if (v.is_number_integer()) {
        auto x = v.get<int64_t>();
        if constexpr (std::is_unsigned_v<T>) {
          if (x < 0)
            return bad(where() + " (" + std::to_string(x) + ") is negative");
          if (static_cast<uint64_t>(x) > static_cast<uint64_t>(std::numeric_limits<T>::max()))
            return bad(where() + " (" + std::to_string(x) + ") is out of range");
        } else if (x < std::numeric_limits<T>::min() || x > std::numeric_limits<T>::max()) {
          return bad(where() + " (" + std::to_string(x) + ") is out of range");
        }
        out = static_cast<T>(x);
      } else {
        return bad(where() + " is not an integer");
      }
    }
    std::memcpy(base + i * sizeof(T), &out, sizeof(T));
    return {};
  });
}

/// The elements of contiguous `t` as a JSON array's text: floats in their
/// shortest form (0.46, not 0.46000000834465027), NaN and infinities as
/// null (JSON has no such numbers).
std::string data_text(const tensor& t) {
  std::string out = "[";
  out.reserve(2 + t.element_count() * 8);
  char buf[64];
  const auto* base = t.data();
  auto put_float = [&](auto v) {
    if (!std::isfinite(v)) {
      out += "null";
      return;
    }
    auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
    out.append(buf, end);
  };
  for (size_t i = 0; i < t.element_count(); ++i) {
    if (i != 0)
      out += ',';
    visit_dtype(t.type(), [&](auto tag) {
      using T = decltype(tag);
      T v;
      std::memcpy(&v, base + i * sizeof(T), sizeof(T));
      if (t.type() == dtype::f16) {
        put_float(half_to_float(static_cast<uint16_t>(v)));
      } else if constexpr (std::is_same_v<T, bool>) {
        out += v ? "true" : "false";
      } else if constexpr (std::is_floating_point_v<T>) {
        put_float(v);
      } else {
        auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
        out.append(buf, end);
      }
    });
  }
  out += ']';
  return out;
}

std::string text_of(const tensor& t) {
  auto c = t.is_contiguous() ? t : *t.contiguous_copy();
  return std::string{reinterpret_cast<const char*>(c.data()), c.nbytes()};
}

caf::expected<tensor> text_tensor(const std::string& s) {
  auto t = tensor::allocate(dtype::u8, {static_cast<int64_t>(s.size())});
  if (t && !s.empty())
    std::memcpy(t->mutable_data(), s.data(), s.size());
  return t;
}

std::vector<int64_t> shape_of(const std::string& name, const json& j, caf::error& err) {
  std::vector<int64_t> shape;
  if (!j.is_array()) {
    err = bad("'" + name + "': shape must be an array of integers");
    return shape;
  }
  for (const auto& d : j) {
    if (!d.is_number_integer()) {
      err = bad("'" + name + "': shape must be an array of integers");
      return shape;
    }
    shape.push_back(d.get<int64_t>());
  }
  return shape;
}

bool binary_param(const json& obj, const char* key) {
  if (!obj.is_object())
    return false;
  auto p = obj.find("parameters");
  if (p == obj.end() || !p->is_object())
    return false;
  auto b = p->find(key);
  return b != p->end() && b->is_boolean() && b->get<bool>();
}

} // namespace

caf::expected<size_t> element_count(const std::string& name, const std::vector<int64_t>& shape) {
  size_t n = 1;
  for (auto d : shape) {
    if (d < 0)
      return bad("'" + name + "': shape has a negative dimension (" + std::to_string(d) + ")");
    if (d != 0 && n > (size_t{1} << 31) / static_cast<size_t>(d))
      return bad("'" + name + "': shape has too many elements (at most 2^31)");
    n *= static_cast<size_t>(d);
  }
  return n;
}

caf::expected<tensor> tensor_from_raw(const std::string& name, const std::string& datatype,
                                      const std::vector<int64_t>& shape, std::string_view bytes) {
  auto n = element_count(name, shape);
  if (!n)
    return n.error();
  if (datatype == "BYTES") {
    if (*n != 1)
      return bad("'" + name + "': BYTES tensors of one element only (a modelreg tensor holds one "
                 "string as UINT8); shape has " + std::to_string(*n));
    if (bytes.size() < 4)
      return bad("'" + name + "': BYTES data needs a 4-byte length first");
    uint32_t len;
    std::memcpy(&len, bytes.data(), 4);
    if (len != bytes.size() - 4)
      return bad("'" + name + "': BYTES element says " + std::to_string(len) + " bytes, " +
                 std::to_string(bytes.size() - 4) + " follow");
    return text_tensor(std::string{bytes.substr(4)});
  }
  auto type = oip::parse_datatype(datatype);
  if (!type)
    return bad("'" + name + "': unknown datatype '" + datatype +
               "' (BOOL, UINT8..UINT64, INT8..INT64, FP16, FP32, FP64, BYTES)");
  auto want = *n * itemsize(*type);
  if (bytes.size() != want)
    return bad("'" + name + "': " + datatype + " shape needs " + std::to_string(want) +
               " bytes, the data has " + std::to_string(bytes.size()));
  auto t = tensor::allocate(*type, shape);
  if (!t)
    return t;
  if (want > 0)
    std::memcpy(t->mutable_data(), bytes.data(), want);
  return t;
}

caf::expected<infer_call> decode_infer_request(std::string_view header, std::string_view binary) {
  auto doc = json::parse(header.begin(), header.end(), nullptr, false);
  if (doc.is_discarded())
    return bad("the request is not valid JSON");
  if (!doc.is_object())
    return bad("the request must be a JSON object");
  infer_call call;
  if (auto id = doc.find("id"); id != doc.end()) {
    if (!id->is_string())
      return bad("'id' must be a string");
    call.id = id->get<std::string>();
  }
  call.binary_outputs = binary_param(doc, "binary_data_output");
  auto inputs = doc.find("inputs");
  if (inputs == doc.end() || !inputs->is_array() || inputs->empty())
    return bad("'inputs' must be a non-empty array");
  size_t offset = 0;
  for (const auto& in : *inputs) {
    if (!in.is_object() || !in.contains("name") || !in["name"].is_string())
      return bad("every input needs a string 'name'");
    auto name = in["name"].get<std::string>();
    if (call.inputs.count(name) != 0)
      return bad("input '" + name + "' is given twice");
    if (!in.contains("datatype") || !in["datatype"].is_string())
      return bad("'" + name + "' needs a string 'datatype'");
    auto datatype = in["datatype"].get<std::string>();
    if (!in.contains("shape"))
      return bad("'" + name + "' needs a 'shape'");
    caf::error err;
    auto shape = shape_of(name, in["shape"], err);
    if (err)
      return err;
    auto n = element_count(name, shape);
    if (!n)
      return n.error();
    // Binary: the next binary_data_size bytes after the JSON.
    int64_t binary_size = -1;
    if (auto p = in.find("parameters"); p != in.end() && p->is_object()) {
      if (auto b = p->find("binary_data_size"); b != p->end()) {
        if (!b->is_number_unsigned())
          return bad("'" + name + "': binary_data_size must be a non-negative integer");
        binary_size = b->get<int64_t>();
      }
    }
    if (binary_size >= 0) {
      if (offset + static_cast<size_t>(binary_size) > binary.size())
        return bad("'" + name + "': binary_data_size " + std::to_string(binary_size) +
                   " reaches past the end of the body (" + std::to_string(binary.size() - offset) +
                   " binary bytes left): truncated?");
      auto t = tensor_from_raw(name, datatype, shape,
                               binary.substr(offset, static_cast<size_t>(binary_size)));
      if (!t)
        return t.error();
      offset += static_cast<size_t>(binary_size);
      call.inputs.emplace(name, std::move(*t));
      continue;
    }
    if (!in.contains("data"))
      return bad("'" + name + "' has neither 'data' nor parameters.binary_data_size");
    std::vector<const json*> leaves;
    if (!flatten(in["data"], leaves, *n))
      return bad("'" + name + "': 'data' has more values than shape " + json(shape).dump() +
                 " holds (" + std::to_string(*n) + ")");
    if (leaves.size() != *n)
      return bad("'" + name + "': 'data' has " + std::to_string(leaves.size()) +
                 " values but shape " + json(shape).dump() + " needs " + std::to_string(*n));
    if (datatype == "BYTES") {
      if (*n != 1)
        return bad("'" + name + "': BYTES tensors of one element only (a modelreg tensor holds "
                   "one string as UINT8); shape has " + std::to_string(*n));
      if (!leaves[0]->is_string())
        return bad("'" + name + "': BYTES data must be a string");
      auto t = text_tensor(leaves[0]->get<std::string>());
      if (!t)
        return t.error();
      call.inputs.emplace(name, std::move(*t));
      continue;
    }
    auto type = oip::parse_datatype(datatype);
    if (!type)
      return bad("'" + name + "': unknown datatype '" + datatype +
                 "' (BOOL, UINT8..UINT64, INT8..INT64, FP16, FP32, FP64, BYTES)");
    auto t = tensor::allocate(*type, shape);
    if (!t)
      return t.error();
    for (size_t i = 0; i < leaves.size(); ++i)
      if (auto e = put(*t, i, *leaves[i], name))
        return e;
    call.inputs.emplace(name, std::move(*t));
  }
  if (offset != binary.size())
    return bad("the body has " + std::to_string(binary.size() - offset) +
               " binary bytes no input claims");
  if (auto outs = doc.find("outputs"); outs != doc.end()) {
    if (!outs->is_array())
      return bad("'outputs' must be an array");
    for (const auto& o : *outs) {
      if (!o.is_object() || !o.contains("name") || !o["name"].is_string())
        return bad("every requested output needs a string 'name'");
      call.outputs.push_back({o["name"].get<std::string>(),
                              binary_param(o, "binary_data") || call.binary_outputs});
    }
  }
  return call;
}

std::pair<std::string, std::vector<int64_t>> wire_form(const tensor& t, bool text) {
  if (text && t.type() == dtype::u8)
    return {"BYTES", {1}};
  return {oip::datatype_name(t.type()), t.shape()};
}

std::string raw_of(const tensor& t, bool text) {
  if (text && t.type() == dtype::u8) {
    auto s = text_of(t);
    auto len = static_cast<uint32_t>(s.size());
    std::string out(4, '\0');
    std::memcpy(out.data(), &len, 4);
    return out + s;
  }
  auto c = t.is_contiguous() ? t : *t.contiguous_copy();
  return std::string{reinterpret_cast<const char*>(c.data()), c.nbytes()};
}

caf::expected<encoded_response> encode_infer_response(const std::string& model,
                                                      const infer_call& call,
                                                      const tensor_map& outputs,
                                                      const text_test& is_text) {
  std::vector<requested_output> wanted = call.outputs;
  if (wanted.empty())
    for (const auto& [name, _] : outputs)
      wanted.push_back({name, call.binary_outputs});
  json doc{{"model_name", model}, {"model_version", "1"}};
  if (!call.id.empty())
    doc["id"] = call.id;
  // Each output's JSON; numeric data arrays are written as text and
  // spliced in (nlohmann would print every float as a double).
  std::vector<std::string> outs;
  std::string binary;
  for (const auto& w : wanted) {
    auto i = outputs.find(w.name);
    if (i == outputs.end()) {
      std::string names;
      for (const auto& [n, _] : outputs)
        names += (names.empty() ? "" : ", ") + n;
      return bad("the model has no output '" + w.name + "' (it gave: " + names + ")");
    }
    const auto& t = i->second;
    bool text = is_text(w.name);
    auto [datatype, shape] = wire_form(t, text);
    json o{{"name", w.name}, {"datatype", datatype}, {"shape", shape}};
    if (w.binary) {
      auto raw = raw_of(t, text);
      o["parameters"] = {{"binary_data_size", raw.size()}};
      binary += raw;
    } else if (datatype == "BYTES") {
      o["data"] = json::array({text_of(t)});
    } else {
      auto c = t.is_contiguous() ? t : *t.contiguous_copy();
      auto text = o.dump();
      text.pop_back(); // '}'
      text += ",\"data\":" + data_text(c) + "}";
      outs.push_back(std::move(text));
      continue;
    }
    outs.push_back(o.dump());
  }
  doc["outputs"] = json::array();
  encoded_response r;
  r.body = doc.dump();
  // {...,"outputs":[]} -> {...,"outputs":[o1,o2]}
  auto at = r.body.rfind("[]");
  std::string joined;
  for (size_t k = 0; k < outs.size(); ++k)
    joined += (k == 0 ? "" : ",") + outs[k];
  r.body.replace(at, 2, "[" + joined + "]");
  r.json_length = r.body.size();
  r.body += binary;
  return r;
}

json metadata_json(const oip::model_meta& meta) {
  auto tensors = [](const std::vector<oip::tensor_meta>& xs) {
    auto out = json::array();
    for (const auto& t : xs) {
      json j{{"name", t.name}, {"datatype", t.datatype}, {"shape", t.shape}};
      if (t.optional)
        j["parameters"] = {{"optional", true}};
      out.push_back(std::move(j));
    }
    return out;
  };
  return json{{"name", meta.name},
              {"versions", {"1"}},
              {"platform", meta.platform},
              {"inputs", tensors(meta.inputs)},
              {"outputs", tensors(meta.outputs)}};
}

} // namespace modelreg::doors
