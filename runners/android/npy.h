// Minimal, exact .npy reading and writing for bisect_lite_runner.
//
// Supported element types: float32, float16, float64, int64, int32, int16, int8,
// uint8 and bool, little-endian ('<', '|' or native '=' on a little-endian host),
// C order only. Reads format versions 1.0, 2.0 and 3.0; writes version 1.0.
// Errors are reported as NpyError with a one-line message.
#ifndef BISECT_LITE_NPY_H_
#define BISECT_LITE_NPY_H_

#include <cctype>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

namespace npy {

class NpyError : public std::runtime_error {
 public:
  explicit NpyError(const std::string& what) : std::runtime_error(what) {}
};

enum class DType { kFloat32, kFloat16, kFloat64, kInt64, kInt32, kInt16, kInt8, kUInt8, kBool };

struct DTypeInfo {
  DType dtype;
  char kind;        // numpy kind character: 'f', 'i', 'u', 'b'
  int size;         // bytes per element
  const char* descr;  // descr written to headers
  const char* name;   // numpy dtype name
};

inline const DTypeInfo* AllDTypes(size_t* count) {
  static const DTypeInfo kTable[] = {
      {DType::kFloat32, 'f', 4, "<f4", "float32"}, {DType::kFloat16, 'f', 2, "<f2", "float16"},
      {DType::kFloat64, 'f', 8, "<f8", "float64"}, {DType::kInt64, 'i', 8, "<i8", "int64"},
      {DType::kInt32, 'i', 4, "<i4", "int32"},     {DType::kInt16, 'i', 2, "<i2", "int16"},
      {DType::kInt8, 'i', 1, "|i1", "int8"},       {DType::kUInt8, 'u', 1, "|u1", "uint8"},
      {DType::kBool, 'b', 1, "|b1", "bool"},
  };
  *count = sizeof(kTable) / sizeof(kTable[0]);
  return kTable;
}

inline const DTypeInfo& Info(DType dtype) {
  size_t n = 0;
  const DTypeInfo* table = AllDTypes(&n);
  for (size_t i = 0; i < n; ++i) {
    if (table[i].dtype == dtype) return table[i];
  }
  throw NpyError("unknown dtype");
}

struct Array {
  DType dtype = DType::kFloat32;
  std::vector<int64_t> shape;  // empty for a 0-d array
  std::string data;            // raw little-endian bytes, C order

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
};

// Product of the dimensions with overflow and sign checks (throws NpyError).
inline int64_t CheckedNumel(const std::vector<int64_t>& shape, int item_size) {
  const int64_t limit = std::numeric_limits<int64_t>::max() / item_size;
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) throw NpyError("negative dimension in shape");
    if (d != 0 && n > limit / d) throw NpyError("shape is too large");
    n *= d;
  }
  return n;
}

namespace detail {

inline bool HostIsLittleEndian() {
  const uint16_t probe = 1;
  unsigned char first = 0;
  std::memcpy(&first, &probe, 1);
  return first == 1;
}

// A tiny parser for the Python dict literal stored in a .npy header.
class HeaderParser {
 public:
  explicit HeaderParser(const std::string& text) : s_(text) {}

  void Parse(std::string* descr, bool* fortran_order, std::vector<int64_t>* shape) {
    bool have_descr = false, have_order = false, have_shape = false;
    SkipSpace();
    Expect('{');
    for (;;) {
      SkipSpace();
      if (Peek() == '}') {
        ++pos_;
        break;
      }
      const std::string key = ParseString();
      SkipSpace();
      Expect(':');
      SkipSpace();
      if (key == "descr") {
        if (Peek() != '\'' && Peek() != '"') Fail("descr must be a simple type string (structured dtypes are unsupported)");
        *descr = ParseString();
        have_descr = true;
      } else if (key == "fortran_order") {
        *fortran_order = ParseBool();
        have_order = true;
      } else if (key == "shape") {
        *shape = ParseTuple();
        have_shape = true;
      } else {
        SkipValue();
      }
      SkipSpace();
      if (Peek() == ',') {
        ++pos_;
      } else if (Peek() != '}') {
        Fail("expected ',' or '}'");
      }
    }
    SkipSpace();
    if (pos_ != s_.size()) Fail("unexpected text after the dictionary");
    if (!have_descr || !have_order || !have_shape) Fail("header lacks descr, fortran_order or shape");
  }

