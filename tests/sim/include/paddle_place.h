// Test-only header for bisect-lite.
//
// It mirrors the declarations of Paddle-Lite's public header `paddle_place.h`
// (namespace paddle::lite_api, same names and enum values, checked against the
// v2.10 - v2.13 releases) for the small subset that bisect_lite_runner uses, so
// that the runner compiles unchanged against this header on an x86 host and
// against the real prebuilt library on Android. It is not Paddle-Lite code.
#ifndef BISECT_LITE_SIM_PADDLE_PLACE_H_
#define BISECT_LITE_SIM_PADDLE_PLACE_H_

#include <cstdint>

#ifndef LITE_API
#define LITE_API
#endif

namespace paddle {
namespace lite_api {

enum class TargetType : int {
  kUnk = 0,
  kHost = 1,
  kX86 = 2,
  kCUDA = 3,
  kARM = 4,
  kOpenCL = 5,
  kAny = 6,
};

enum class PrecisionType : int {
  kUnk = 0,
  kFloat = 1,
  kInt8 = 2,
  kInt32 = 3,
  kAny = 4,
  kFP16 = 5,
  kBool = 6,
  kInt64 = 7,
  kInt16 = 8,
  kUInt8 = 9,
  kFP64 = 10,
};

typedef enum {
  LITE_POWER_HIGH = 0,
  LITE_POWER_LOW = 1,
  LITE_POWER_FULL = 2,
  LITE_POWER_NO_BIND = 3,
  LITE_POWER_RAND_HIGH = 4,
  LITE_POWER_RAND_LOW = 5
} PowerMode;

typedef enum { CL_TUNE_NONE = 0, CL_TUNE_RAPID = 1, CL_TUNE_NORMAL = 2, CL_TUNE_EXHAUSTIVE = 3 } CLTuneMode;

typedef enum { CL_PRECISION_AUTO = 0, CL_PRECISION_FP32 = 1, CL_PRECISION_FP16 = 2 } CLPrecisionType;

}  // namespace lite_api
}  // namespace paddle

#endif  // BISECT_LITE_SIM_PADDLE_PLACE_H_
