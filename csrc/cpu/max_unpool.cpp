// CPU kernels of max_unpool and its backward.
//
// Forward: the gather of max_unpool_math.h, parallel over output elements, one
// write per element and no separate zero fill. When some index lies outside
// its window (or some window lies outside the output), the exact scatter runs
// instead: a zero fill, then each (n, c) plane written in input order, so the
// last writer wins as in PyTorch's CPU kernel.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <limits>

#include "common/dispatch.h"
#include "common/poison.h"
#include "ops/max_unpool.h"
#include "ops/max_unpool_math.h"

namespace fastops {
namespace {

// Elements per parallel task: the per-element work is a few dozen instructions.
constexpr int64_t kGrainSize = 32768;

// Status reported by the parallel tasks: OR of UnpoolStatus bits, and one offending index.
struct SharedStatus {
  std::atomic<uint32_t> bits{0};
  std::atomic<int64_t> bad_value{0};

  void report(uint32_t status, int64_t bad) {
    if (status != kUnpoolIndexInWindow) {
      bad_value.store(bad, std::memory_order_relaxed);
      bits.fetch_or(status, std::memory_order_relaxed);
    }
  }
};

template <typename storage_t, typename index_t, bool kChannelsLast>
void gather_forward(const MaxUnpoolProblem& p, at::Tensor& output, SharedStatus& shared) {
  const PoolWindows& g = p.geometry;
  const ElementDecomposer<kChannelsLast> out_coords(g.plane, p.channels);
  const auto* input = static_cast<const storage_t*>(p.input.const_data_ptr());
  const auto* indices = p.indices.const_data_ptr<index_t>();
  auto* out = static_cast<storage_t*>(output.data_ptr());
  const int64_t windows = g.window_count();
  const int64_t stride = out_coords.plane_stride();
  const bool small = output.numel() <= std::numeric_limits<int32_t>::max();

  at::parallel_for(0, output.numel(), kGrainSize, [&](int64_t begin, int64_t end) {
    uint32_t status = kUnpoolIndexInWindow;
    int64_t bad_value = 0;
    int64_t pos[kSpatialDims];
    int64_t outer = 0;
    int64_t channel = 0;
    for (int64_t e = begin; e < end; ++e) {
      if (small) {
        out_coords.decompose(static_cast<uint32_t>(e), pos, outer, channel);
      } else {
        out_coords.decompose64(e, pos, outer, channel);
      }
      const int64_t base = out_coords.plane_base(outer, channel, windows);
      const int64_t source = unpool_gather_source(g, pos, g.plane_linear(pos), indices + base, stride, status,
                                                  bad_value);
      out[e] = source >= 0 ? input[base + source * stride] : storage_t(0);
    }
    shared.report(status, bad_value);
  });
}

// The exact scatter: used when the gather cannot be trusted with the indices.
template <typename storage_t, typename index_t, bool kChannelsLast>
void scatter_forward(const MaxUnpoolProblem& p, at::Tensor& output, SharedStatus& shared) {
  const PoolWindows& g = p.geometry;
  const ElementDecomposer<kChannelsLast> in_coords(g.windows, p.channels);
  const auto* input = static_cast<const storage_t*>(p.input.const_data_ptr());
  const auto* indices = p.indices.const_data_ptr<index_t>();
  auto* out = static_cast<storage_t*>(output.data_ptr());
  const int64_t windows = g.window_count();
  const int64_t plane = g.plane_numel();
  const int64_t stride = in_coords.plane_stride();
  output.zero_();

  // Each task owns whole planes (channels-first) or whole images
  // (channels-last), so every plane is written in input order by one thread.
  const int64_t tasks = kChannelsLast ? p.batch : p.batch * p.channels;
  const int64_t channels_per_task = kChannelsLast ? p.channels : 1;
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    uint32_t status = kUnpoolIndexInWindow;
    int64_t bad_value = 0;
    int64_t w[kSpatialDims];
    for (int64_t task = begin; task < end; ++task) {
      for (int64_t window = 0; window < windows; ++window) {
        window_coordinates(g, window, w);
        for (int64_t c = 0; c < channels_per_task; ++c) {
          const int64_t in_base = in_coords.plane_base(task, c, windows);
          const int64_t out_base = in_coords.plane_base(task, c, plane);
          const index_t stored = indices[in_base + window * stride];
          const int64_t target = unpool_target(g, w, stored);
          if (target < 0) {
            status |= kUnpoolIndexOutOfRange;
            bad_value = stored;
            continue;
          }
          out[out_base + target * stride] = input[in_base + window * stride];
        }
      }
    }
    shared.report(status, bad_value);
  });
}