 private:
  char Peek() const { return pos_ < s_.size() ? s_[pos_] : '\0'; }
  void SkipSpace() {
    while (pos_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[pos_]))) ++pos_;
  }
  [[noreturn]] void Fail(const std::string& why) const {
    throw NpyError("malformed header (" + why + " at offset " + std::to_string(pos_) + ")");
  }
  void Expect(char c) {
    if (Peek() != c) Fail(std::string("expected '") + c + "'");
    ++pos_;
  }
  std::string ParseString() {
    const char quote = Peek();
    if (quote != '\'' && quote != '"') Fail("expected a quoted string");
    ++pos_;
    std::string out;
    while (pos_ < s_.size() && s_[pos_] != quote) out += s_[pos_++];
    if (pos_ >= s_.size()) Fail("unterminated string");
    ++pos_;
    return out;
  }
  bool ParseBool() {
    if (s_.compare(pos_, 4, "True") == 0) {
      pos_ += 4;
      return true;
    }
    if (s_.compare(pos_, 5, "False") == 0) {
      pos_ += 5;
      return false;
    }
    Fail("expected True or False");
  }
  std::vector<int64_t> ParseTuple() {
    std::vector<int64_t> dims;
    Expect('(');
    for (;;) {
      SkipSpace();
      if (Peek() == ')') {
        ++pos_;
        return dims;
      }
      if (!std::isdigit(static_cast<unsigned char>(Peek()))) Fail("expected a non-negative integer");
      int64_t v = 0;
      while (std::isdigit(static_cast<unsigned char>(Peek()))) {
        const int digit = Peek() - '0';
        if (v > (std::numeric_limits<int64_t>::max() - digit) / 10) Fail("dimension too large");
        v = v * 10 + digit;
        ++pos_;
      }
      if (Peek() == 'L') ++pos_;  // Python 2 long suffix
      dims.push_back(v);
      SkipSpace();
      if (Peek() == ',') {
        ++pos_;
      } else if (Peek() != ')') {
        Fail("expected ',' or ')'");
      }
    }
  }
  void SkipValue() {
    int depth = 0;
    while (pos_ < s_.size()) {
      const char c = s_[pos_];
      if (c == '\'' || c == '"') {
        ParseString();
        continue;
      }
      if (c == '(' || c == '[' || c == '{') ++depth;
      if (c == ')' || c == ']' || c == '}') {
        if (depth == 0) return;
        --depth;
      }
      if (c == ',' && depth == 0) return;
      ++pos_;
    }
    Fail("unterminated value");
  }

  const std::string& s_;
  size_t pos_ = 0;
};

// Header text quoted in messages: printable ASCII kept, anything else as \xNN.
inline std::string Printable(const std::string& text) {
  std::string out;
  for (unsigned char c : text) {
    if (c >= 0x20 && c < 0x7f) {
      out += static_cast<char>(c);
    } else {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", c);
      out += buf;
    }
  }
  return out;
}

inline DType ParseDescr(const std::string& descr) {
  if (descr.size() < 3) throw NpyError("unsupported dtype '" + Printable(descr) + "'");
  const char order = descr[0];
  const std::string code = descr.substr(1);
  size_t n = 0;
  const DTypeInfo* table = AllDTypes(&n);
  for (size_t i = 0; i < n; ++i) {
    const DTypeInfo& t = table[i];
    if (code != std::string(t.descr + 1)) continue;
    const bool ok = order == '<' || order == '|' || (order == '=' && HostIsLittleEndian()) ||
                    (order == '>' && t.size == 1);
    if (!ok) throw NpyError("big-endian dtype '" + Printable(descr) + "' is not supported");
    return t.dtype;
  }
  throw NpyError("unsupported dtype '" + Printable(descr) +
                 "' (expected float32, float16, float64, int64, int32, int16, int8, uint8 or bool)");
}

