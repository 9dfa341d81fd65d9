// bisect-lite's own declarations of the Paddle-Lite enums that bisect_lite_runner uses (namespace
// paddle::lite_api, same names and values as Paddle-Lite v2.13-rc). Written for bisect-lite, not taken from
// Paddle-Lite. Enum values cross the library boundary as plain ints, so they are part of the ABI:
// tests/test_runner_native.py compares them with the real library's Python bindings (paddlelite.lite).
//
// Use: building the runner on a Linux x86-64 host against the `paddlelite` wheel's lite.so, which ships no
// headers (runners/android/host/build.sh). Android builds use the real headers of the prebuilt library.
#ifndef BISECT_LITE_HOST_PADDLE_PLACE_H_
#define BISECT_LITE_HOST_PADDLE_PLACE_H_

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

typedef enum { LITE_PRECISION_NORMAL = 0, LITE_PRECISION_LOW = 1 } PrecisionMode;

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

#endif  // BISECT_LITE_HOST_PADDLE_PLACE_H_
