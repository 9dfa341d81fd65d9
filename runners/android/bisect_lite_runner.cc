// bisect_lite_runner: run a Paddle-Lite .nb model with exact binary (.npy) I/O.
//
// Written for bisect-lite against the Paddle-Lite C++ light API (MobileConfig).
// The protocol is described in README.md next to this file:
//
//   bisect_lite_runner --model M.nb --inputs IN_DIR --outputs OUT_DIR
//       [--precision auto|fp16|fp32] [--tune none|rapid|normal|exhaustive]
//       [--tune-file DIR/NAME] [--cl-cache DIR/NAME] [--threads N]
//       [--power-mode N] [--runs N] [--info]
//
// Exit codes: 0 ok, 2 usage or input error, 3 runtime failure, 5 precision not supported by the OpenCL device.
//
// Build switches:
//   BISECT_LITE_NO_OPENCL_API  do not call IsOpenCLBackendValid/set_opencl_*
//                              (for libraries built without OpenCL).
//   BISECT_LITE_NO_ARM_API     do not call set_threads/set_power_mode.
#include <dlfcn.h>
#include <limits.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(__ANDROID__)
#include <sys/system_properties.h>
#else
#include <sys/utsname.h>
#endif

#include "npy.h"         // NOLINT
#include "paddle_api.h"  // NOLINT

