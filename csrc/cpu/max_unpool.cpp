// CPU kernels of max_unpool and its backward.
//
// Forward, disjoint windows (kernel <= stride: SegNet, U-Net): output rows
// are swept in bands, one band per row of windows; along a row each window's
// index is read once and its columns are written with the value or 0, so each
// output element is written once, in order, with no separate zero fill.
// Overlapping windows: the per-element gather of max_unpool_math.h.
// Either way one checker per window classifies its index; when some index lies
// outside its window (or some window lies outside the output) the exact
// scatter runs instead: a zero fill, then each (n, c) plane written in input
// order, so the last writer wins as in PyTorch's CPU kernel.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/SmallVector.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <limits>
#include <type_traits>
#include <vector>

#include "common/cpu_multiversion.h"
#include "common/dispatch.h"
#include "common/huge_pages.h"
#include "common/poison.h"
#include "cpu/kernels.h"
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

// Tensors of this layout hold, per "outer" index (n*C + c channels-first, n
// channels-last), a plane whose positions each carry `channels` interleaved
// elements (1 channels-first, C channels-last).
struct PlaneWalk {
  int64_t outer_count;
  int64_t channels;
};

template <bool kChannelsLast>
PlaneWalk plane_walk(int64_t batch, int64_t channels) {
  return kChannelsLast ? PlaneWalk{batch, channels} : PlaneWalk{batch * channels, 1};
}

// One row of windows (w[0], w[1] fixed, all w[2]) of a plane: where their
// indices point, and the band of plane rows they own (see disjoint_band).
struct WindowRowGeometry {
  int64_t w0 = 0, w1 = 0;
  int64_t lo0 = 0, hi0 = 0, lo1 = 0, hi1 = 0;  // the band's rows
  int64_t band_begin = 0;                      // plane-linear start of the band when contiguous
  int64_t band_length = 0;                     // positions in the band when contiguous, else 0
  int64_t origin = 0;                          // plane-linear position of window 0's origin
  int64_t plane_numel = 0;
  int64_t interior_begin = 0, interior_end = 0;  // windows whose columns all lie inside the plane
  // int8 offset -> position from its window's origin; -1 for a row outside the plane.
  // Indexed by the offset's byte (uint8): 256 entries, -1 beyond the window
  // volume too, so a lookup alone validates an offset.
  c10::SmallVector<int64_t, 256> offset_shift;

  WindowRowGeometry(const PoolWindows& g, int64_t window_row)
      : w0(window_row / g.windows[1]), w1(window_row % g.windows[1]), plane_numel(g.plane_numel()) {
    disjoint_band(g, 0, w0, lo0, hi0);
    disjoint_band(g, 1, w1, lo1, hi1);
    const bool contiguous = hi0 - lo0 <= 1 || (lo1 == 0 && hi1 == g.plane[1]);
    band_begin = (lo0 * g.plane[1] + lo1) * g.plane[2];
    band_length = contiguous ? ((hi0 - lo0 - 1) * g.plane[1] + hi1 - lo1) * g.plane[2] : 0;
    const int64_t start0 = g.window_start(0, w0);
    const int64_t start1 = g.window_start(1, w1);
    origin = (start0 * g.plane[1] + start1) * g.plane[2] - g.padding[2];
    interior_begin = std::min(g.windows[2], (g.padding[2] + g.stride[2] - 1) / g.stride[2]);
    interior_end = std::max(interior_begin,
                            std::min(g.windows[2], (g.plane[2] + g.padding[2] - g.kernel[2]) / g.stride[2] + 1));
    for (int64_t r0 = 0; r0 < g.kernel[0]; ++r0) {
      for (int64_t r1 = 0; r1 < g.kernel[1]; ++r1) {
        const bool row_in_plane = start0 + r0 >= 0 && start0 + r0 < g.plane[0] && start1 + r1 >= 0 &&
                                  start1 + r1 < g.plane[1];
        for (int64_t col = 0; col < g.kernel[2]; ++col) {
          offset_shift.push_back(row_in_plane ? (r0 * g.plane[1] + r1) * g.plane[2] + col : -1);
        }
      }
    }
    offset_shift.resize(256, -1);
  }

