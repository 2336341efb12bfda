// CUDA kernels of max_unpool and its backward.
//
// Forward, in one launch when the indices come from max-pooling: the gather of
// max_unpool_math.h, one thread per output element, one coalesced write each
// (zeros included), no memset, no scatter, no atomics. Checker threads report
// each window's index into a status word; the host reads it back (one stream
// synchronisation) to raise a catchable error for an index outside the plane,
// which is why bad indices never trigger a device-side assert.
//
// When some index is stray (inside the plane, outside its window) the exact
// scatter runs: per output position, an atomic max picks the last window (in
// raster order) that names it, then a gather writes the values, so the result
// is deterministic and equals PyTorch's CPU kernel. Its kernels test the
// status word on the device, so during CUDA graph capture (no read-back
// allowed) they are launched unconditionally and do nothing when not needed;
// an out-of-range index then leaves its value unwritten (a zero) instead of
// raising.

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>

#include "common/dispatch.h"
#include "common/poison.h"
#include "cuda/launch.cuh"
#include "ops/max_unpool.h"
#include "ops/max_unpool_math.h"

namespace fastops {
namespace {

using cuda::DeviceStatus;
using cuda::kThreadsPerBlock;

template <typename storage_t, typename index_t, bool kChannelsLast, bool kSmall>
__global__ void __launch_bounds__(kThreadsPerBlock)
    gather_kernel(const storage_t* __restrict__ input, const index_t* __restrict__ indices,
                  storage_t* __restrict__ output, const PoolWindows g, const ElementDecomposer<kChannelsLast> coords,
                  const int64_t total, DeviceStatus status) {
  const int64_t windows = g.window_count();
  const int64_t stride = coords.plane_stride();
  uint32_t bits = kUnpoolIndexInWindow;
  int64_t bad_value = 0;
  int64_t pos[kSpatialDims];
  int64_t outer = 0;
  int64_t channel = 0;
  for (int64_t e = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; e < total;
       e += int64_t{gridDim.x} * blockDim.x) {
    coords.template decompose_any<kSmall>(e, pos, outer, channel);
    const int64_t base = coords.plane_base(outer, channel, windows);
    const int64_t source =
        unpool_gather_source(g, pos, g.plane_linear(pos), indices + base, stride, bits, bad_value);
    output[e] = source >= 0 ? input[base + source * stride] : storage_t(0);
  }
  cuda::report_status(status, bits, bad_value);
}

__device__ inline bool scatter_needed(DeviceStatus status) {
  return (*const_cast<volatile unsigned long long*>(status.words) & kUnpoolIndexStray) != 0;
}

__global__ void __launch_bounds__(kThreadsPerBlock)
    clear_writers_kernel(unsigned long long* __restrict__ writers, const int64_t total, DeviceStatus status) {
  if (!scatter_needed(status)) {
    return;
  }
  for (int64_t e = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; e < total;
       e += int64_t{gridDim.x} * blockDim.x) {
    writers[e] = 0;
  }
}

// writers[output element] = 1 + the last window (in raster order) whose index names it.
template <typename index_t, bool kChannelsLast>
__global__ void __launch_bounds__(kThreadsPerBlock)
    scatter_writers_kernel(const index_t* __restrict__ indices, unsigned long long* __restrict__ writers,
                           const PoolWindows g, const ElementDecomposer<kChannelsLast> window_coords,
                           const int64_t total, DeviceStatus status) {
  if (!scatter_needed(status)) {
    return;
  }
  const int64_t plane = g.plane_numel();
  const int64_t stride = window_coords.plane_stride();
  uint32_t bits = kUnpoolIndexInWindow;
  int64_t bad_value = 0;
  int64_t w[kSpatialDims];
  int64_t outer = 0;
  int64_t channel = 0;
  for (int64_t e = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; e < total;
       e += int64_t{gridDim.x} * blockDim.x) {
    window_coords.decompose64(e, w, outer, channel);
    const index_t stored = indices[e];
    const int64_t target = unpool_target(g, w, stored);
    if (target < 0) {
      bits |= kUnpoolIndexOutOfRange;
      bad_value = stored;
      continue;
    }
    atomicMax(writers + window_coords.plane_base(outer, channel, plane) + target * stride,
              static_cast<unsigned long long>(g.window_linear(w) + 1));
  }
  cuda::report_status(status, bits, bad_value);
}

template <typename storage_t, bool kChannelsLast>
__global__ void __launch_bounds__(kThreadsPerBlock)
    gather_writers_kernel(const storage_t* __restrict__ input, const unsigned long long* __restrict__ writers,
                          storage_t* __restrict__ output, const PoolWindows g,
                          const ElementDecomposer<kChannelsLast> coords, const int64_t total, DeviceStatus status) {
  if (!scatter_needed(status)) {
    return;
  }
  const int64_t windows = g.window_count();
  const int64_t stride = coords.plane_stride();
  int64_t pos[kSpatialDims];
  int64_t outer = 0;
  int64_t channel = 0;
  for (int64_t e = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; e < total;
       e += int64_t{gridDim.x} * blockDim.x) {
    coords.decompose64(e, pos, outer, channel);
    const auto writer = static_cast<int64_t>(writers[e]);
    output[e] = writer > 0 ? input[coords.plane_base(outer, channel, windows) + (writer - 1) * stride] : storage_t(0);
  }
}

template <typename storage_t, typename index_t, bool kChannelsLast>
void launch_forward(const MaxUnpoolProblem& p, at::Tensor& output, at::Tensor& status) {
  const PoolWindows& g = p.geometry;
  const auto stream = at::cuda::getCurrentCUDAStream();
  const ElementDecomposer<kChannelsLast> out_coords(g.plane, p.channels);
  const auto* input = static_cast<const storage_t*>(p.input.const_data_ptr());
  const auto* indices = p.indices.const_data_ptr<index_t>();
  auto* out = static_cast<storage_t*>(output.data_ptr());
  const DeviceStatus device_status{reinterpret_cast<unsigned long long*>(status.data_ptr<int64_t>())};
  const int64_t total = output.numel();
  const bool gather = every_window_meets_plane(g);

  if (gather) {
    const unsigned int blocks = cuda::grid_blocks(total);
    if (total <= std::numeric_limits<int32_t>::max()) {
      gather_kernel<storage_t, index_t, kChannelsLast, true>
          <<<blocks, kThreadsPerBlock, 0, stream>>>(input, indices, out, g, out_coords, total, device_status);
    } else {
      gather_kernel<storage_t, index_t, kChannelsLast, false>
          <<<blocks, kThreadsPerBlock, 0, stream>>>(input, indices, out, g, out_coords, total, device_status);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  } else {
    // The gather cannot check windows that miss the plane: scatter instead.
    status.narrow(0, 0, 1).fill_(static_cast<int64_t>(kUnpoolIndexStray));
  }

  const bool capturing = cuda::stream_is_capturing();
  if (!capturing) {
    const cuda::HostStatus host = cuda::read_status(status);
    if (host.bits & kUnpoolIndexOutOfRange) {
      throw_invalid_unpool_index(p, host.bad_value);
    }
    if (!(host.bits & kUnpoolIndexStray)) {
      return;
    }
  }
  at::Tensor writers = at::empty(p.output_shape, output.options().dtype(at::kLong).memory_format(p.memory_format));
  auto* writer_words = reinterpret_cast<unsigned long long*>(writers.data_ptr<int64_t>());
  const ElementDecomposer<kChannelsLast> window_coords(g.windows, p.channels);
  const int64_t window_total = p.input.numel();
  clear_writers_kernel<<<cuda::grid_blocks(total), kThreadsPerBlock, 0, stream>>>(writer_words, total,
                                                                                  device_status);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  scatter_writers_kernel<index_t, kChannelsLast><<<cuda::grid_blocks(window_total), kThreadsPerBlock, 0, stream>>>(
      indices, writer_words, g, window_coords, window_total, device_status);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  gather_writers_kernel<storage_t, kChannelsLast><<<cuda::grid_blocks(total), kThreadsPerBlock, 0, stream>>>(
      input, writer_words, out, g, out_coords, total, device_status);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (!capturing) {
    const cuda::HostStatus host = cuda::read_status(status);
    if (host.bits & kUnpoolIndexOutOfRange) {
      throw_invalid_unpool_index(p, host.bad_value);
    }
  }
}

at::Tensor max_unpool_cuda(const at::Tensor& input, const at::Tensor& indices, at::IntArrayRef output_size,
                           at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding) {
  const c10::cuda::CUDAGuard device_guard(input.device());
  const MaxUnpoolProblem p = prepare_max_unpool(input, indices, output_size, kernel_size, stride, padding);
  at::Tensor output = new_max_unpool_output(p);
  if (output.numel() == 0) {
    return output;
  }
  at::Tensor status = at::zeros({2}, input.options().dtype(at::kLong));
  dispatch_by_element_size(p.input, "max_unpool", [&](auto storage_tag) {
    using storage_t = decltype(storage_tag);
    dispatch_index_type(p.indices, "max_unpool", [&](auto index_tag) {
      using index_t = decltype(index_tag);
      dispatch_layout(p.channels_last, [&](auto channels_last_tag) {
        launch_forward<storage_t, index_t, decltype(channels_last_tag)::value>(p, output, status);
      });
    });
  });
  return output;
}

// grad_input[window] = grad_output[target of the window's index]; 0 for an
// index naming no position (which the forward has already rejected).
template <typename storage_t, typename index_t, bool kChannelsLast, bool kSmall>
__global__ void __launch_bounds__(kThreadsPerBlock)
    backward_kernel(const storage_t* __restrict__ grad_output, const index_t* __restrict__ indices,
                    storage_t* __restrict__ grad_input, const PoolWindows g,
                    const ElementDecomposer<kChannelsLast> window_coords, const int64_t total) {
  const int64_t plane = g.plane_numel();
  const int64_t stride = window_coords.plane_stride();
  int64_t w[kSpatialDims];
  int64_t outer = 0;
  int64_t channel = 0;
  for (int64_t e = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; e < total;
       e += int64_t{gridDim.x} * blockDim.x) {
    window_coords.template decompose_any<kSmall>(e, w, outer, channel);
    const int64_t target = unpool_target(g, w, indices[e]);
    grad_input[e] =
        target >= 0 ? grad_output[window_coords.plane_base(outer, channel, plane) + target * stride] : storage_t(0);
  }
}

at::Tensor max_unpool_backward_cuda(const at::Tensor& grad_output, const at::Tensor& indices,
                                    at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding) {
  const c10::cuda::CUDAGuard device_guard(grad_output.device());
  const MaxUnpoolBackwardProblem p =
      prepare_max_unpool_backward(grad_output, indices, kernel_size, stride, padding);
  at::Tensor grad_input = at::empty(p.indices.sizes(), p.grad_output.options().memory_format(p.memory_format));
  poison_if_enabled(grad_input);
  const int64_t total = grad_input.numel();
  if (total == 0) {
    return grad_input;
  }
  const auto stream = at::cuda::getCurrentCUDAStream();
  dispatch_by_element_size(p.grad_output, "_max_unpool_backward", [&](auto storage_tag) {
    using storage_t = decltype(storage_tag);
    dispatch_index_type(p.indices, "_max_unpool_backward", [&](auto index_tag) {
      using index_t = decltype(index_tag);
      dispatch_layout(p.channels_last, [&](auto channels_last_tag) {
        constexpr bool kChannelsLast = decltype(channels_last_tag)::value;
        const auto* grad_out = static_cast<const storage_t*>(p.grad_output.const_data_ptr());
        const auto* idx = p.indices.const_data_ptr<index_t>();
        auto* grad_in = static_cast<storage_t*>(grad_input.data_ptr());
        const ElementDecomposer<kChannelsLast> window_coords(p.geometry.windows, p.channels);
        const unsigned int blocks = cuda::grid_blocks(total);
        if (total <= std::numeric_limits<int32_t>::max()) {
          backward_kernel<storage_t, index_t, kChannelsLast, true><<<blocks, kThreadsPerBlock, 0, stream>>>(
              grad_out, idx, grad_in, p.geometry, window_coords, total);
        } else {
          backward_kernel<storage_t, index_t, kChannelsLast, false><<<blocks, kThreadsPerBlock, 0, stream>>>(
              grad_out, idx, grad_in, p.geometry, window_coords, total);
        }
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  });
  return grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, CUDA, m) {
  m.impl("max_unpool", &max_unpool_cuda);
  m.impl("_max_unpool_backward", &max_unpool_backward_cuda);
}

}  // namespace fastops