at::Tensor max_unpool_cpu(const at::Tensor& input, const at::Tensor& indices, at::IntArrayRef output_size,
                          at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding) {
  const MaxUnpoolProblem p = prepare_max_unpool(input, indices, output_size, kernel_size, stride, padding);
  at::Tensor output = new_max_unpool_output(p);
  if (output.numel() == 0) {
    return output;
  }
  SharedStatus status;
  const bool gather = every_window_meets_plane(p.geometry);
  dispatch_by_element_size(p.input, "max_unpool", [&](auto storage_tag) {
    using storage_t = decltype(storage_tag);
    dispatch_index_type(p.indices, "max_unpool", [&](auto index_tag) {
      using index_t = decltype(index_tag);
      dispatch_layout(p.channels_last, [&](auto channels_last_tag) {
        constexpr bool kChannelsLast = decltype(channels_last_tag)::value;
        if (gather) {
          gather_forward<storage_t, index_t, kChannelsLast>(p, output, status);
        }
        if (!gather || status.bits.load() == kUnpoolIndexStray) {
          status.bits.store(kUnpoolIndexInWindow);
          scatter_forward<storage_t, index_t, kChannelsLast>(p, output, status);
        }
      });
    });
  });
  if (status.bits.load() & kUnpoolIndexOutOfRange) {
    throw_invalid_unpool_index(p, status.bad_value.load());
  }
  return output;
}

// grad_input[window] = grad_output[target of window's index] (a gather; 0 for
// an index that names no position, which the forward has already rejected).
at::Tensor max_unpool_backward_cpu(const at::Tensor& grad_output, const at::Tensor& indices,
                                   at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding) {
  const MaxUnpoolBackwardProblem p = prepare_max_unpool_backward(grad_output, indices, kernel_size, stride, padding);
  const PoolWindows& g = p.geometry;
  at::Tensor grad_input = at::empty(p.indices.sizes(), p.grad_output.options().memory_format(p.memory_format));
  poison_if_enabled(grad_input);
  if (grad_input.numel() == 0) {
    return grad_input;
  }
  const int64_t plane = g.plane_numel();
  dispatch_by_element_size(p.grad_output, "_max_unpool_backward", [&](auto storage_tag) {
    using storage_t = decltype(storage_tag);
    dispatch_index_type(p.indices, "_max_unpool_backward", [&](auto index_tag) {
      using index_t = decltype(index_tag);
      dispatch_layout(p.channels_last, [&](auto channels_last_tag) {
        constexpr bool kChannelsLast = decltype(channels_last_tag)::value;
        const ElementDecomposer<kChannelsLast> in_coords(g.windows, p.channels);
        const auto* grad_out = static_cast<const storage_t*>(p.grad_output.const_data_ptr());
        const auto* idx = p.indices.const_data_ptr<index_t>();
        auto* grad_in = static_cast<storage_t*>(grad_input.data_ptr());
        const int64_t stride = in_coords.plane_stride();
        at::parallel_for(0, grad_input.numel(), kGrainSize, [&](int64_t begin, int64_t end) {
          int64_t w[kSpatialDims];
          int64_t outer = 0;
          int64_t channel = 0;
          for (int64_t e = begin; e < end; ++e) {
            in_coords.decompose64(e, w, outer, channel);
            const int64_t target = unpool_target(g, w, idx[e]);
            grad_in[e] = target >= 0 ? grad_out[in_coords.plane_base(outer, channel, plane) + target * stride]
                                     : storage_t(0);
          }
        });
      });
    });
  });
  return grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, CPU, m) {
  m.impl("max_unpool", &max_unpool_cpu);
  m.impl("_max_unpool_backward", &max_unpool_backward_cpu);
}

}  // namespace fastops