  // Plane-linear position the index stored for window j names, or -1
  // (unpool_target, with a table lookup for offsets of windows inside the plane).
  template <typename index_t>
  int64_t target(const PoolWindows& g, int64_t j, index_t index) const {
    if constexpr (std::is_same_v<index_t, int8_t>) {
      if (j >= interior_begin && j < interior_end) {
        const int64_t shift = offset_shift[static_cast<uint8_t>(index)];
        return shift >= 0 ? origin + j * g.stride[2] + shift : -1;
      }
      const int64_t w[kSpatialDims] = {w0, w1, j};
      return offset_target(g, w, index);
    } else {
      return static_cast<uint64_t>(index) < static_cast<uint64_t>(plane_numel) ? int64_t{index} : -1;
    }
  }

  // Whether plane position `target` (>= 0) lies in the band; 3-D bands of
  // several depth slices of partial rows are not contiguous.
  bool in_band(const PoolWindows& g, int64_t target) const {
    if (band_length > 0) {
      return static_cast<uint64_t>(target - band_begin) < static_cast<uint64_t>(band_length);
    }
    int64_t pos[kSpatialDims];
    g.plane_coordinates(target, pos);
    return pos[0] >= lo0 && pos[0] < hi0 && pos[1] >= lo1 && pos[1] < hi1;
  }
};

// Calls fn(j, c, k) for windows [j_begin, j_end) of a row and every channel
// interleaved with them (k = j * channels + c), with a plain loop when there
// is one channel (channels-first), which the compiler keeps tight.
template <typename F>
inline void for_each_window_element(int64_t j_begin, int64_t j_end, int64_t channels, F&& fn) {
  if (channels == 1) {
    for (int64_t j = j_begin; j < j_end; ++j) {
      fn(j, 0, j);
    }
    return;
  }
  for (int64_t j = j_begin; j < j_end; ++j) {
    for (int64_t c = 0; c < channels; ++c) {
      fn(j, c, j * channels + c);
    }
  }
}