namespace {

using paddle::lite_api::MobileConfig;
using paddle::lite_api::PaddlePredictor;
using paddle::lite_api::PrecisionType;
using paddle::lite_api::Tensor;

constexpr int kExitOk = 0;
constexpr int kExitUsage = 2;
constexpr int kExitRuntime = 3;
constexpr int kExitPrecision = 5;
constexpr const char* kRunnerVersion = "2";
constexpr const char* kProgram = "bisect_lite_runner";

const char kUsage[] =
    "usage: bisect_lite_runner --model M.nb --inputs IN_DIR --outputs OUT_DIR\n"
    "           [--precision auto|fp16|fp32] [--tune none|rapid|normal|exhaustive]\n"
    "           [--tune-file DIR/NAME] [--cl-cache DIR/NAME] [--threads N]\n"
    "           [--power-mode N] [--runs N] [--info]\n"
    "IN_DIR holds names.txt (one feed name per line) and 0.npy, 1.npy, ... in that order.\n"
    "OUT_DIR receives names.txt, 0.npy, 1.npy, ... and info.json (run0/ too when --runs > 1).\n"
    "Exit codes: 0 ok, 2 usage or input error, 3 runtime failure,\n"
    "5 precision not supported by the OpenCL device (e.g. fp16 without cl_khr_fp16).\n";

// A precision the OpenCL device cannot run (exit code 5): Paddle-Lite would abort on it.
class PrecisionUnsupported : public std::runtime_error {
 public:
  explicit PrecisionUnsupported(const std::string& what) : std::runtime_error(what) {}
};

// An error in the command line or in the input files (exit code 2).
class UsageError : public std::runtime_error {
 public:
  explicit UsageError(const std::string& what) : std::runtime_error(what) {}
};

// A failure while loading or running the model or writing results (exit code 3).
class RuntimeFailure : public std::runtime_error {
 public:
  explicit RuntimeFailure(const std::string& what) : std::runtime_error(what) {}
};

struct Options {
  std::string model;
  std::string inputs;
  std::string outputs;
  std::string precision = "auto";
  std::string tune = "none";
  std::string tune_file;
  std::string cl_cache;
  int threads = 0;      // 0: library default
  int power_mode = -1;  // -1: library default
  int runs = 1;
  bool info = false;
};

// ---------------------------------------------------------------- utilities

std::string OneLine(std::string text) {
  for (char& c : text) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  return text;
}

int ParseInt(const std::string& flag, const std::string& value, int lo, int hi) {
  errno = 0;
  char* end = nullptr;
  const long v = std::strtol(value.c_str(), &end, 10);  // NOLINT(runtime/int)
  if (value.empty() || *end != '\0' || errno == ERANGE || v < lo || v > hi) {
    throw UsageError(flag + " expects an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) +
                     "], got '" + value + "'");
  }
  return static_cast<int>(v);
}

bool IsDir(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool IsFile(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string JoinPath(const std::string& dir, const std::string& name) {
  if (dir.empty()) return name;
  return dir.back() == '/' ? dir + name : dir + "/" + name;
}

// Split "DIR/NAME" into its directory (default ".") and file name.
void SplitDirName(const std::string& flag, const std::string& value, std::string* dir, std::string* name) {
  const size_t slash = value.rfind('/');
  *dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : value.substr(0, slash));
  *name = slash == std::string::npos ? value : value.substr(slash + 1);
  if (name->empty()) throw UsageError(flag + " expects DIR/NAME, got '" + value + "'");
}

void MakeDirs(const std::string& path) {
  std::string partial;
  std::stringstream parts(path);
  std::string part;
  if (!path.empty() && path[0] == '/') partial = "/";
  while (std::getline(parts, part, '/')) {
    if (part.empty()) continue;
    partial = JoinPath(partial, part);
    if (mkdir(partial.c_str(), 0755) != 0 && errno != EEXIST) {
      throw UsageError("cannot create directory '" + partial + "': " + std::strerror(errno));
    }
  }
  if (!IsDir(path)) throw UsageError("'" + path + "' is not a directory");
}

bool ReadFile(const std::string& path, std::string* out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  std::ostringstream buf;
  buf << in.rdbuf();
  if (in.bad()) return false;
  *out = buf.str();
  return true;
}

// Write to a temporary name in the same directory, then rename into place.
void WriteFileAtomic(const std::string& dir, const std::string& name, const std::string& bytes) {
  const std::string final_path = JoinPath(dir, name);
  const std::string tmp_path = JoinPath(dir, "." + name + ".tmp." + std::to_string(getpid()));
  FILE* f = std::fopen(tmp_path.c_str(), "wb");
  if (!f) throw RuntimeFailure("cannot write '" + tmp_path + "': " + std::strerror(errno));
  const bool ok = (bytes.empty() || std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size());
  const bool closed = std::fclose(f) == 0;
  if (!ok || !closed) {
    std::remove(tmp_path.c_str());
    throw RuntimeFailure("cannot write '" + tmp_path + "'");
  }
  if (std::rename(tmp_path.c_str(), final_path.c_str()) != 0) {
    const std::string why = std::strerror(errno);
    std::remove(tmp_path.c_str());
    throw RuntimeFailure("cannot rename '" + tmp_path + "' to '" + final_path + "': " + why);
  }
}

std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out + "\"";
}

std::string JsonNumber(double v) {
  char buf[40];
  std::snprintf(buf, sizeof(buf), "%.9g", v);
  return buf;
}

std::string DeviceDescription() {
#if defined(__ANDROID__)
  auto prop = [](const char* key) {
    char value[PROP_VALUE_MAX] = {0};
    __system_property_get(key, value);
    return std::string(value);
  };
  return prop("ro.product.manufacturer") + " " + prop("ro.product.model") + " (" + prop("ro.board.platform") +
         ", Android " + prop("ro.build.version.release") + ", SDK " + prop("ro.build.version.sdk") + ", " +
         prop("ro.product.cpu.abi") + ")";
#else
  struct utsname u;
  if (uname(&u) != 0) return "host";
  return std::string("host ") + u.sysname + " " + u.release + " " + u.machine;
#endif
}

// ---------------------------------------------------------------- options

Options ParseArgs(int argc, char** argv) {
  Options o;
  bool have_model = false, have_inputs = false, have_outputs = false;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    std::string value;
    bool inline_value = false;
    const size_t eq = arg.find('=');
    if (arg.compare(0, 2, "--") == 0 && eq != std::string::npos) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
      inline_value = true;
    }
    if (arg == "--help" || arg == "-h") {
      std::cout << kUsage;
      std::exit(kExitOk);
    }
    if (arg == "--info") {
      if (inline_value) throw UsageError("--info takes no value");
      o.info = true;
      continue;
    }
    static const char* const kValued[] = {"--model",     "--inputs",   "--outputs", "--precision",
                                          "--tune",      "--tune-file", "--cl-cache", "--threads",
                                          "--power-mode", "--runs"};
    bool known = false;
    for (const char* k : kValued) known = known || arg == k;
    if (!known) throw UsageError("unknown argument '" + arg + "' (see --help)");
    if (!inline_value) {
      if (i + 1 >= argc) throw UsageError(arg + " needs a value");
      value = argv[++i];
    }
    if (arg == "--model") {
      o.model = value;
      have_model = true;
    } else if (arg == "--inputs") {
      o.inputs = value;
      have_inputs = true;
    } else if (arg == "--outputs") {
      o.outputs = value;
      have_outputs = true;
    } else if (arg == "--precision") {
      if (value != "auto" && value != "fp16" && value != "fp32") {
        throw UsageError("--precision must be auto, fp16 or fp32, got '" + value + "'");
      }
      o.precision = value;
    } else if (arg == "--tune") {
      if (value != "none" && value != "rapid" && value != "normal" && value != "exhaustive") {
        throw UsageError("--tune must be none, rapid, normal or exhaustive, got '" + value + "'");
      }
      o.tune = value;
    } else if (arg == "--tune-file") {
      o.tune_file = value;
    } else if (arg == "--cl-cache") {
      o.cl_cache = value;
    } else if (arg == "--threads") {
      o.threads = ParseInt(arg, value, 1, 1024);
    } else if (arg == "--power-mode") {
      o.power_mode = ParseInt(arg, value, 0, 5);
    } else if (arg == "--runs") {
      o.runs = ParseInt(arg, value, 1, 1000000);
    }
  }
  if (!o.info && (!have_model || !have_inputs || !have_outputs)) {
    throw UsageError("--model, --inputs and --outputs are required (see --help)");
  }
  if (have_model && !IsFile(o.model)) throw UsageError("model file '" + o.model + "' not found");
  if (!o.info && !IsDir(o.inputs)) throw UsageError("input directory '" + o.inputs + "' not found");
  return o;
}

