#include "modelreg/tensor/npy.hpp"

#include <cstring>
#include <fstream>
#include <regex>
#include <sstream>

#include "modelreg/messages/error.hpp"

namespace modelreg::npy {

namespace {

constexpr char magic[] = "\x93NUMPY";
constexpr size_t magic_len = 6;

struct descr_entry {
  const char* code; // without the byte-order character
  dtype type;
};

constexpr descr_entry descrs[] = {
  {"f2", dtype::f16}, {"f4", dtype::f32}, {"f8", dtype::f64}, {"i1", dtype::i8},
  {"i2", dtype::i16}, {"i4", dtype::i32}, {"i8", dtype::i64}, {"u1", dtype::u8},
  {"u2", dtype::u16}, {"u4", dtype::u32}, {"u8", dtype::u64}, {"b1", dtype::boolean},
};

caf::error bad(const std::string& what) {
  return make_error(errc::invalid_argument, "npy: " + what);
}

} // namespace

caf::expected<tensor> parse(const std::string& bytes) {
  if (bytes.size() < magic_len + 4 || std::memcmp(bytes.data(), magic, magic_len) != 0)
    return bad("not a .npy file (bad magic)");
  auto major = static_cast<uint8_t>(bytes[6]);
  size_t header_len = 0;
  size_t header_start = 0;
  if (major == 1) {
    header_len = static_cast<uint8_t>(bytes[8]) | (size_t{static_cast<uint8_t>(bytes[9])} << 8);
    header_start = 10;
  } else if (major == 2 || major == 3) {
    if (bytes.size() < 12)
      return bad("truncated header");
    for (int i = 3; i >= 0; --i)
      header_len = (header_len << 8) | static_cast<uint8_t>(bytes[8 + static_cast<size_t>(i)]);
    header_start = 12;
  } else {
    return bad("unsupported format version " + std::to_string(major));
  }
  if (header_start + header_len > bytes.size())
    return bad("truncated header");
  auto header = bytes.substr(header_start, header_len);
  std::smatch m;
  static const std::regex descr_re{R"('descr'\s*:\s*'([<>|=])([A-Za-z][0-9]*)')"};
  static const std::regex fortran_re{R"('fortran_order'\s*:\s*(True|False))"};
  static const std::regex shape_re{R"('shape'\s*:\s*\(([^)]*)\))"};
  if (!std::regex_search(header, m, descr_re))
    return bad("no simple 'descr' in the header (structured or object arrays are not supported)");
  auto order = m[1].str();
  auto code = m[2].str();
  const descr_entry* entry = nullptr;
  for (const auto& d : descrs)
    if (code == d.code)
      entry = &d;
  if (entry == nullptr)
    return bad("unsupported dtype '" + order + code + "'");
  if (order == ">" && itemsize(entry->type) > 1)
    return bad("big-endian data ('" + order + code + "') is not supported");
  if (!std::regex_search(header, m, fortran_re))
    return bad("no 'fortran_order' in the header");
  if (m[1].str() == "True")
    return bad("Fortran-order arrays are not supported (save with numpy.ascontiguousarray)");
  if (!std::regex_search(header, m, shape_re))
    return bad("no 'shape' in the header");
  std::vector<int64_t> shape;
  std::stringstream dims{m[1].str()};
  std::string dim;
  while (std::getline(dims, dim, ',')) {
    auto first = dim.find_first_not_of(" \t");
    if (first == std::string::npos)
      continue;
    try {
      size_t used = 0;
      auto v = std::stoll(dim.substr(first), &used);
      if (v < 0)
        return bad("negative dimension");
      shape.push_back(v);
    } catch (const std::exception&) {
      return bad("bad dimension '" + dim + "'");
    }
  }
  // Checked before allocating: a header may claim any shape.
  auto data_start = header_start + header_len;
  uint64_t needed = itemsize(entry->type);
  for (auto d : shape)
    if (__builtin_mul_overflow(needed, static_cast<uint64_t>(d), &needed))
      return bad("shape overflows");
  if (bytes.size() - data_start < needed)
    return bad("file holds " + std::to_string(bytes.size() - data_start) + " data bytes, its " +
               "shape needs " + std::to_string(needed));
  auto t = tensor::allocate(entry->type, shape);
  if (!t)
    return t.error();
  if (t->nbytes() > 0)
    std::memcpy(t->mutable_data(), bytes.data() + data_start, t->nbytes());
  return t;
}

caf::expected<tensor> load(const std::string& path) {
  std::ifstream in{path, std::ios::binary};
  if (!in)
    return bad("cannot read '" + path + "'");
  std::stringstream buf;
  buf << in.rdbuf();
  auto t = parse(buf.str());
  if (!t)
    return make_error(errc::invalid_argument, path + ": " + describe(t.error()));
  return t;
}

caf::expected<std::string> serialize(const tensor& t) {
  const descr_entry* entry = nullptr;
  for (const auto& d : descrs)
    if (d.type == t.type())
      entry = &d;
  if (entry == nullptr)
    return bad("dtype " + to_string(t.type()) + " has no .npy encoding");
  // Python tuple syntax: "()", "(4,)", "(2, 3)".
  std::string shape;
  for (size_t i = 0; i < t.rank(); ++i)
    shape += (i == 0 ? "" : ", ") + std::to_string(t.shape()[i]);
  if (t.rank() == 1)
    shape += ",";
  std::string order = itemsize(t.type()) == 1 ? "|" : "<";
  std::string dict = "{'descr': '" + order + entry->code + "', 'fortran_order': False, 'shape': (" +
                     shape + "), }";
  size_t prefix = magic_len + 2 + 2;
  size_t total = prefix + dict.size() + 1;
  bool v2 = false;
  if (((total + 63) / 64) * 64 - prefix > 65535) {
    v2 = true;
    prefix += 2;
    total += 2;
  }
  dict.append(((total + 63) / 64) * 64 - total, ' ');
  dict += '\n';
  std::string out{magic, magic_len};
  out += static_cast<char>(v2 ? 2 : 1);
  out += '\0';
  auto len = dict.size();
  out += static_cast<char>(len & 0xff);
  out += static_cast<char>((len >> 8) & 0xff);
  if (v2) {
    out += static_cast<char>((len >> 16) & 0xff);
    out += static_cast<char>((len >> 24) & 0xff);
  }
  out += dict;
  if (t.is_contiguous()) {
    out.append(reinterpret_cast<const char*>(t.data()), t.nbytes());
  } else {
    auto copy = t.contiguous_copy();
    if (!copy)
      return copy.error();
    out.append(reinterpret_cast<const char*>(copy->data()), copy->nbytes());
  }
  return out;
}

caf::error save(const std::string& path, const tensor& t) {
  auto bytes = serialize(t);
  if (!bytes)
    return bytes.error();
  std::ofstream out{path, std::ios::binary | std::ios::trunc};
  if (!out)
    return bad("cannot write '" + path + "'");
  out.write(bytes->data(), static_cast<std::streamsize>(bytes->size()));
  if (!out)
    return bad("writing '" + path + "' failed");
  return {};
}

} // namespace modelreg::npy
