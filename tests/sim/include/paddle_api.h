// Test-only header for bisect-lite.
//
// It mirrors the declarations of Paddle-Lite's public header `paddle_api.h`
// (the C++ light API: MobileConfig, CreatePaddlePredictor<MobileConfig>,
// PaddlePredictor, Tensor, IsOpenCLBackendValid) for testing; only the subset
// bisect_lite_runner uses is declared, with the same names, namespaces and
// signatures as the v2.10 - v2.13 releases. Private members are this file's own.
// It is not Paddle-Lite code. tests/sim/stub_light_api.cc implements it.
//
// Define BISECT_LITE_SIM_OMIT_ARM_API / BISECT_LITE_SIM_OMIT_OPENCL_API to leave
// out the ARM-only / OpenCL-only calls, which checks that the runner's guards
// really avoid them.
#ifndef BISECT_LITE_SIM_PADDLE_API_H_
#define BISECT_LITE_SIM_PADDLE_API_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "paddle_place.h"  // NOLINT

namespace paddle {
namespace lite_api {

using shape_t = std::vector<int64_t>;

#ifndef BISECT_LITE_SIM_OMIT_OPENCL_API
// True if the device supports OpenCL (and fp16 when check_fp16_valid is true).
LITE_API bool IsOpenCLBackendValid(bool check_fp16_valid = false);
#endif

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

class LITE_API PaddlePredictor {
 public:
  PaddlePredictor() = default;

  virtual std::unique_ptr<Tensor> GetInput(int i) = 0;
  virtual std::unique_ptr<const Tensor> GetOutput(int i) const = 0;
  virtual void Run() = 0;
  virtual std::string GetVersion() const = 0;
  virtual std::vector<std::string> GetInputNames() = 0;
  virtual std::vector<std::string> GetOutputNames() = 0;

  virtual ~PaddlePredictor() = default;
};

class LITE_API ConfigBase {
 public:
  explicit ConfigBase(PowerMode mode = LITE_POWER_NO_BIND, int threads = 1);

#ifndef BISECT_LITE_SIM_OMIT_ARM_API
  void set_threads(int threads);
  int threads() const { return threads_; }
  void set_power_mode(PowerMode mode);
  PowerMode power_mode() const { return mode_; }
#endif

#ifndef BISECT_LITE_SIM_OMIT_OPENCL_API
  void set_opencl_binary_path_name(const std::string& path, const std::string& name);
  void set_opencl_tune(CLTuneMode tune_mode = CL_TUNE_NONE,
                       const std::string& path = "",
                       const std::string& name = "",
                       size_t lws_repeats = 4);
  void set_opencl_precision(CLPrecisionType p = CL_PRECISION_AUTO);
#endif

 private:
  int threads_{1};
  PowerMode mode_{LITE_POWER_NO_BIND};
};

class LITE_API MobileConfig : public ConfigBase {
 public:
  void set_model_from_file(const std::string& x);
  const std::string& lite_model_file() const { return lite_model_file_; }

 private:
  std::string lite_model_file_;
};

template <typename ConfigT>
LITE_API std::shared_ptr<PaddlePredictor> CreatePaddlePredictor(const ConfigT&);

}  // namespace lite_api
}  // namespace paddle

#endif  // BISECT_LITE_SIM_PADDLE_API_H_