// ---------------------------------------------------------------- inputs

struct Feed {
  std::string name;
  npy::Array array;
};

std::vector<Feed> LoadFeeds(const std::string& dir) {
  const std::string names_path = JoinPath(dir, "names.txt");
  std::string text;
  if (!ReadFile(names_path, &text)) throw UsageError("cannot read '" + names_path + "'");
  std::vector<std::string> names;
  std::stringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    names.push_back(line);
  }
  std::vector<Feed> feeds;
  for (size_t i = 0; i < names.size(); ++i) {
    if (names[i].empty()) throw UsageError(names_path + ": line " + std::to_string(i + 1) + " is empty");
    for (size_t j = 0; j < i; ++j) {
      if (names[j] == names[i]) throw UsageError(names_path + ": feed '" + names[i] + "' is listed twice");
    }
    const std::string path = JoinPath(dir, std::to_string(i) + ".npy");
    std::string bytes;
    if (!ReadFile(path, &bytes)) throw UsageError("cannot read '" + path + "' (feed '" + names[i] + "')");
    Feed feed;
    feed.name = names[i];
    try {
      feed.array = npy::Parse(bytes);
    } catch (const npy::NpyError& e) {
      throw UsageError(path + ": " + e.what());
    }
    feeds.push_back(std::move(feed));
  }
  return feeds;
}