// Stores each window's value of one row of windows at the position its index
// names when that lies in the band (else into `discard`, without a branch:
// where a maximum sits is random), in window order, so within the band the
// last writer wins as in PyTorch's CPU loop. Returns whether some index named
// a position outside the band.
template <typename storage_t, typename index_t, bool kContiguousBand>
FASTOPS_CPU_MULTIVERSION bool scatter_into_band(const PoolWindows& g, const WindowRowGeometry& rows,
                                                storage_t* __restrict__ out_plane, const index_t* __restrict__ stored,
                                                const storage_t* __restrict__ values, int64_t channels) {
  storage_t discard;
  bool any_outside = false;
  // Locals, not members: the stores below could alias `rows` as far as the compiler knows.
  const int64_t band_begin = rows.band_begin;
  const auto band_length = static_cast<uint64_t>(rows.band_length);
  const int64_t* offset_shift = rows.offset_shift.data();
  const int64_t origin = rows.origin;
  const int64_t step = g.stride[2];
  const int64_t interior_begin = rows.interior_begin;
  const int64_t interior_end = rows.interior_end;
  // kInterior: window j lies wholly inside the plane, so an offset maps
  // through the table (the hot case, kept free of per-element branches).
  const auto store = [&](int64_t j, int64_t c, int64_t k, auto interior_tag) {
    constexpr bool kInterior = decltype(interior_tag)::value;
    int64_t target;
    bool inside;
    if constexpr (kContiguousBand && !std::is_same_v<index_t, int8_t>) {
      target = stored[k];  // the band lies inside the plane: one comparison checks both
      inside = static_cast<uint64_t>(target - band_begin) < band_length;
    } else if constexpr (kContiguousBand && kInterior) {
      const auto offset = static_cast<uint64_t>(static_cast<int64_t>(stored[k]));
      const int64_t shift = offset_shift[static_cast<uint8_t>(offset)];
      const bool valid = shift >= 0;
      target = origin + j * step + shift;
      inside = valid && static_cast<uint64_t>(target - band_begin) < band_length;
    } else if constexpr (kContiguousBand) {
      target = rows.target(g, j, stored[k]);
      inside = static_cast<uint64_t>(target - band_begin) < band_length;
    } else {
      target = rows.target(g, j, stored[k]);
      inside = target >= 0 && rows.in_band(g, target);
    }
    storage_t* destination = inside ? out_plane + target * channels + c : &discard;
    *destination = values[k];
    any_outside |= !inside;
  };
  const auto run = [&](int64_t j_begin, int64_t j_end, auto interior_tag) {
    for_each_window_element(j_begin, j_end, channels, [&](int64_t j, int64_t c, int64_t k) {
      store(j, c, k, interior_tag);
    });
  };
  run(0, interior_begin, std::false_type{});
  if constexpr (kContiguousBand && std::is_same_v<index_t, int8_t>) {
    if (channels == 1) {
      // The hot loop of int8 offsets, written out: no lambda, all locals.
      int64_t window_origin = origin + interior_begin * step;
      bool outside = false;
      for (int64_t j = interior_begin; j < interior_end; ++j, window_origin += step) {
        const auto offset = static_cast<uint8_t>(stored[j]);
        const int64_t shift = offset_shift[offset];
        const bool valid = shift >= 0;
        const int64_t target = window_origin + shift;
        const bool inside = valid && static_cast<uint64_t>(target - band_begin) < band_length;
        *(inside ? out_plane + target : &discard) = values[j];
        outside |= !inside;
      }
      any_outside |= outside;
    } else {
      run(interior_begin, interior_end, std::true_type{});
    }
  } else {
    run(interior_begin, interior_end, std::true_type{});
  }
  run(interior_end, g.windows[2], std::false_type{});
  return any_outside;
}

// Sets the output of one row of windows of one plane: zeros over the band of
// plane rows the windows own, then the windows' values at the positions their
// indices name. The band is a few kilobytes, so zeros and values meet in L1
// and every output byte goes to memory once. Indices naming positions
// outside the band are classified and reported, not written.
template <typename storage_t, typename index_t>
void unpool_window_row(const PoolWindows& g, const WindowRowGeometry& rows,
                       storage_t* out_plane, const index_t* stored, const storage_t* values, int64_t channels,
                       uint32_t& status, int64_t& bad_value) {
  for (int64_t o0 = rows.lo0; o0 < rows.hi0; ++o0) {
    storage_t* band = out_plane + (o0 * g.plane[1] + rows.lo1) * g.plane[2] * channels;
    std::fill(band, band + (rows.hi1 - rows.lo1) * g.plane[2] * channels, storage_t(0));
  }
  const bool outside = rows.band_length > 0
                           ? scatter_into_band<storage_t, index_t, true>(g, rows, out_plane, stored, values, channels)
                           : scatter_into_band<storage_t, index_t, false>(g, rows, out_plane, stored, values, channels);
  if (outside) {
    for (int64_t j = 0; j < g.windows[2]; ++j) {
      for (int64_t c = 0; c < channels; ++c) {
        const index_t index = stored[j * channels + c];
        const int64_t target = rows.target(g, j, index);
        if (target < 0) {
          status |= kUnpoolIndexOutOfRange;
          bad_value = index;
        } else if (!rows.in_band(g, target)) {
          status |= kUnpoolIndexStray;
          bad_value = index;
        }
      }
    }
  }
}

