// Device helpers shared by the CUDA kernels of every op (csrc/cuda/<op>.cu). Plain CUDA, no torch headers,
// so each .cu still compiles with nvcc alone (scripts/compile_cuda_sources.sh). Only .cu files include it:
// the bindings are compiled by the host compiler, which knows none of the intrinsics below.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <mutex>

#include "../common.h"

namespace ganops {

// The largest gridDim.x; launchers with one block per item refuse more items than this.
constexpr int64_t kMaxGridX = 2147483647;

// What launchers need to know about the current device, read from the driver once per device.
struct DeviceInfo {
  int device = 0;
  int major = 0;
  int sm_count = 0;
  int shared_optin = 0;  // bytes of dynamic shared memory a block may opt into
};

// The current device's DeviceInfo, from any host thread. A failure is returned (and tried again by the next
// call), never remembered. Inline: one cache for the whole library, whichever .cu asks.
inline cudaError_t current_device_info(DeviceInfo* info) {
  static std::mutex mutex;
  static std::map<int, DeviceInfo> known;
  int device = 0;
  cudaError_t error = cudaGetDevice(&device);
  if (error != cudaSuccess) {
    return error;
  }
  const std::lock_guard<std::mutex> lock(mutex);
  const auto found = known.find(device);
  if (found != known.end()) {
    *info = found->second;
    return cudaSuccess;
  }
  DeviceInfo read;
  read.device = device;
  error = cudaDeviceGetAttribute(&read.major, cudaDevAttrComputeCapabilityMajor, device);
  if (error == cudaSuccess) {
    error = cudaDeviceGetAttribute(&read.sm_count, cudaDevAttrMultiProcessorCount, device);
  }
  if (error == cudaSuccess) {
    error = cudaDeviceGetAttribute(&read.shared_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  }
  if (error == cudaSuccess) {
    known.emplace(device, read);
    *info = read;
  }
  return error;
}

// Loads convert to acc_type<T>, stores round to nearest from it.
__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_acc(acc_type<T> v) {
  return v;
}
template <>
__device__ __forceinline__ __half from_acc<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// The sum of v over the warp, returned to every lane. The butterfly adds the same operands in the same
// order as a shift-down tree does for lane 0, so code that reads lane 0 only gets identical bits either way.
template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t v) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  }
  return v;
}

// The sum of v over the block, returned to every thread, in a fixed order (deterministic). Every thread of
// the block must call it, and the block must have exactly Threads threads: the kernel's own block size is
// the template argument, so each kernel family gets its own shared buffer of the right size.
template <int Threads, typename acc_t>
__device__ acc_t block_sum(acc_t v) {
  static_assert(Threads % 32 == 0 && Threads <= 1024, "block_sum needs whole warps, at most 1024 threads");
  constexpr int kWarpsPerBlock = Threads / 32;
  __shared__ acc_t warp_sums[kWarpsPerBlock];
  v = warp_sum(v);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  // A previous call's readers of warp_sums[0] must be done before it is overwritten.
  __syncthreads();
  if (lane == 0) {
    warp_sums[warp] = v;
  }
  __syncthreads();
  if (warp == 0) {
    v = warp_sum(lane < kWarpsPerBlock ? warp_sums[lane] : acc_t(0));
    if (lane == 0) {
      warp_sums[0] = v;
    }
  }
  __syncthreads();
  return warp_sums[0];
}

// The largest v over the block, returned to every thread; fmax lets any number win over a NaN (callers that
// must see NaN track it apart). Same contract as block_sum: every thread calls it, exactly Threads threads.
template <int Threads, typename acc_t>
__device__ acc_t block_max(acc_t v) {
  static_assert(Threads % 32 == 0 && Threads <= 1024, "block_max needs whole warps, at most 1024 threads");
  constexpr int kWarpsPerBlock = Threads / 32;
  __shared__ acc_t warp_maxima[kWarpsPerBlock];
  for (int offset = 16; offset > 0; offset >>= 1) {
    v = fmax(v, __shfl_xor_sync(0xffffffffu, v, offset));
  }
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  __syncthreads();
  if (lane == 0) {
    warp_maxima[warp] = v;
  }
  __syncthreads();
  v = warp_maxima[0];
  for (int w = 1; w < kWarpsPerBlock; ++w) {
    v = fmax(v, warp_maxima[w]);
  }
  // Every thread has read warp_maxima before a later call overwrites it.
  __syncthreads();
  return v;
}

}  // namespace ganops