void SetInput(Tensor* tensor, const npy::Array& a) {
  tensor->Resize(a.shape);
  void* dst = nullptr;
  switch (a.dtype) {
    case npy::DType::kFloat32: dst = tensor->mutable_data<float>(); break;
    case npy::DType::kFloat64: dst = tensor->mutable_data<double>(); break;
    case npy::DType::kInt64: dst = tensor->mutable_data<int64_t>(); break;
    case npy::DType::kInt32: dst = tensor->mutable_data<int32_t>(); break;
    case npy::DType::kInt16: dst = tensor->mutable_data<int16_t>(); break;
    case npy::DType::kInt8: dst = tensor->mutable_data<int8_t>(); break;
    case npy::DType::kUInt8: dst = tensor->mutable_data<uint8_t>(); break;
    case npy::DType::kBool: dst = tensor->mutable_data<bool>(); break;
    case npy::DType::kFloat16:
      // The library has no portable half type: allocate 2-byte storage, then relabel it.
      dst = tensor->mutable_data<int16_t>();
      tensor->SetPrecision(PrecisionType::kFP16);
      break;
  }
  if (!a.data.empty()) {
    if (!dst) throw RuntimeFailure("the library returned no input buffer");
    std::memcpy(dst, a.data.data(), a.data.size());
  }
}

// ---------------------------------------------------------------- outputs

npy::DType DTypeOf(PrecisionType p, const std::string& name) {
  switch (p) {
    case PrecisionType::kFloat: return npy::DType::kFloat32;
    case PrecisionType::kFP16: return npy::DType::kFloat16;
    case PrecisionType::kFP64: return npy::DType::kFloat64;
    case PrecisionType::kInt64: return npy::DType::kInt64;
    case PrecisionType::kInt32: return npy::DType::kInt32;
    case PrecisionType::kInt16: return npy::DType::kInt16;
    case PrecisionType::kInt8: return npy::DType::kInt8;
    case PrecisionType::kUInt8: return npy::DType::kUInt8;
    case PrecisionType::kBool: return npy::DType::kBool;
    default:
      throw RuntimeFailure("output '" + name + "' has unsupported precision " +
                           std::to_string(static_cast<int>(p)));
  }
}

const void* RawData(const Tensor& t, npy::DType dtype) {
  switch (dtype) {
    case npy::DType::kFloat32: return t.data<float>();
    case npy::DType::kFloat64: return t.data<double>();
    case npy::DType::kInt64: return t.data<int64_t>();
    case npy::DType::kInt32: return t.data<int32_t>();
    case npy::DType::kInt16: return t.data<int16_t>();
    case npy::DType::kFloat16: return t.data<int16_t>();  // raw half bits
    case npy::DType::kInt8: return t.data<int8_t>();
    case npy::DType::kUInt8: return t.data<uint8_t>();
    case npy::DType::kBool: return t.data<bool>();
  }
  return nullptr;
}

void WriteOutputs(PaddlePredictor* predictor, const std::vector<std::string>& names, const std::string& dir) {
  try {
    MakeDirs(dir);
  } catch (const UsageError& e) {
    throw RuntimeFailure(e.what());
  }
  std::string listing;
  for (size_t i = 0; i < names.size(); ++i) {
    std::unique_ptr<const Tensor> t = predictor->GetOutput(static_cast<int>(i));
    if (!t) throw RuntimeFailure("output " + std::to_string(i) + " ('" + names[i] + "') is missing");
    const npy::DType dtype = DTypeOf(t->precision(), names[i]);
    const std::vector<int64_t> shape = t->shape();
    const int item = npy::Info(dtype).size;
    int64_t numel = 0;
    try {
      numel = npy::CheckedNumel(shape, item);
    } catch (const npy::NpyError& e) {
      throw RuntimeFailure("output '" + names[i] + "': " + e.what());
    }
    const size_t nbytes = static_cast<size_t>(numel) * static_cast<size_t>(item);
    const void* data = nbytes ? RawData(*t, dtype) : nullptr;
    if (nbytes && !data) throw RuntimeFailure("output '" + names[i] + "' holds no data");
    WriteFileAtomic(dir, std::to_string(i) + ".npy", npy::Serialize(dtype, shape, data, nbytes));
    listing += names[i] + "\n";
  }
  WriteFileAtomic(dir, "names.txt", listing);
}