// Calls fn(outer, rows, first_window) for tasks [begin, end), task =
// outer * W0 * W1 + window row, in order; each window row's geometry is built
// once, not once per plane.
template <typename F>
void for_each_window_row(const PoolWindows& g, int64_t begin, int64_t end, F&& fn) {
  const int64_t window_rows = g.windows[0] * g.windows[1];
  int64_t row = begin % window_rows;
  int64_t outer = begin / window_rows;
  std::vector<WindowRowGeometry> geometry;
  const int64_t distinct = std::min(window_rows, end - begin);
  geometry.reserve(distinct);
  for (int64_t k = 0; k < distinct; ++k) {
    geometry.emplace_back(g, (row + k) % window_rows);
  }
  size_t next = 0;
  for (int64_t task = begin; task < end; ++task) {
    fn(outer, geometry[next], row * g.windows[2]);
    if (++next == geometry.size()) {
      next = 0;
    }
    if (++row == window_rows) {
      row = 0;
      ++outer;
    }
  }
}

// Tasks of one row of windows of one plane cover about kernel_h output rows;
// parallel chunks hold at least ~16K elements.
inline int64_t window_row_grain(const PoolWindows& g, int64_t channels) {
  return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, g.plane[2] * channels * g.stride[1] * g.stride[0]));
}

template <typename storage_t, typename index_t, bool kChannelsLast>
void gather_disjoint_forward(const MaxUnpoolProblem& p, at::Tensor& output, SharedStatus& shared) {
  const PoolWindows& g = p.geometry;
  const auto walk = plane_walk<kChannelsLast>(p.batch, p.channels);
  const int64_t channels = walk.channels;
  const auto* input = static_cast<const storage_t*>(p.input.const_data_ptr());
  const auto* indices = p.indices.const_data_ptr<index_t>();
  auto* out = static_cast<storage_t*>(output.data_ptr());
  const int64_t windows = g.window_count();
  const int64_t plane = g.plane_numel();
  const int64_t tasks = walk.outer_count * g.windows[0] * g.windows[1];
  at::parallel_for(0, tasks, window_row_grain(g, channels), [&](int64_t begin, int64_t end) {
    uint32_t status = kUnpoolIndexInWindow;
    int64_t bad_value = 0;
    for_each_window_row(g, begin, end, [&](int64_t outer, const WindowRowGeometry& rows, int64_t first_window) {
      const int64_t window_base = (outer * windows + first_window) * channels;
      unpool_window_row<storage_t, index_t>(g, rows, out + outer * plane * channels, indices + window_base,
                                            input + window_base, channels, status, bad_value);
    });
    shared.report(status, bad_value);
  });
}

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

}  // namespace

