// abi_check: checks runners/android/host/include/paddle_api.h against the real Paddle-Lite library it is
// linked with (the paddlelite wheel's lite.so), for what bisect_lite_runner relies on beyond symbol names:
//
//   - PaddlePredictor's vtable: for every virtual declared in the header, the function that the real
//     predictor's vtable holds in the header's slot must have the same name and parameter list (dladdr on
//     the slot, demangled; the header's side comes from the member-pointer type, demangled too);
//   - MobileConfig's layout: the object is built from the header (inline constructor, library base
//     constructor) inside canary bytes; the library's setters write every MobileConfig member; the header's
//     inline accessors (and the library's own out-of-line is_model_from_memory) must read the values back,
//     the canary after the object must be intact, and destruction must not crash;
//   - Tensor: one pointer, which the library's constructor writes at offset 0 and nothing past it.
//
// Usage: abi_check MODEL.nb   (any .nb the library can load: the vtable is read from a real predictor)
// Prints one JSON object (sizes, enum values, vtable slots, failures) and exits 0 when nothing failed, 1
// otherwise. Symbol names are checked separately (link with --no-undefined, `nm -D`).
#include <cxxabi.h>
#include <dlfcn.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <initializer_list>
#include <iostream>
#include <new>
#include <sstream>
#include <stdexcept>
#include <string>
#include <typeinfo>
#include <utility>
#include <vector>

#include "paddle_api.h"  // NOLINT