// ---------------------------------------------------------------- main

// ---------------------------------------------------------------- facts

struct OpenCLDevice {
  bool read = false;  // false: the OpenCL library or its device could not be read
  bool fp16 = false;  // the device lists cl_khr_fp16
  std::string platform, device;
};

#ifndef BISECT_LITE_NO_OPENCL_API
// The OpenCL device Paddle-Lite uses: the first platform's first GPU, else its first CPU device (v2.13 falls back
// to a CPU device such as PoCL's). Read through the OpenCL C API itself, loaded like Paddle-Lite loads it, because
// the library's only fp16 probe, IsOpenCLBackendValid(true), marks OpenCL invalid for the whole process on a
// device without fp16. The few OpenCL declarations needed are spelt out here: no OpenCL headers are required.
namespace cl {
typedef int32_t Int;
typedef uint32_t Uint;
typedef uint64_t DeviceType;
typedef struct Opaque* Id;
typedef Int (*GetPlatformIDs)(Uint, Id*, Uint*);
typedef Int (*GetPlatformInfo)(Id, Uint, size_t, void*, size_t*);
typedef Int (*GetDeviceIDs)(Id, DeviceType, Uint, Id*, Uint*);
typedef Int (*GetDeviceInfo)(Id, Uint, size_t, void*, size_t*);
constexpr Uint kPlatformVersion = 0x0901, kPlatformName = 0x0902;
constexpr Uint kDeviceName = 0x102B, kDriverVersion = 0x102D, kDeviceExtensions = 0x1030;
constexpr DeviceType kDeviceTypeCpu = 1 << 1, kDeviceTypeGpu = 1 << 2;
// The names Paddle-Lite tries (libOpenCL.so first; the ICD loader's versioned name; where phones keep it).
const char* const kLibraries[] = {"libOpenCL.so",
                                  "libOpenCL.so.1",
                                  "/system/vendor/lib64/libOpenCL.so",
                                  "/system/lib64/libOpenCL.so",
                                  "/vendor/lib64/libOpenCL.so",
                                  "/system/vendor/lib64/egl/libGLES_mali.so",
                                  "/system/vendor/lib64/libPVROCL.so"};

template <typename Getter>
std::string InfoString(Getter get, Id id, Uint what) {
  size_t size = 0;
  if (get(id, what, 0, nullptr, &size) != 0 || size == 0) return "";
  std::string value(size, '\0');
  if (get(id, what, size, &value[0], nullptr) != 0) return "";
  value.resize(std::strlen(value.c_str()));
  return value;
}
}  // namespace cl

OpenCLDevice ReadOpenCLDevice() {
  OpenCLDevice d;
  void* lib = nullptr;
  for (const char* name : cl::kLibraries) {
    if ((lib = dlopen(name, RTLD_NOW | RTLD_LOCAL)) != nullptr) break;
  }
  if (!lib) return d;  // never dlclose()d: the library under test holds the same handle
  auto platform_ids = reinterpret_cast<cl::GetPlatformIDs>(dlsym(lib, "clGetPlatformIDs"));
  auto platform_info = reinterpret_cast<cl::GetPlatformInfo>(dlsym(lib, "clGetPlatformInfo"));
  auto device_ids = reinterpret_cast<cl::GetDeviceIDs>(dlsym(lib, "clGetDeviceIDs"));
  auto device_info = reinterpret_cast<cl::GetDeviceInfo>(dlsym(lib, "clGetDeviceInfo"));
  if (!platform_ids || !platform_info || !device_ids || !device_info) return d;
  cl::Id platform = nullptr;
  cl::Uint count = 0;
  if (platform_ids(1, &platform, &count) != 0 || count == 0 || !platform) return d;
  cl::Id device = nullptr;
  std::string type = "GPU";
  if (device_ids(platform, cl::kDeviceTypeGpu, 1, &device, &count) != 0 || count == 0 || !device) {
    type = "CPU";
    device = nullptr;
    if (device_ids(platform, cl::kDeviceTypeCpu, 1, &device, &count) != 0 || count == 0 || !device) return d;
  }
  d.read = true;
  d.platform = cl::InfoString(platform_info, platform, cl::kPlatformName) + " (" +
               cl::InfoString(platform_info, platform, cl::kPlatformVersion) + ")";
  d.device = cl::InfoString(device_info, device, cl::kDeviceName) + " (" + type + ", driver " +
             cl::InfoString(device_info, device, cl::kDriverVersion) + ")";
  const std::string extensions = " " + cl::InfoString(device_info, device, cl::kDeviceExtensions) + " ";
  d.fp16 = extensions.find(" cl_khr_fp16 ") != std::string::npos;
  return d;
}
#endif  // BISECT_LITE_NO_OPENCL_API

