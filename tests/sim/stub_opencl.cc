// A stand-in libOpenCL.so for the runner built against tests/sim/stub_light_api.cc: the runner reads the OpenCL
// platform, device and cl_khr_fp16 through the OpenCL C API (dlopen("libOpenCL.so")), and a test puts this library
// first on LD_LIBRARY_PATH. One platform, one GPU device. Only the four calls the runner makes exist.
//
// Environment: STUB_OPENCL "fp32": the device lacks cl_khr_fp16; anything else: it lists it.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

namespace {

int32_t Answer(const std::string& value, size_t size, void* out, size_t* size_ret) {
  if (size_ret) *size_ret = value.size() + 1;
  if (out) {
    if (size < value.size() + 1) return -30;  // CL_INVALID_VALUE
    std::memcpy(out, value.c_str(), value.size() + 1);
  }
  return 0;
}

// Distinct addresses serve as the platform and device handles.
char platform_handle, device_handle;

}  // namespace

extern "C" {

int32_t clGetPlatformIDs(uint32_t num_entries, void** platforms, uint32_t* num_platforms) {
  if (num_platforms) *num_platforms = 1;
  if (platforms && num_entries > 0) platforms[0] = &platform_handle;
  return 0;
}

int32_t clGetPlatformInfo(void* platform, uint32_t what, size_t size, void* out, size_t* size_ret) {
  if (platform != &platform_handle) return -32;  // CL_INVALID_PLATFORM
  if (what == 0x0902) return Answer("Stub OpenCL", size, out, size_ret);            // CL_PLATFORM_NAME
  if (what == 0x0901) return Answer("OpenCL 1.2 stub", size, out, size_ret);        // CL_PLATFORM_VERSION
  return -30;
}

int32_t clGetDeviceIDs(void* platform, uint64_t type, uint32_t num_entries, void** devices, uint32_t* num_devices) {
  if (platform != &platform_handle) return -32;
  if (!(type & (1 << 2))) return -1;  // only a GPU (CL_DEVICE_TYPE_GPU); else CL_DEVICE_NOT_FOUND
  if (num_devices) *num_devices = 1;
  if (devices && num_entries > 0) devices[0] = &device_handle;
  return 0;
}

int32_t clGetDeviceInfo(void* device, uint32_t what, size_t size, void* out, size_t* size_ret) {
  if (device != &device_handle) return -33;  // CL_INVALID_DEVICE
  const char* mode = std::getenv("STUB_OPENCL");
  const bool fp16 = !(mode && std::string(mode) == "fp32");
  if (what == 0x102B) return Answer("Stub GPU", size, out, size_ret);     // CL_DEVICE_NAME
  if (what == 0x102D) return Answer("9.9-stub", size, out, size_ret);     // CL_DRIVER_VERSION
  if (what == 0x1030) {                                                   // CL_DEVICE_EXTENSIONS
    return Answer(fp16 ? "cl_khr_global_int32_base_atomics cl_khr_fp16 cl_khr_3d_image_writes"
                       : "cl_khr_global_int32_base_atomics cl_khr_3d_image_writes",
                  size, out, size_ret);
  }
  return -30;
}

}  // extern "C"
