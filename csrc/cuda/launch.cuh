#pragma once
// Launch helpers shared by the CUDA kernels: grid sizes for grid-stride loops,
// graph-capture detection and the status word kernels use to report bad input.

#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGraphsUtils.cuh>

#include <algorithm>
#include <cstdint>

namespace fastops::cuda {

constexpr int kThreadsPerBlock = 256;

// Blocks for a grid-stride loop over `total` elements: enough to fill every SM
// several times over, few enough that each thread has a few elements.
inline unsigned int grid_blocks(int64_t total, int threads = kThreadsPerBlock) {
  const int64_t needed = (total + threads - 1) / threads;
  const int64_t cap = int64_t{at::cuda::getCurrentDeviceProperties()->multiProcessorCount} * 32;
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min(needed, cap)));
}

// True while the current stream is being captured into a CUDA graph, when no
// host synchronisation (so no status read-back) is allowed.
inline bool stream_is_capturing() {
  return at::cuda::currentStreamCaptureStatusMayInitCtx() != at::cuda::CaptureStatus::None;
}

// Kernels OR status bits into word 0 and store an offending value in word 1.
struct DeviceStatus {
  unsigned long long* words;
};

__device__ inline void report_status(DeviceStatus status, uint32_t bits, int64_t bad_value) {
  if (bits != 0) {
    atomicOr(status.words, static_cast<unsigned long long>(bits));
    atomicExch(status.words + 1, static_cast<unsigned long long>(bad_value));
  }
}

// Copies the status word to the host: a synchronisation of the stream.
struct HostStatus {
  uint64_t bits;
  int64_t bad_value;
};

inline HostStatus read_status(const at::Tensor& status) {
  const at::Tensor host = status.to(at::kCPU);
  const int64_t* words = host.const_data_ptr<int64_t>();
  return {static_cast<uint64_t>(words[0]), words[1]};
}

}  // namespace fastops::cuda