struct Backend {
  bool opencl_valid = false;
  OpenCLDevice opencl;
};

Backend ProbeBackend() {
  Backend b;
#ifndef BISECT_LITE_NO_OPENCL_API
  // false: do not check fp16 here (see ReadOpenCLDevice). A library built without OpenCL answers false.
  b.opencl_valid = paddle::lite_api::IsOpenCLBackendValid(false);
  if (b.opencl_valid) b.opencl = ReadOpenCLDevice();
#endif
  return b;
}

// The OpenCL precision the run uses: "fp32" or "fp16", "" when OpenCL is not in use or the device could not be
// read (then the library decides AUTO alone). fp16 on a device without cl_khr_fp16 is refused here: Paddle-Lite
// would abort.
std::string PrecisionUsed(const Options& o, const Backend& b) {
  if (!b.opencl_valid) return "";
  if (o.precision == "fp32") return "fp32";
  if (!b.opencl.read) return o.precision == "fp16" ? "fp16" : "";
  if (b.opencl.fp16) return "fp16";
  if (o.precision == "fp16") {
    throw PrecisionUnsupported("--precision fp16 needs an OpenCL device with cl_khr_fp16, and " + b.opencl.device +
                               " has none: use --precision fp32 or auto");
  }
  return "fp32";
}

// The CPU as the library sees it: Paddle-Lite picks ARM kernels by the "CPU part" lines of /proc/cpuinfo. Under
// QEMU user mode these are the host's lines (no CPU part: an unknown ARM core to Paddle-Lite).
std::string CpuJson() {
  std::string text, model, hardware, parts;
  ReadFile("/proc/cpuinfo", &text);
  std::stringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    const size_t colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string key = line.substr(0, colon);
    while (!key.empty() && (key.back() == ' ' || key.back() == '\t')) key.pop_back();
    std::string value = line.substr(colon + 1);
    while (!value.empty() && value.front() == ' ') value.erase(0, 1);
    if (key == "model name" && model.empty()) model = value;
    if (key == "Hardware" && hardware.empty()) hardware = value;
    if (key == "CPU part") parts += (parts.empty() ? "" : ", ") + JsonString(value);
  }
  const long online = sysconf(_SC_NPROCESSORS_ONLN);  // NOLINT(runtime/int)
  std::string j = "{\"arm_parts\": [" + parts + "]";
  j += ", \"model_name\": " + (model.empty() ? std::string("null") : JsonString(model));
  j += ", \"hardware\": " + (hardware.empty() ? std::string("null") : JsonString(hardware));
  j += ", \"online\": " + std::to_string(online);
  return j + "}";
}

