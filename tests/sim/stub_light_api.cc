// Host (x86) stand-in for the Paddle-Lite light API declared in runners/android/host/include/paddle_api.h.
// The runner's real-library tests (tests/test_runner_native.py) cover what the real lite.so does; this stub
// covers what it cannot on a host: OpenCL being available (the config calls it gates), a Run() that fails,
// a predictor that counts its runs, and inputs and outputs of every dtype (an echo). It runs no model.
//
// The "model" is a text file:
//
//   bisect-lite-stub-model        (first line, required)
//   version 2.13-stub             (GetVersion(); default "stub")
//   input NAME                    (one per predictor input, in predictor order)
//   run_counter                   (adds a last output "run_count": int64 0-d, number of Run() calls)
//   fail_run                      (Run() throws std::runtime_error)
//   # comment
//
// Run() echoes: output i is named "out_<input i name>" and is a byte copy of input i
// with the same shape and precision.
//
// Environment:
//   STUB_OPENCL       "0": no OpenCL; "fp32": OpenCL without fp16; else OpenCL with fp16. (The runner reads fp16
//                     from the device, i.e. from tests/sim/stub_opencl.cc, which follows the same variable.)
//   STUB_CONFIG_LOG   file to which every config call is appended, one line each.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "paddle_api.h"  // NOLINT