namespace {

using paddle::lite_api::MobileConfig;
using paddle::lite_api::PaddlePredictor;
using paddle::lite_api::Tensor;
namespace api = paddle::lite_api;

std::vector<std::string> failures;

void Expect(bool ok, const std::string& what) {
  if (!ok) failures.push_back(what);
}

std::string Demangle(const char* name) {
  if (!name) return "";
  int status = 0;
  char* out = abi::__cxa_demangle(name, nullptr, nullptr, &status);
  std::string text = (status == 0 && out) ? out : name;
  std::free(out);
  return text;
}

std::string Json(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

// "paddle::lite::LightPredictorImpl::GetVersion[abi:cxx11]() const" -> "GetVersion() const"
std::string MethodOfSymbol(const std::string& symbol, const std::string& name) {
  size_t at = symbol.find("::" + name + "(");
  if (at == std::string::npos) at = symbol.find("::" + name + "[abi:");
  if (at == std::string::npos) return "";
  std::string rest = symbol.substr(at + 2 + name.size());
  if (rest.compare(0, 5, "[abi:") == 0) rest = rest.substr(rest.find(']') + 1);
  return name + rest;
}

// Demangled member-pointer type "R (paddle::lite_api::PaddlePredictor::*)(int) const" -> "GetInput(int) const"
template <typename F>
std::string MethodOfHeader(const std::string& name) {
  const std::string type = Demangle(typeid(F).name());
  const size_t at = type.find("::*)");
  return at == std::string::npos ? "?" + type : name + type.substr(at + 4);
}

// Itanium C++ ABI: a pointer to a virtual member function holds 1 + the byte offset of its vtable slot.
template <typename F>
long SlotOf(F f) {
  struct {
    uintptr_t ptr;
    ptrdiff_t adj;
  } raw;
  static_assert(sizeof(f) == sizeof(raw), "Itanium member pointer expected");
  std::memcpy(&raw, &f, sizeof(raw));
  if ((raw.ptr & 1) == 0) return -1;  // not virtual
  return static_cast<long>((raw.ptr - 1) / sizeof(void*));
}

struct Slot {
  std::string header;   // "GetInput(int)"
  long index;           // slot in the header's vtable
  std::string library;  // demangled symbol of the real vtable's function at that slot
};

template <typename F>
void CheckSlot(void* const* vtable, const std::string& name, F f, std::vector<Slot>* out) {
  Slot s{MethodOfHeader<F>(name), SlotOf(f), ""};
  if (s.index < 0) {
    failures.push_back(name + " is not virtual in the header");
  } else {
    Dl_info info;
    std::memset(&info, 0, sizeof(info));
    if (dladdr(vtable[s.index], &info) && info.dli_sname) s.library = Demangle(info.dli_sname);
    Expect(MethodOfSymbol(s.library, name) == s.header,
           "vtable slot " + std::to_string(s.index) + ": header declares " + s.header + ", library has " +
               (s.library.empty() ? "an unnamed function" : s.library));
  }
  out->push_back(s);
}

std::vector<Slot> CheckVtable(PaddlePredictor* predictor) {
  void* const* vtable = *reinterpret_cast<void* const* const*>(predictor);
  std::vector<Slot> slots;
  using P = PaddlePredictor;
  CheckSlot(vtable, "GetInput", &P::GetInput, &slots);
  CheckSlot(vtable, "GetOutput", &P::GetOutput, &slots);
  CheckSlot(vtable, "Run", &P::Run, &slots);
  CheckSlot(vtable, "Clone", static_cast<std::shared_ptr<P> (P::*)()>(&P::Clone), &slots);
  CheckSlot(vtable, "Clone", static_cast<std::shared_ptr<P> (P::*)(const std::vector<std::string>&)>(&P::Clone),
            &slots);
  CheckSlot(vtable, "GetVersion", &P::GetVersion, &slots);
  CheckSlot(vtable, "GetInputNames", &P::GetInputNames, &slots);
  CheckSlot(vtable, "GetOutputNames", &P::GetOutputNames, &slots);
  CheckSlot(vtable, "GetParamNames", &P::GetParamNames, &slots);
  CheckSlot(vtable, "TryShrinkMemory", &P::TryShrinkMemory, &slots);
  CheckSlot(vtable, "GetInputByName", &P::GetInputByName, &slots);
  CheckSlot(vtable, "GetTensor", &P::GetTensor, &slots);
  CheckSlot(vtable, "GetMutableTensor", &P::GetMutableTensor, &slots);
  CheckSlot(vtable, "SaveOptimizedModel", &P::SaveOptimizedModel, &slots);
  CheckSlot(vtable, "SetStream", &P::SetStream, &slots);
  return slots;
}

constexpr unsigned char kCanary = 0xA5;
constexpr size_t kCanaryBytes = 256;

bool CanaryIntact(const unsigned char* p, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    if (p[i] != kCanary) return false;
  }
  return true;
}

void CheckMobileConfig(const std::string& model) {
  alignas(16) static unsigned char storage[sizeof(MobileConfig) + kCanaryBytes];
  std::memset(storage, kCanary, sizeof(storage));
  MobileConfig* config = new (storage) MobileConfig();
  const unsigned char* tail = storage + sizeof(MobileConfig);
  Expect(CanaryIntact(tail, kCanaryBytes), "constructing MobileConfig wrote past sizeof(MobileConfig)");

  // Plain (non-string) stores first: a misplaced member shows as a wrong value rather than a crash.
  static const char kBuffer[] = "bisect-lite model buffer";
  config->set_model_from_buffer(kBuffer, sizeof(kBuffer));
  Expect(config->lite_model_buffer_ptr() == kBuffer, "lite_model_buffer_ptr(): wrong offset");
  Expect(config->lite_model_buffer_size() == sizeof(kBuffer), "lite_model_buffer_size(): wrong offset");
  Expect(config->is_model_from_memory(), "is_model_from_memory(): wrong offset");
  if (!failures.empty()) {
    // Plain stores landed elsewhere: the std::string members are misplaced too, and letting the library
    // assign to them (or destroying the object) would crash instead of reporting. Leave the object as is.
    return;
  }

  // Long enough to live on the heap, so a misplaced std::string shows as garbage or a crash.
  const std::string path = model + std::string(200, '/') + "x";
  config->set_model_from_file(path);
  Expect(config->lite_model_file() == path, "lite_model_file(): the library wrote the model path elsewhere");

  const std::string program(300, 'p'), params(400, 'q');
  config->set_model_buffer(program.data(), program.size(), params.data(), params.size());
  Expect(config->model_buffer() == program, "model_buffer(): the library wrote the last members elsewhere");
  Expect(config->param_buffer() == params, "param_buffer(): the library wrote the last member elsewhere");

  // The library's own (out-of-line) accessor must agree with the header's inline one.
  using FromMemory = bool (*)(const MobileConfig*);
  auto library_from_memory =
      reinterpret_cast<FromMemory>(dlsym(RTLD_DEFAULT, "_ZNK6paddle8lite_api12MobileConfig20is_model_from_memoryEv"));
  if (library_from_memory) {
    Expect(library_from_memory(config) == config->is_model_from_memory(),
           "the library's is_model_from_memory() reads another byte than the header's");
  } else {
    failures.push_back("lite.so does not export MobileConfig::is_model_from_memory() const");
  }

#ifndef BISECT_LITE_HOST_OMIT_OPENCL_API
  config->set_opencl_binary_path_name(std::string(100, 'd'), std::string(100, 'n'));
  config->set_opencl_tune(api::CL_TUNE_RAPID, std::string(100, 't'), std::string(100, 'u'), 4);
  config->set_opencl_precision(api::CL_PRECISION_FP32);
#endif
#ifndef BISECT_LITE_HOST_OMIT_ARM_API
  config->set_threads(2);
  config->set_power_mode(api::LITE_POWER_NO_BIND);
#endif
  Expect(config->lite_model_file() == path, "a ConfigBase setter overwrote MobileConfig's members");
  Expect(CanaryIntact(tail, kCanaryBytes), "the library wrote past sizeof(MobileConfig)");
  config->~MobileConfig();
}

void CheckTensor() {
  alignas(16) unsigned char storage[sizeof(Tensor) + 64];
  std::memset(storage, kCanary, sizeof(storage));
  void* marker = &storage;
  new (storage) Tensor(marker);
  void* stored = nullptr;
  std::memcpy(&stored, storage, sizeof(stored));
  Expect(sizeof(Tensor) == sizeof(void*), "sizeof(Tensor) is not one pointer");
  Expect(stored == marker, "Tensor(void*) does not store its pointer at offset 0");
  Expect(CanaryIntact(storage + sizeof(void*), sizeof(storage) - sizeof(void*)),
         "Tensor(void*) wrote past one pointer");
}

template <typename E>
std::string Pairs(std::initializer_list<std::pair<const char*, E>> items) {
  std::string out = "{";
  for (const auto& item : items) {
    out += (out.size() > 1 ? ", " : "") + Json(item.first) + ": " + std::to_string(static_cast<int>(item.second));
  }
  return out + "}";
}

std::string Enums() {
  using PT = api::PrecisionType;
  using TT = api::TargetType;
  std::string j = "{\"PrecisionType\": " +
                  Pairs<PT>({{"kUnk", PT::kUnk}, {"kFloat", PT::kFloat}, {"kInt8", PT::kInt8}, {"kInt32", PT::kInt32},
                             {"kAny", PT::kAny}, {"kFP16", PT::kFP16}, {"kBool", PT::kBool}, {"kInt64", PT::kInt64},
                             {"kInt16", PT::kInt16}, {"kUInt8", PT::kUInt8}, {"kFP64", PT::kFP64}});
  j += ", \"TargetType\": " + Pairs<TT>({{"kUnk", TT::kUnk}, {"kHost", TT::kHost}, {"kX86", TT::kX86},
                                        {"kCUDA", TT::kCUDA}, {"kARM", TT::kARM}, {"kOpenCL", TT::kOpenCL},
                                        {"kAny", TT::kAny}});
  j += ", \"PowerMode\": " +
       Pairs<api::PowerMode>({{"LITE_POWER_HIGH", api::LITE_POWER_HIGH}, {"LITE_POWER_LOW", api::LITE_POWER_LOW},
                              {"LITE_POWER_FULL", api::LITE_POWER_FULL}, {"LITE_POWER_NO_BIND", api::LITE_POWER_NO_BIND},
                              {"LITE_POWER_RAND_HIGH", api::LITE_POWER_RAND_HIGH},
                              {"LITE_POWER_RAND_LOW", api::LITE_POWER_RAND_LOW}});
  j += ", \"CLTuneMode\": " +
       Pairs<api::CLTuneMode>({{"CL_TUNE_NONE", api::CL_TUNE_NONE}, {"CL_TUNE_RAPID", api::CL_TUNE_RAPID},
                               {"CL_TUNE_NORMAL", api::CL_TUNE_NORMAL}, {"CL_TUNE_EXHAUSTIVE", api::CL_TUNE_EXHAUSTIVE}});
  j += ", \"CLPrecisionType\": " +
       Pairs<api::CLPrecisionType>({{"CL_PRECISION_AUTO", api::CL_PRECISION_AUTO},
                                    {"CL_PRECISION_FP32", api::CL_PRECISION_FP32},
                                    {"CL_PRECISION_FP16", api::CL_PRECISION_FP16}});
  return j + "}";
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: abi_check MODEL.nb\n";
    return 2;
  }
  const std::string model = argv[1];
  CheckTensor();
  CheckMobileConfig(model);