// The file the Paddle-Lite library was loaded from (LD_LIBRARY_PATH and RUNPATH decide which one).
std::string LibraryPath() {
  Dl_info info;
  const auto symbol = &paddle::lite_api::CreatePaddlePredictor<MobileConfig>;
  if (dladdr(reinterpret_cast<void*>(symbol), &info) == 0 || !info.dli_fname) return "";
  char resolved[PATH_MAX];
  return realpath(info.dli_fname, resolved) ? std::string(resolved) : std::string(info.dli_fname);
}

std::string InfoJson(const Options& o, const Backend& b, const std::string& precision_used,
                     const std::string& version, bool have_version, const std::vector<double>* seconds) {
  auto string_or_null = [](const std::string& s) { return s.empty() ? std::string("null") : JsonString(s); };
  std::string j = "{\"paddle_lite_version\": " + (have_version ? JsonString(version) : std::string("null"));
  j += ", \"precision\": " + JsonString(o.precision);
  j += ", \"precision_used\": " + string_or_null(precision_used);
  j += std::string(", \"opencl_valid\": ") + (b.opencl_valid ? "true" : "false");
  j += std::string(", \"opencl_fp16\": ") + (!b.opencl.read ? "null" : b.opencl.fp16 ? "true" : "false");
  j += ", \"opencl_platform\": " + string_or_null(b.opencl.platform);
  j += ", \"opencl_device\": " + string_or_null(b.opencl.device);
  if (seconds) {
    j += ", \"seconds\": [";
    for (size_t i = 0; i < seconds->size(); ++i) j += (i ? ", " : "") + JsonNumber((*seconds)[i]);
    j += "]";
  }
  j += ", \"library\": " + string_or_null(LibraryPath());
  j += ", \"cpu\": " + CpuJson();
  j += ", \"device\": " + JsonString(DeviceDescription());
  j += ", \"runner_version\": " + JsonString(kRunnerVersion);
  return j + "}\n";
}

// Fills a config in place: MobileConfig is not copyable through every header the runner builds with.
void Configure(const Options& o, const Backend& b, const std::string& precision_used, MobileConfig* config) {
  config->set_model_from_file(o.model);
#ifndef BISECT_LITE_NO_OPENCL_API
  if (b.opencl_valid) {
    std::string dir, name;
    if (!o.cl_cache.empty()) {
      SplitDirName("--cl-cache", o.cl_cache, &dir, &name);
      config->set_opencl_binary_path_name(dir, name);
    }
    if (o.tune != "none") {
      paddle::lite_api::CLTuneMode mode = paddle::lite_api::CL_TUNE_RAPID;
      if (o.tune == "normal") mode = paddle::lite_api::CL_TUNE_NORMAL;
      if (o.tune == "exhaustive") mode = paddle::lite_api::CL_TUNE_EXHAUSTIVE;
      // Without --tune-file the tuned work sizes go next to the model, named after it.
      SplitDirName("--tune-file", o.tune_file.empty() ? o.model + ".tune" : o.tune_file, &dir, &name);
      config->set_opencl_tune(mode, dir, name);
    }
    // The precision decided above, explicitly: AUTO only when the device could not be read.
    paddle::lite_api::CLPrecisionType precision = paddle::lite_api::CL_PRECISION_AUTO;
    if (precision_used == "fp16") precision = paddle::lite_api::CL_PRECISION_FP16;
    if (precision_used == "fp32") precision = paddle::lite_api::CL_PRECISION_FP32;
    config->set_opencl_precision(precision);
  }
#else
  (void)b;
  (void)precision_used;
#endif
#ifndef BISECT_LITE_NO_ARM_API
  if (o.power_mode >= 0) config->set_power_mode(static_cast<paddle::lite_api::PowerMode>(o.power_mode));
  if (o.threads > 0) config->set_threads(o.threads);
#else
  if (o.power_mode >= 0 || o.threads > 0) {
    std::cerr << kProgram << ": warning: --threads/--power-mode ignored (built without the ARM config API)\n";
  }
#endif
}