namespace paddle {
namespace lite_api {

namespace {

struct StubTensor {
  shape_t shape;
  PrecisionType precision = PrecisionType::kUnk;
  TargetType target = TargetType::kUnk;
  std::vector<unsigned char> bytes;
};

StubTensor* Raw(void* p) { return static_cast<StubTensor*>(p); }

int64_t Numel(const shape_t& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

template <typename T>
PrecisionType PrecisionOf() {
  return PrecisionType::kUnk;
}
template <>
PrecisionType PrecisionOf<bool>() {
  return PrecisionType::kBool;
}
template <>
PrecisionType PrecisionOf<float>() {
  return PrecisionType::kFloat;
}
template <>
PrecisionType PrecisionOf<double>() {
  return PrecisionType::kFP64;
}
template <>
PrecisionType PrecisionOf<uint8_t>() {
  return PrecisionType::kUInt8;
}
template <>
PrecisionType PrecisionOf<int8_t>() {
  return PrecisionType::kInt8;
}
template <>
PrecisionType PrecisionOf<int16_t>() {
  return PrecisionType::kInt16;
}
template <>
PrecisionType PrecisionOf<int32_t>() {
  return PrecisionType::kInt32;
}
template <>
PrecisionType PrecisionOf<int64_t>() {
  return PrecisionType::kInt64;
}

void LogCall(const std::string& line) {
  const char* path = std::getenv("STUB_CONFIG_LOG");
  if (!path || !*path) return;
  std::ofstream out(path, std::ios::app);
  out << line << "\n";
}

class StubPredictor : public PaddlePredictor {
 public:
  StubPredictor(std::string version, std::vector<std::string> inputs, bool run_counter, bool fail_run)
      : version_(std::move(version)),
        input_names_(std::move(inputs)),
        run_counter_(run_counter),
        fail_run_(fail_run),
        inputs_(input_names_.size()) {
    for (const std::string& n : input_names_) output_names_.push_back("out_" + n);
    if (run_counter_) output_names_.push_back("run_count");
    outputs_.resize(output_names_.size());
  }

  std::unique_ptr<Tensor> GetInput(int i) override {
    if (i < 0 || static_cast<size_t>(i) >= inputs_.size()) return nullptr;
    return std::unique_ptr<Tensor>(new Tensor(static_cast<void*>(&inputs_[i])));
  }

  std::unique_ptr<const Tensor> GetOutput(int i) const override {
    if (i < 0 || static_cast<size_t>(i) >= outputs_.size()) return nullptr;
    return std::unique_ptr<const Tensor>(new Tensor(static_cast<const void*>(&outputs_[i])));
  }

  void Run() override {
    ++runs_;
    if (fail_run_) throw std::runtime_error("stub: Run() fails as the model asks");
    for (size_t i = 0; i < inputs_.size(); ++i) {
      const StubTensor& in = inputs_[i];
      if (in.precision == PrecisionType::kUnk) throw std::runtime_error("stub: input " + input_names_[i] + " unset");
      if (in.bytes.size() != static_cast<size_t>(Numel(in.shape)) * ElementSize(in.precision)) {
        throw std::runtime_error("stub: input " + input_names_[i] + " was resized after mutable_data");
      }
      outputs_[i] = in;
      outputs_[i].target = TargetType::kHost;
    }
    if (run_counter_) {
      StubTensor& t = outputs_.back();
      t.shape.clear();
      t.precision = PrecisionType::kInt64;
      t.target = TargetType::kHost;
      t.bytes.resize(sizeof(int64_t));
      const int64_t n = runs_;
      std::memcpy(t.bytes.data(), &n, sizeof(n));
    }
  }

  std::string GetVersion() const override { return version_; }
  std::vector<std::string> GetInputNames() override { return input_names_; }
  std::vector<std::string> GetOutputNames() override { return output_names_; }

  // Not used by the runner.
  std::shared_ptr<PaddlePredictor> Clone() override { throw std::runtime_error("stub: Clone"); }
  std::shared_ptr<PaddlePredictor> Clone(const std::vector<std::string>&) override {
    throw std::runtime_error("stub: Clone");
  }
  bool TryShrinkMemory() override { return false; }
  std::unique_ptr<Tensor> GetInputByName(const std::string&) override { return nullptr; }
  std::unique_ptr<const Tensor> GetTensor(const std::string&) const override { return nullptr; }

 private:
  static size_t ElementSize(PrecisionType p) {
    switch (p) {
      case PrecisionType::kFloat:
      case PrecisionType::kInt32: return 4;
      case PrecisionType::kFP64:
      case PrecisionType::kInt64: return 8;
      case PrecisionType::kFP16:
      case PrecisionType::kInt16: return 2;
      case PrecisionType::kInt8:
      case PrecisionType::kUInt8:
      case PrecisionType::kBool: return 1;
      default: return 0;
    }
  }

  std::string version_;
  std::vector<std::string> input_names_;
  std::vector<std::string> output_names_;
  bool run_counter_;
  bool fail_run_;
  std::vector<StubTensor> inputs_;
  std::vector<StubTensor> outputs_;
  int64_t runs_ = 0;
};

}  // namespace

// The library defines these PaddlePredictor virtuals; the runner does not call them.
std::vector<std::string> PaddlePredictor::GetParamNames() { return {}; }
std::unique_ptr<Tensor> PaddlePredictor::GetMutableTensor(const std::string&) { return nullptr; }
void PaddlePredictor::SaveOptimizedModel(const std::string&, LiteModelType, bool) {
  throw std::runtime_error("stub: SaveOptimizedModel");
}

// ------------------------------------------------------------------ OpenCL probe

bool IsOpenCLBackendValid(bool check_fp16_valid) {
  const char* env = std::getenv("STUB_OPENCL");
  const std::string mode = env ? env : "";
  if (mode == "0") return false;
  if (mode == "fp32") return !check_fp16_valid;
  return true;
}

// ------------------------------------------------------------------ Tensor

Tensor::Tensor(void* raw) : raw_tensor_(raw) {}
Tensor::Tensor(const void* raw) : raw_tensor_(const_cast<void*>(raw)) {}

void Tensor::Resize(const shape_t& shape) { Raw(raw_tensor_)->shape = shape; }

template <typename T>
const T* Tensor::data() const {
  return reinterpret_cast<const T*>(Raw(raw_tensor_)->bytes.data());
}

template <typename T>
T* Tensor::mutable_data(TargetType type) const {
  StubTensor* t = Raw(raw_tensor_);
  t->target = type;
  t->precision = PrecisionOf<T>();
  t->bytes.resize(static_cast<size_t>(Numel(t->shape)) * sizeof(T));
  return reinterpret_cast<T*>(t->bytes.data());
}

template <typename T, TargetType type>
void Tensor::CopyFromCpu(const T* src) {
  const int64_t n = Numel(Raw(raw_tensor_)->shape);
  if (n <= 0) throw std::runtime_error("stub: call Resize before CopyFromCpu");
  std::memcpy(mutable_data<T>(type), src, static_cast<size_t>(n) * sizeof(T));
}

template <typename T>
void Tensor::CopyToCpu(T* dst) const {
  const StubTensor* t = Raw(raw_tensor_);
  if (!t->bytes.empty()) std::memcpy(dst, t->bytes.data(), t->bytes.size());
}

shape_t Tensor::shape() const { return Raw(raw_tensor_)->shape; }

TargetType Tensor::target() const {
  if (Raw(raw_tensor_)->target == TargetType::kUnk) throw std::runtime_error("stub: tensor not initialized");
  return Raw(raw_tensor_)->target;
}

PrecisionType Tensor::precision() const {
  if (Raw(raw_tensor_)->precision == PrecisionType::kUnk) throw std::runtime_error("stub: tensor not initialized");
  return Raw(raw_tensor_)->precision;
}

void Tensor::SetPrecision(PrecisionType precision) { Raw(raw_tensor_)->precision = precision; }

// The same instantiations as the v2.10 - v2.13 libraries export.
template const double* Tensor::data<double>() const;
template const float* Tensor::data<float>() const;
template const int64_t* Tensor::data<int64_t>() const;
template const int32_t* Tensor::data<int32_t>() const;
template const int16_t* Tensor::data<int16_t>() const;
template const int8_t* Tensor::data<int8_t>() const;
template const uint16_t* Tensor::data<uint16_t>() const;
template const uint8_t* Tensor::data<uint8_t>() const;
template const bool* Tensor::data<bool>() const;
template const void* Tensor::data<void>() const;

template double* Tensor::mutable_data<double>(TargetType) const;
template float* Tensor::mutable_data<float>(TargetType) const;
template int64_t* Tensor::mutable_data<int64_t>(TargetType) const;
template int* Tensor::mutable_data<int>(TargetType) const;
template int16_t* Tensor::mutable_data<int16_t>(TargetType) const;
template int8_t* Tensor::mutable_data<int8_t>(TargetType) const;
template uint16_t* Tensor::mutable_data<uint16_t>(TargetType) const;
template uint8_t* Tensor::mutable_data<uint8_t>(TargetType) const;
template bool* Tensor::mutable_data<bool>(TargetType) const;

// v2.12 exports CopyFromCpu only for these types (v2.13 adds int64_t).
template void Tensor::CopyFromCpu<int, TargetType::kHost>(const int*);
template void Tensor::CopyFromCpu<float, TargetType::kHost>(const float*);
template void Tensor::CopyFromCpu<int8_t, TargetType::kHost>(const int8_t*);
template void Tensor::CopyFromCpu<uint8_t, TargetType::kHost>(const uint8_t*);
template void Tensor::CopyFromCpu<int, TargetType::kARM>(const int*);
template void Tensor::CopyFromCpu<float, TargetType::kARM>(const float*);
template void Tensor::CopyFromCpu<int8_t, TargetType::kARM>(const int8_t*);
template void Tensor::CopyFromCpu<uint8_t, TargetType::kARM>(const uint8_t*);

template void Tensor::CopyToCpu<float>(float*) const;
template void Tensor::CopyToCpu<int>(int*) const;
template void Tensor::CopyToCpu<int64_t>(int64_t*) const;
template void Tensor::CopyToCpu<int8_t>(int8_t*) const;
template void Tensor::CopyToCpu<uint8_t>(uint8_t*) const;

// ------------------------------------------------------------------ configs

// The stub keeps no ConfigBase state: the calls are only logged.
ConfigBase::ConfigBase(PowerMode, int) {}
ConfigBase::~ConfigBase() {}

#ifndef BISECT_LITE_HOST_OMIT_ARM_API
void ConfigBase::set_threads(int threads) { LogCall("set_threads " + std::to_string(threads)); }

void ConfigBase::set_power_mode(PowerMode mode) {
  LogCall("set_power_mode " + std::to_string(static_cast<int>(mode)));
}
#endif

#ifndef BISECT_LITE_HOST_OMIT_OPENCL_API
// Like the real library, the OpenCL settings are ignored when OpenCL is unavailable.
void ConfigBase::set_opencl_binary_path_name(const std::string& path, const std::string& name) {
  if (IsOpenCLBackendValid()) LogCall("set_opencl_binary_path_name " + path + " " + name);
}

void ConfigBase::set_opencl_tune(CLTuneMode tune_mode, const std::string& path, const std::string& name,
                                 size_t lws_repeats) {
  if (IsOpenCLBackendValid()) {
    LogCall("set_opencl_tune " + std::to_string(static_cast<int>(tune_mode)) + " " + path + " " + name + " " +
            std::to_string(lws_repeats));
  }
}

void ConfigBase::set_opencl_precision(CLPrecisionType p) {
  if (IsOpenCLBackendValid()) LogCall("set_opencl_precision " + std::to_string(static_cast<int>(p)));
}
#endif

void MobileConfig::set_model_from_file(const std::string& x) {
  model_file_ = x;
  LogCall("set_model_from_file " + x);
}

// ------------------------------------------------------------------ predictor

template <typename ConfigT>
std::shared_ptr<PaddlePredictor> CreatePaddlePredictor(const ConfigT& config) {
  std::ifstream in(config.lite_model_file());
  if (!in) throw std::runtime_error("stub: cannot open model " + config.lite_model_file());
  std::string line;
  if (!std::getline(in, line) || line != "bisect-lite-stub-model") {
    throw std::runtime_error("stub: " + config.lite_model_file() + " is not a stub model");
  }
  std::string version = "stub";
  std::vector<std::string> inputs;
  bool run_counter = false;
  bool fail_run = false;
  while (std::getline(in, line)) {
    std::istringstream words(line);
    std::string key, value;
    words >> key >> value;
    if (key.empty() || key[0] == '#') continue;
    if (key == "version" && !value.empty()) {
      version = value;
    } else if (key == "input" && !value.empty()) {
      inputs.push_back(value);
    } else if (key == "run_counter") {
      run_counter = true;
    } else if (key == "fail_run") {
      fail_run = true;
    } else {
      throw std::runtime_error("stub: bad model line '" + line + "'");
    }
  }
  LogCall("create_predictor");
  return std::make_shared<StubPredictor>(version, inputs, run_counter, fail_run);
}

template std::shared_ptr<PaddlePredictor> CreatePaddlePredictor<MobileConfig>(const MobileConfig&);

}  // namespace lite_api
}  // namespace paddle
