// bisect-lite's own declarations of the part of Paddle-Lite's C++ light API that bisect_lite_runner uses,
// binary-compatible with Paddle-Lite v2.13-rc on Linux x86-64 (GCC/libstdc++, C++11 string ABI). Written for
// bisect-lite from the library's exported symbols and public API, not copied from Paddle-Lite.
//
// Why it exists: the `paddlelite` wheel's lite.so exports this C++ API but ships no headers, so building the
// runner on a host (runners/android/host/build.sh) needs declarations of its own. Android builds use the
// real headers of the prebuilt library (PADDLE_LITE_DIR/include) instead.
//
// What the runner depends on, and how tests/test_runner_native.py checks it against the real lite.so:
//   - every function it calls, by mangled name (the name encodes the parameter types): linked with
//     --no-undefined and compared with `nm -D` of lite.so;
//   - the PaddlePredictor vtable order (calls are virtual): abi_check.cc looks up, for every virtual declared
//     here, the function the real predictor's vtable holds in that slot;
//   - the layout of MobileConfig, which the runner constructs on its stack: abi_check.cc lets the library's
//     setters write a MobileConfig built from this header and reads the fields back inline, with canaries;
//   - the enum values (paddle_place.h), against the real library's Python bindings.
//
// Test hooks: BISECT_LITE_HOST_OMIT_ARM_API / BISECT_LITE_HOST_OMIT_OPENCL_API leave out the ARM-only /
// OpenCL-only calls, to check that the runner's guards really avoid them.
#ifndef BISECT_LITE_HOST_PADDLE_API_H_
#define BISECT_LITE_HOST_PADDLE_API_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "paddle_place.h"  // NOLINT

namespace paddle {
namespace lite_api {

using shape_t = std::vector<int64_t>;

enum class LiteModelType { kProtobuf = 0, kNaiveBuffer, UNK };

#ifndef BISECT_LITE_HOST_OMIT_OPENCL_API
// True if the device supports OpenCL (and fp16 when check_fp16_valid is true).
LITE_API bool IsOpenCLBackendValid(bool check_fp16_valid = false);
#endif

// A handle on a library-owned tensor: one pointer, no virtuals.
struct LITE_API Tensor {
  explicit Tensor(void* raw);
  explicit Tensor(const void* raw);

  void Resize(const shape_t& shape);

  template <typename T>
  const T* data() const;

  template <typename T>
  T* mutable_data(TargetType type = TargetType::kHost) const;

  template <typename T, TargetType type = TargetType::kHost>
  void CopyFromCpu(const T* data);

  template <typename T>
  void CopyToCpu(T* data) const;

  shape_t shape() const;
  TargetType target() const;
  PrecisionType precision() const;
  void SetPrecision(PrecisionType precision);

 private:
  void* raw_tensor_;
};

// Every virtual in the library's order: the slot index is what a virtual call uses.
class LITE_API PaddlePredictor {
 public:
  PaddlePredictor() = default;

  virtual std::unique_ptr<Tensor> GetInput(int i) = 0;
  virtual std::unique_ptr<const Tensor> GetOutput(int i) const = 0;
  virtual void Run() = 0;
  virtual std::shared_ptr<PaddlePredictor> Clone() = 0;
  virtual std::shared_ptr<PaddlePredictor> Clone(const std::vector<std::string>& var_names) = 0;
  virtual std::string GetVersion() const = 0;
  virtual std::vector<std::string> GetInputNames() = 0;
  virtual std::vector<std::string> GetOutputNames() = 0;
  virtual std::vector<std::string> GetParamNames();  // defined in the library
  virtual bool TryShrinkMemory() = 0;
  virtual std::unique_ptr<Tensor> GetInputByName(const std::string& name) = 0;
  virtual std::unique_ptr<const Tensor> GetTensor(const std::string& name) const = 0;
  virtual std::unique_ptr<Tensor> GetMutableTensor(const std::string& name);  // defined in the library
  virtual void SaveOptimizedModel(const std::string& model_dir,
                                  LiteModelType model_type = LiteModelType::kProtobuf,
                                  bool record_info = false);  // defined in the library
  virtual void SetStream(TargetType /*target*/, void* /*stream*/) {}

  virtual ~PaddlePredictor() = default;

 protected:
  int threads_{1};
  PowerMode mode_{LITE_POWER_NO_BIND};
};

// The runner never touches ConfigBase's members: the library's exported constructor and destructor build and
// destroy them; this class only reserves their room (528 bytes in v2.13-rc; abi_check.cc verifies it through
// the offsets of MobileConfig's own members, which follow it).
class LITE_API ConfigBase {
 public:
  explicit ConfigBase(PowerMode mode = LITE_POWER_NO_BIND, int threads = 1);
  ~ConfigBase();
  ConfigBase(const ConfigBase&) = delete;
  ConfigBase& operator=(const ConfigBase&) = delete;

#ifndef BISECT_LITE_HOST_OMIT_ARM_API
  void set_threads(int threads);
  void set_power_mode(PowerMode mode);
#endif

#ifndef BISECT_LITE_HOST_OMIT_OPENCL_API
  void set_opencl_binary_path_name(const std::string& path, const std::string& name);
  void set_opencl_tune(CLTuneMode tune_mode = CL_TUNE_NONE,
                       const std::string& path = "",
                       const std::string& name = "",
                       size_t lws_repeats = 4);
  void set_opencl_precision(CLPrecisionType p = CL_PRECISION_AUTO);
#endif

 private:
  alignas(8) unsigned char library_members_[528];
};

// MobileConfig's own members are built and destroyed by inline code (the class has no exported constructor),
// so their types and order are ABI and declared as the library lays them out.
class LITE_API MobileConfig : public ConfigBase {
 public:
  void set_model_from_file(const std::string& x);
  void set_model_from_buffer(const char* buffer, size_t length);
  // Deprecated in Paddle-Lite; declared because it is the library code that writes the last two members.
  void set_model_buffer(const char* model_buffer,
                        size_t model_buffer_size,
                        const char* param_buffer,
                        size_t param_buffer_size);

  const std::string& lite_model_file() const { return model_file_; }
  const char* lite_model_buffer_ptr() const { return model_buffer_ptr_; }
  size_t lite_model_buffer_size() const { return model_buffer_size_; }
  bool is_model_from_memory() const { return model_from_memory_; }
  const std::string& model_buffer() const { return legacy_model_buffer_; }
  const std::string& param_buffer() const { return legacy_param_buffer_; }

 private:
  bool model_from_memory_{false};
  PrecisionMode precision_mode_{LITE_PRECISION_NORMAL};
  std::string model_file_;
  const char* model_buffer_ptr_{nullptr};
  size_t model_buffer_size_{0};
  std::string legacy_model_buffer_;
  std::string legacy_param_buffer_;
};

template <typename ConfigT>
LITE_API std::shared_ptr<PaddlePredictor> CreatePaddlePredictor(const ConfigT&);

}  // namespace lite_api
}  // namespace paddle

#endif  // BISECT_LITE_HOST_PADDLE_API_H_