  std::vector<Slot> slots;
  std::string version;
  // With a wrong MobileConfig layout, loading a model through it would crash rather than report.
  if (failures.empty()) {
    try {
      MobileConfig config;
      config.set_model_from_file(model);
      std::shared_ptr<PaddlePredictor> predictor = paddle::lite_api::CreatePaddlePredictor<MobileConfig>(config);
      if (!predictor) throw std::runtime_error("no predictor");
      slots = CheckVtable(predictor.get());
      if (failures.empty()) version = predictor->GetVersion();  // a virtual call, safe once the slots match
    } catch (const std::exception& e) {
      failures.push_back(std::string("cannot load ") + model + ": " + e.what());
    }
  }

  std::ostringstream out;
  out << "{\"sizeof\": {\"Tensor\": " << sizeof(Tensor) << ", \"ConfigBase\": " << sizeof(api::ConfigBase)
      << ", \"MobileConfig\": " << sizeof(MobileConfig) << "}, \"enums\": " << Enums() << ", \"version\": "
      << Json(version) << ", \"vtable\": [";
  for (size_t i = 0; i < slots.size(); ++i) {
    out << (i ? ", " : "") << "{\"slot\": " << slots[i].index << ", \"header\": " << Json(slots[i].header)
        << ", \"library\": " << Json(slots[i].library) << "}";
  }
  out << "], \"failures\": [";
  for (size_t i = 0; i < failures.size(); ++i) out << (i ? ", " : "") << Json(failures[i]);
  out << "]}\n";
  std::cout << out.str();
  return failures.empty() ? 0 : 1;
}