std::shared_ptr<PaddlePredictor> CreatePredictor(const Options& o, const Backend& b,
                                                 const std::string& precision_used) {
  const std::string& model = o.model;
  MobileConfig config;
  Configure(o, b, precision_used, &config);
  std::shared_ptr<PaddlePredictor> predictor;
  try {
    predictor = paddle::lite_api::CreatePaddlePredictor<MobileConfig>(config);
  } catch (const std::exception& e) {
    throw RuntimeFailure("cannot load model '" + model + "': " + e.what());
  }
  if (!predictor) throw RuntimeFailure("cannot load model '" + model + "'");
  return predictor;
}

int Main(int argc, char** argv) {
  const Options o = ParseArgs(argc, argv);
  // Reject a malformed DIR/NAME up front (exit 2), even when OpenCL is unavailable and it goes unused.
  if (!o.tune_file.empty()) {
    std::string dir, name;
    SplitDirName("--tune-file", o.tune_file, &dir, &name);
  }
  if (!o.cl_cache.empty()) {
    std::string dir, name;
    SplitDirName("--cl-cache", o.cl_cache, &dir, &name);
  }
  const Backend backend = ProbeBackend();
  const std::string precision_used = PrecisionUsed(o, backend);

  if (o.info) {
    std::string version;
    bool have_version = false;
    if (!o.model.empty()) {
      version = CreatePredictor(o, backend, precision_used)->GetVersion();
      have_version = true;
    }
    std::cout << InfoJson(o, backend, precision_used, version, have_version, nullptr);
    return kExitOk;
  }

  const std::vector<Feed> feeds = LoadFeeds(o.inputs);
  MakeDirs(o.outputs);

  std::shared_ptr<PaddlePredictor> predictor = CreatePredictor(o, backend, precision_used);
  const std::vector<std::string> input_names = predictor->GetInputNames();
  std::vector<const npy::Array*> bound(input_names.size(), nullptr);
  for (size_t i = 0; i < input_names.size(); ++i) {
    for (const Feed& f : feeds) {
      if (f.name == input_names[i]) bound[i] = &f.array;
    }
    if (!bound[i]) {
      throw UsageError("model input '" + input_names[i] + "' is not listed in " + JoinPath(o.inputs, "names.txt"));
    }
  }
  const std::vector<std::string> output_names = predictor->GetOutputNames();

  std::vector<double> seconds;
  for (int run = 0; run < o.runs; ++run) {
    // Feed every run: an in-place kernel must not make later runs see different inputs.
    for (size_t i = 0; i < input_names.size(); ++i) {
      std::unique_ptr<Tensor> t = predictor->GetInput(static_cast<int>(i));
      if (!t) throw RuntimeFailure("input " + std::to_string(i) + " ('" + input_names[i] + "') is missing");
      SetInput(t.get(), *bound[i]);
    }
    const auto start = std::chrono::steady_clock::now();
    predictor->Run();
    const std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
    seconds.push_back(took.count());
    if (run == 0 && o.runs > 1) WriteOutputs(predictor.get(), output_names, JoinPath(o.outputs, "run0"));
  }
  WriteOutputs(predictor.get(), output_names, o.outputs);
  WriteFileAtomic(o.outputs, "info.json", InfoJson(o, backend, precision_used, predictor->GetVersion(), true, &seconds));
  return kExitOk;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return Main(argc, argv);
  } catch (const UsageError& e) {
    std::cerr << kProgram << ": error: " << OneLine(e.what()) << "\n";
    return kExitUsage;
  } catch (const PrecisionUnsupported& e) {
    std::cerr << kProgram << ": unsupported precision: " << OneLine(e.what()) << "\n";
    return kExitPrecision;
  } catch (const std::exception& e) {
    std::cerr << kProgram << ": runtime failure: " << OneLine(e.what()) << "\n";
    return kExitRuntime;
  } catch (...) {
    std::cerr << kProgram << ": runtime failure: unknown exception\n";
    return kExitRuntime;
  }
}