at::Tensor max_unpool_cpu(const at::Tensor& input, const at::Tensor& indices, at::IntArrayRef output_size,
                          at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding) {
  const MaxUnpoolProblem p = prepare_max_unpool(input, indices, output_size, kernel_size, stride, padding);
  at::Tensor output = new_max_unpool_output(p);
  if (output.numel() == 0) {
    return output;
  }
  SharedStatus status;
  const bool gather = every_window_meets_plane(p.geometry) && p.geometry.window_count() > 0;
  const bool disjoint = windows_disjoint(p.geometry);
  dispatch_by_element_size(p.input, "max_unpool", [&](auto storage_tag) {
    using storage_t = decltype(storage_tag);
    dispatch_index_type(p.indices, "max_unpool", [&](auto index_tag) {
      using index_t = decltype(index_tag);
      dispatch_layout(p.channels_last, [&](auto channels_last_tag) {
        constexpr bool kChannelsLast = decltype(channels_last_tag)::value;
        if (gather && disjoint) {
          gather_disjoint_forward<storage_t, index_t, kChannelsLast>(p, output, status);
        } else if (gather) {
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

namespace {

// grad_input[window] = grad_output[target of the window's index] (a gather;
// 0 for an index that names no position, which the forward has rejected).
template <typename storage_t, typename index_t>
FASTOPS_CPU_MULTIVERSION void gather_window_row_grad(const PoolWindows& g, const WindowRowGeometry& rows,
                                                     const storage_t* __restrict__ grad_plane,
                                                     const index_t* __restrict__ stored,
                                                     storage_t* __restrict__ grad_row, int64_t channels) {
  const int64_t* offset_shift = rows.offset_shift.data();
  const int64_t origin = rows.origin;
  const int64_t step = g.stride[2];
  const int64_t interior_begin = rows.interior_begin;
  const int64_t interior_end = rows.interior_end;
  const auto gather = [&](int64_t j, int64_t c, int64_t k, auto interior_tag) {
    int64_t target;
    if constexpr (std::is_same_v<index_t, int8_t> && decltype(interior_tag)::value) {
      const auto offset = static_cast<uint64_t>(static_cast<int64_t>(stored[k]));
      const int64_t shift = offset_shift[static_cast<uint8_t>(offset)];
      target = shift >= 0 ? origin + j * step + shift : -1;
    } else {
      target = rows.target(g, j, stored[k]);
    }
    grad_row[k] = target >= 0 ? grad_plane[target * channels + c] : storage_t(0);
  };
  const auto run = [&](int64_t j_begin, int64_t j_end, auto interior_tag) {
    for_each_window_element(j_begin, j_end, channels, [&](int64_t j, int64_t c, int64_t k) {
      gather(j, c, k, interior_tag);
    });
  };
  run(0, interior_begin, std::false_type{});
  if (std::is_same_v<index_t, int8_t> && channels == 1) {
    // The hot loop of int8 offsets, written out.
    int64_t window_origin = origin + interior_begin * step;
    for (int64_t j = interior_begin; j < interior_end; ++j, window_origin += step) {
      const int64_t shift = offset_shift[static_cast<uint8_t>(stored[j])];
      grad_row[j] = shift >= 0 ? grad_plane[window_origin + shift] : storage_t(0);
    }
  } else {
    run(interior_begin, interior_end, std::true_type{});
  }
  run(interior_end, g.windows[2], std::false_type{});
}

at::Tensor max_unpool_backward_cpu(const at::Tensor& grad_output, const at::Tensor& indices,
                                   at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding) {
  const MaxUnpoolBackwardProblem p = prepare_max_unpool_backward(grad_output, indices, kernel_size, stride, padding);
  const PoolWindows& g = p.geometry;
  at::Tensor grad_input = at::empty(p.indices.sizes(), p.grad_output.options().memory_format(p.memory_format));
  advise_huge_pages(grad_input);
  poison_if_enabled(grad_input);
  if (grad_input.numel() == 0) {
    return grad_input;
  }
  const int64_t plane = g.plane_numel();
  const int64_t windows = g.window_count();
  dispatch_by_element_size(p.grad_output, "_max_unpool_backward", [&](auto storage_tag) {
    using storage_t = decltype(storage_tag);
    dispatch_index_type(p.indices, "_max_unpool_backward", [&](auto index_tag) {
      using index_t = decltype(index_tag);
      dispatch_layout(p.channels_last, [&](auto channels_last_tag) {
        const auto walk = plane_walk<decltype(channels_last_tag)::value>(p.batch, p.channels);
        const auto* grad_out = static_cast<const storage_t*>(p.grad_output.const_data_ptr());
        const auto* idx = p.indices.const_data_ptr<index_t>();
        auto* grad_in = static_cast<storage_t*>(grad_input.data_ptr());
        const int64_t tasks = walk.outer_count * g.windows[0] * g.windows[1];
        at::parallel_for(0, tasks, window_row_grain(g, walk.channels), [&](int64_t begin, int64_t end) {
          for_each_window_row(g, begin, end, [&](int64_t outer, const WindowRowGeometry& rows, int64_t first_window) {
            const int64_t window_base = (outer * windows + first_window) * walk.channels;
            gather_window_row_grad<storage_t, index_t>(g, rows, grad_out + outer * plane * walk.channels,
                                                       idx + window_base, grad_in + window_base, walk.channels);
          });
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