inline uint32_t ReadLE(const std::string& bytes, size_t at, int width) {
  uint32_t v = 0;
  for (int i = width - 1; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(bytes[at + i]);
  return v;
}

inline std::string FormatShape(const std::vector<int64_t>& shape) {
  std::string out = "(";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) out += ", ";
    out += std::to_string(shape[i]);
  }
  if (shape.size() == 1) out += ",";
  return out + ")";
}

}  // namespace detail

// Parse a whole .npy file image.
inline Array Parse(const std::string& bytes) {
  static const char kMagic[] = "\x93NUMPY";
  if (bytes.size() < 10 || bytes.compare(0, 6, kMagic, 6) != 0) throw NpyError("not a .npy file (bad magic)");
  const int major = static_cast<unsigned char>(bytes[6]);
  const int minor = static_cast<unsigned char>(bytes[7]);
  size_t header_at = 0;
  size_t header_len = 0;
  if (minor != 0 || major < 1 || major > 3) {
    throw NpyError("unsupported .npy format version " + std::to_string(major) + "." + std::to_string(minor));
  }
  if (major == 1) {
    header_at = 10;
    header_len = detail::ReadLE(bytes, 8, 2);
  } else {
    if (bytes.size() < 12) throw NpyError("truncated header");
    header_at = 12;
    header_len = detail::ReadLE(bytes, 8, 4);
  }
  if (bytes.size() < header_at + header_len) throw NpyError("truncated header");
  const std::string header = bytes.substr(header_at, header_len);

  std::string descr;
  bool fortran_order = false;
  Array array;
  detail::HeaderParser(header).Parse(&descr, &fortran_order, &array.shape);
  if (fortran_order) throw NpyError("fortran_order arrays are not supported (save a C-order array)");
  array.dtype = detail::ParseDescr(descr);

  const int item = Info(array.dtype).size;
  const int64_t numel = CheckedNumel(array.shape, item);
  const uint64_t want = static_cast<uint64_t>(numel) * static_cast<uint64_t>(item);
  const uint64_t have = bytes.size() - header_at - header_len;
  if (have < want) {
    throw NpyError("truncated data (" + std::to_string(have) + " of " + std::to_string(want) + " bytes)");
  }
  if (have > want) throw NpyError(std::to_string(have - want) + " unexpected trailing bytes after the data");
  array.data = bytes.substr(header_at + header_len);
  return array;
}

// Serialise to a version 1.0 .npy image (header padded to a multiple of 64 bytes).
inline std::string Serialize(DType dtype, const std::vector<int64_t>& shape, const void* data, size_t nbytes) {
  std::string dict = "{'descr': '" + std::string(Info(dtype).descr) +
                     "', 'fortran_order': False, 'shape': " + detail::FormatShape(shape) + ", }";
  const size_t unpadded = 10 + dict.size() + 1;  // magic+version+len, dict, '\n'
  dict.append((64 - unpadded % 64) % 64, ' ');
  dict += '\n';
  if (dict.size() > 0xFFFF) throw NpyError("header too long for format version 1.0");
  std::string out("\x93NUMPY\x01\x00", 8);
  out += static_cast<char>(dict.size() & 0xFF);
  out += static_cast<char>((dict.size() >> 8) & 0xFF);
  out += dict;
  if (nbytes) out.append(static_cast<const char*>(data), nbytes);
  return out;
}

}  // namespace npy

#endif  // BISECT_LITE_NPY_H_
