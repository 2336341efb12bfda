// CUDA kernels of lovasz_segments and its backward.
//
// Everything stays on the device: segment sizes depend on the labels (ignored
// pixels), but every buffer is sized by the bound N·S·K and every offset is
// computed by a kernel, so nothing is read back (the op can be captured in a
// CUDA graph).
//
// Forward:
//  1. An exclusive scan of the pixels' valid flags (cub) gives each valid
//     pixel its position in its unit (scan minus the scan at the unit's first
//     pixel) and every unit's count, hence every segment's [begin, end).
//  2. One kernel per pixel computes its K errors (the softmax of its logits
//     once, for kind 1) and writes key/entry pairs into the segment layout.
//     Ignored pixels' slots, the tail [K·valid, N·S·K), get kUnusedEntry
//     (and the largest key, so the sort leaves them there): every slot is
//     written, the full-length scans read no uninitialised memory and
//     sorted_entries is deterministic.
//  3. The sort. cub's segmented sort gives a large segment one thread block,
//     which serialises the per-batch case (K segments of N·S entries each:
//     19 blocks for Cityscapes). For 32-bit error keys the segment index is
//     put above the key instead ((u·K + k) << 32 | key, the tail all ones)
//     and one device-wide, stable radix sort over the used bits orders all
//     segments at once, whatever their number and size. 64-bit (float64)
//     keys leave no room for the segment index; they use cub's stable
//     segmented sort (float64 is for tests and gradcheck, not for speed).
//  4. An exclusive scan of the sorted entries' foreground bits gives, for
//     every entry, the foreground entries before it in its segment (scan minus
//     the scan at the segment's begin) and each segment's total G. The loss
//     is reduced deterministically: each segment is cut into fixed pieces
//     (one block each, a fixed-order block reduction in double), then a
//     second kernel adds a segment's pieces in order. Pieces are fixed per
//     segment (ceil(unit pixels / piece)), so no host knows or needs the
//     actual lengths; pieces past a short segment's end add zero.
// Backward: the same scan on the saved entries and the same piece grid
// scatter w·g·slope to each entry's (pixel, class) element; no two entries
// share an element, so no atomics. Kind 1 first scatters w·g (in the
// accumulation type) and a per-pixel kernel then applies the error slope
// and the softmax (or sigmoid) Jacobian, recomputing p from the logits.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cub/block/block_reduce.cuh>
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>
#include <cub/device/device_segmented_sort.cuh>
#include <cub/version.cuh>
#include <thrust/iterator/counting_iterator.h>
#include <thrust/iterator/transform_iterator.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <optional>
#include <tuple>
#include <type_traits>

#include "common/poison.h"
#include "cuda/launch.cuh"
#include "ops/lovasz_math.h"
#include "ops/segmentation_losses.h"
#include "ops/soft_dice_math.h"

namespace fastops {
namespace {

using namespace lovasz;
using cuda::kThreadsPerBlock;

constexpr int64_t kPieceItems = 4096;  // sorted entries per block in the loss and scatter kernels
constexpr uint64_t kTailKey = ~uint64_t{0};

// q = n·S + s with a 32-bit division when both fit (the common case).
__device__ __forceinline__ void split_index(int64_t q, int64_t divisor, int64_t& quotient, int64_t& remainder) {
  if (((q | divisor) >> 32) == 0) {
    const uint32_t a = static_cast<uint32_t>(q), b = static_cast<uint32_t>(divisor);
    const uint32_t r = a / b;
    quotient = r;
    remainder = a - r * b;
  } else {
    quotient = q / divisor;
    remainder = q - quotient * divisor;
  }
}

template <typename scalar_t>
__device__ __forceinline__ at::opmath_type<scalar_t> load_value(const scalar_t* p) {
  return static_cast<at::opmath_type<scalar_t>>(*p);
}


// Scan inputs, over index n + 1 so the scan's last element is the total.
struct ValidFlag {
  const int64_t* labels;
  int64_t pixels;
  bool has_ignore;
  int64_t ignore_index;
  __host__ __device__ int32_t operator()(int64_t i) const {
    return i < pixels && (!has_ignore || labels[i] != ignore_index) ? 1 : 0;
  }
};
struct ForegroundFlag {
  const uint32_t* entries;
  int64_t items;
  __host__ __device__ int32_t operator()(int64_t i) const {
    // kUnusedEntry has the foreground bit set; it is no entry.
    return i < items && entries[i] != kUnusedEntry && entry_foreground(entries[i]) ? 1 : 0;
  }
};

at::Tensor temporary_bytes(size_t bytes, const at::Tensor& like) {
  // Never zero bytes: a null pointer would make cub answer a size query instead.
  return at::empty({static_cast<int64_t>(std::max<size_t>(bytes, 1))}, like.options().dtype(at::kByte));
}

// cub before CCCL 3 takes some item and segment counts as int.
void check_cub_count(const char* op, int64_t count) {
#if CUB_VERSION < 300000
  TORCH_CHECK(count <= std::numeric_limits<int32_t>::max(), op, ": ", count,
              " entries exceed what this CUDA toolkit's cub can sort (2^31 - 1)");
#else
  (void)op;
  (void)count;
#endif
}

// out[i] = Σ_{j < i} flag(j) for i in [0, count], flag(j) from functor over j in [0, count).
template <typename Flag>
void exclusive_flag_scan(const Flag& flag, int64_t count, int32_t* out, const at::Tensor& like, cudaStream_t stream) {
  const auto in = thrust::make_transform_iterator(thrust::counting_iterator<int64_t>(0), flag);
  size_t bytes = 0;
  C10_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(nullptr, bytes, in, out, count + 1, stream));
  at::Tensor temp = temporary_bytes(bytes, like);
  C10_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(temp.data_ptr(), bytes, in, out, count + 1, stream));
}

__global__ void valid_counts_kernel(const int32_t* __restrict__ valid_before, const int64_t units,
                                    const int64_t unit_pixels, int64_t* __restrict__ valid_counts) {
  const int64_t u = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (u < units) {
    valid_counts[u] = valid_before[(u + 1) * unit_pixels] - valid_before[u * unit_pixels];
  }
}

// Segment (u, k) = [K·(valid pixels before unit u) + k·n_u, + n_u), and a last
// segment [K·(valid pixels), items) for the ignored pixels' tail. Clamped to
// [0, items] so that inconsistent saved counts cannot send a kernel out of bounds.
__global__ void segment_table_kernel(const int64_t* __restrict__ valid_counts,
                                     const int64_t* __restrict__ valid_inclusive, const int64_t units,
                                     const int64_t segment_classes, const int64_t items, int64_t* __restrict__ begins,
                                     int64_t* __restrict__ ends) {
  const int64_t segments = units * segment_classes;
  const int64_t seg = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (seg > segments) {
    return;
  }
  int64_t begin, end;
  if (seg < segments) {
    const int64_t u = seg / segment_classes, k = seg - u * segment_classes;
    const int64_t length = valid_counts[u];
    begin = segment_classes * (valid_inclusive[u] - length) + k * length;
    end = begin + length;
  } else {
    begin = segment_classes * valid_inclusive[units - 1];
    end = items;
  }
  begin = min(max(begin, int64_t{0}), items);
  begins[seg] = begin;
  ends[seg] = min(max(end, begin), items);
}

// ---------------------------------------------------------------------------
// Forward

// Writes every pixel's K (key, entry) pairs. kComposite: key = (u·K + k) << 32 | 32-bit error key.
template <typename scalar_t, bool kComposite, typename acc_t = at::opmath_type<scalar_t>>
__global__ void __launch_bounds__(kThreadsPerBlock)
    fill_segments_kernel(const scalar_t* __restrict__ input, const int64_t* __restrict__ labels,
                         const LovaszProblem p, const int32_t* __restrict__ valid_before,
                         const int64_t* __restrict__ valid_counts, const int64_t* __restrict__ begins,
                         uint64_t* __restrict__ keys, uint32_t* __restrict__ entries) {
  const int64_t S = p.pixels, C = p.classes, K = p.segment_classes;
  const int64_t pixels = p.batch * S;
  const int64_t valid_total = valid_before[pixels];
  for (int64_t q = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; q < pixels;
       q += int64_t{gridDim.x} * blockDim.x) {
    const int64_t label = labels[q];
    if (!p.is_valid(label)) {
      const int64_t slot = K * valid_total + (q - valid_before[q]) * K;
      for (int64_t k = 0; k < K; ++k) {
        keys[slot + k] = kTailKey;
        entries[slot + k] = kUnusedEntry;
      }
      continue;
    }
    int64_t n, s;
    split_index(q, S, n, s);
    const int64_t unit = p.per_image ? n : 0;
    const int64_t position = valid_before[q] - valid_before[p.per_image ? n * S : 0];
    const int64_t length = valid_counts[unit];
    const int64_t first_slot = begins[unit * K] + position;
    const scalar_t* x = input + n * C * S + s;
    const bool softmax = p.kind == kSoftmaxLogits && C > 1;
    acc_t maximum = 0, total = 1;
    if (softmax) {
      maximum = load_value(x);
      for (int64_t c = 1; c < C; ++c) {
        const acc_t v = load_value(x + c * S);
        maximum = maximum < v ? v : maximum;  // std::max's NaN behaviour, as the CPU kernel
      }
      total = 0;
      for (int64_t c = 0; c < C; ++c) {
        total += std::exp(load_value(x + c * S) - maximum);
      }
    }
    for (int64_t k = 0; k < K; ++k) {
      const bool foreground = p.is_foreground(label, k);
      const acc_t v = load_value(x + (C == 1 ? 0 : k) * S);
      acc_t error;
      if (p.kind == kHinge) {
        error = hinge_error(v, foreground);
      } else {
        acc_t prediction = v;
        if (softmax) {
          prediction = std::exp(v - maximum) / total;
        } else if (p.kind == kSoftmaxLogits) {
          prediction = soft_dice::sigmoid(v);
        }
        error = softmax_error(prediction, foreground);
      }
      const auto key = descending_key(error);  // uint32_t for float, uint64_t for double; NaN first
      const int64_t slot = first_slot + k * length;
      if constexpr (kComposite) {
        keys[slot] = (static_cast<uint64_t>(unit * K + k) << 32) | key;
      } else {
        keys[slot] = key;
      }
      entries[slot] = pack_entry(q, foreground);
    }
  }
}

struct PieceGrid {
  int64_t pieces;  // per segment
  int64_t segment_classes;

  __device__ void locate(int64_t block, const int64_t* begins, const int64_t* ends, int64_t& segment,
                         int64_t& segment_begin, int64_t& first, int64_t& last) const {
    segment = block / pieces;
    const int64_t piece = block - segment * pieces;
    segment_begin = begins[segment];
    const int64_t segment_end = ends[segment];
    first = min(segment_begin + piece * kPieceItems, segment_end);
    last = min(first + kPieceItems, segment_end);
  }
};

// partial[block] = Σ over the block's piece of term(e)·g; G per segment from piece 0.
template <typename key_t, typename acc_t>
__global__ void __launch_bounds__(kThreadsPerBlock)
    segment_loss_kernel(const uint64_t* __restrict__ keys, const uint32_t* __restrict__ entries,
                        const int32_t* __restrict__ foreground_before, const int64_t* __restrict__ begins,
                        const int64_t* __restrict__ ends, const PieceGrid grid, const bool hinge,
                        double* __restrict__ partial, int64_t* __restrict__ foreground_counts) {
  using BlockReduce = cub::BlockReduce<double, kThreadsPerBlock>;
  __shared__ typename BlockReduce::TempStorage reduce_storage;
  int64_t segment, segment_begin, first, last;
  grid.locate(blockIdx.x, begins, ends, segment, segment_begin, first, last);
  const int64_t foreground_start = foreground_before[segment_begin];
  const int64_t total_foreground = foreground_before[ends[segment]] - foreground_start;
  double sum = 0;
  for (int64_t i = first + threadIdx.x; i < last; i += blockDim.x) {
    const bool foreground = entry_foreground(entries[i]);
    const acc_t error = error_of_key(static_cast<key_t>(keys[i]));
    const acc_t term = hinge ? hinge_loss_term(error) : error;
    const acc_t g =
        lovasz_gradient<acc_t>(foreground, foreground_before[i] - foreground_start, i - segment_begin, total_foreground);
    sum += static_cast<double>(term * g);
  }
  const double block_sum = BlockReduce(reduce_storage).Sum(sum);
  if (threadIdx.x == 0) {
    partial[blockIdx.x] = block_sum;
    if (blockIdx.x % grid.pieces == 0) {
      foreground_counts[segment] = total_foreground;
    }
  }
}

// losses[segment] = Σ of its pieces' partials, one block per segment.
template <typename acc_t>
__global__ void __launch_bounds__(kThreadsPerBlock)
    segment_sum_kernel(const double* __restrict__ partial, const int64_t pieces, acc_t* __restrict__ losses) {
  using BlockReduce = cub::BlockReduce<double, kThreadsPerBlock>;
  __shared__ typename BlockReduce::TempStorage reduce_storage;
  const double* mine = partial + int64_t{blockIdx.x} * pieces;
  double sum = 0;
  for (int64_t j = threadIdx.x; j < pieces; j += blockDim.x) {
    sum += mine[j];
  }
  const double total = BlockReduce(reduce_storage).Sum(sum);
  if (threadIdx.x == 0) {
    losses[blockIdx.x] = static_cast<acc_t>(total);
  }
}

struct SegmentTable {
  at::Tensor begins, ends;  // [U·K + 1] int64, the last one the ignored tail
};

SegmentTable make_segment_table(const LovaszProblem& p, const at::Tensor& valid_counts, int64_t items,
                                cudaStream_t stream) {
  const at::Tensor inclusive = at::cumsum(valid_counts, 0);
  const int64_t segments = p.units * p.segment_classes;
  SegmentTable table{at::empty({segments + 1}, valid_counts.options()), at::empty({segments + 1}, valid_counts.options())};
  segment_table_kernel<<<(segments + 1 + kThreadsPerBlock - 1) / kThreadsPerBlock, kThreadsPerBlock, 0, stream>>>(
      valid_counts.const_data_ptr<int64_t>(), inclusive.const_data_ptr<int64_t>(), p.units, p.segment_classes, items,
      table.begins.data_ptr<int64_t>(), table.ends.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return table;
}

PieceGrid make_piece_grid(const char* op, const LovaszProblem& p) {
  const int64_t unit_pixels = p.per_image ? p.pixels : p.batch * p.pixels;
  const PieceGrid grid{(unit_pixels + kPieceItems - 1) / kPieceItems, p.segment_classes};
  TORCH_CHECK(p.units * p.segment_classes * grid.pieces <= std::numeric_limits<int32_t>::max(), op,
              ": too many segments (", p.units * p.segment_classes, ")");
  return grid;
}

unsigned int piece_blocks(const LovaszProblem& p, const PieceGrid& grid) {
  return static_cast<unsigned int>(p.units * p.segment_classes * grid.pieces);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lovasz_segments_cuda(
    const at::Tensor& input_, const at::Tensor& labels_, int64_t kind, std::optional<int64_t> ignore_index,
    bool per_image, int64_t foreground_class) {
  const char* op = "lovasz_segments";
  const c10::cuda::CUDAGuard device_guard(input_.device());
  const LovaszProblem p = make_lovasz_problem(op, input_, labels_, kind, ignore_index, per_image, foreground_class);
  const at::Tensor input = input_.contiguous();
  const at::Tensor labels = labels_.contiguous();
  const int64_t K = p.segment_classes;
  const int64_t segments = p.units * K;
  const int64_t pixels = p.batch * p.pixels;
  const int64_t items = pixels * K;
  const auto loss_options = input.options().dtype(lovasz_loss_dtype(input));
  const auto long_options = labels.options();
  const auto int_options = labels.options().dtype(at::kInt);
  if (items == 0) {
    return {at::zeros({p.units, K}, loss_options), at::zeros({p.units, K}, long_options),
            at::zeros({p.units}, long_options), at::empty({items}, int_options)};
  }
  check_cub_count(op, items + 1);
  const auto stream = at::cuda::getCurrentCUDAStream();
  const PieceGrid grid = make_piece_grid(op, p);

  // 1. Valid pixels: positions, per-unit counts, segment offsets.
  at::Tensor valid_before = at::empty({pixels + 1}, int_options);
  exclusive_flag_scan(ValidFlag{labels.const_data_ptr<int64_t>(), pixels, p.has_ignore, p.ignore_index}, pixels,
                      valid_before.data_ptr<int32_t>(), input, stream);
  at::Tensor valid_counts = at::empty({p.units}, long_options);
  poison_if_enabled(valid_counts);  // every output below is written by a kernel
  const int64_t unit_pixels = p.per_image ? p.pixels : pixels;
  valid_counts_kernel<<<(p.units + kThreadsPerBlock - 1) / kThreadsPerBlock, kThreadsPerBlock, 0, stream>>>(
      valid_before.const_data_ptr<int32_t>(), p.units, unit_pixels, valid_counts.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const SegmentTable table = make_segment_table(p, valid_counts, items, stream);

  at::Tensor losses = at::empty({p.units, K}, loss_options);
  at::Tensor foreground_counts = at::empty({p.units, K}, long_options);
  poison_if_enabled(losses);
  poison_if_enabled(foreground_counts);
  at::Tensor sorted_entries;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "lovasz_segments_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using key_t = std::conditional_t<std::is_same_v<acc_t, double>, uint64_t, uint32_t>;
    constexpr bool kComposite = std::is_same_v<key_t, uint32_t>;

    // 2. Keys and entries in segment layout.
    at::Tensor keys = at::empty({items}, long_options);
    at::Tensor entries = at::empty({items}, int_options);
    auto* key_data = reinterpret_cast<uint64_t*>(keys.data_ptr<int64_t>());
    auto* entry_data = reinterpret_cast<uint32_t*>(entries.data_ptr<int32_t>());
    fill_segments_kernel<scalar_t, kComposite><<<cuda::grid_blocks(pixels), kThreadsPerBlock, 0, stream>>>(
        input.const_data_ptr<scalar_t>(), labels.const_data_ptr<int64_t>(), p, valid_before.const_data_ptr<int32_t>(),
        valid_counts.const_data_ptr<int64_t>(), table.begins.const_data_ptr<int64_t>(), key_data, entry_data);
    C10_CUDA_KERNEL_LAUNCH_CHECK();

    // 3. Sort every segment by key, stably.
    at::Tensor sorted_keys;
    if constexpr (kComposite) {
      int segment_bits = 0;
      while ((int64_t{1} << segment_bits) <= segments) {
        ++segment_bits;  // the tail's all-ones segment field exceeds every segment index
      }
      TORCH_CHECK(segment_bits <= 32, op, ": too many segments (", segments, ")");
      at::Tensor keys_alt = at::empty({items}, long_options);
      at::Tensor entries_alt = at::empty({items}, int_options);
      cub::DoubleBuffer<uint64_t> key_buffers(key_data, reinterpret_cast<uint64_t*>(keys_alt.data_ptr<int64_t>()));
      cub::DoubleBuffer<uint32_t> entry_buffers(entry_data,
                                                reinterpret_cast<uint32_t*>(entries_alt.data_ptr<int32_t>()));
      const int end_bit = 32 + segment_bits;
      size_t bytes = 0;
      C10_CUDA_CHECK(
          cub::DeviceRadixSort::SortPairs(nullptr, bytes, key_buffers, entry_buffers, items, 0, end_bit, stream));
      at::Tensor temp = temporary_bytes(bytes, input);
      C10_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp.data_ptr(), bytes, key_buffers, entry_buffers, items, 0,
                                                     end_bit, stream));
      // Keep the buffers the result landed in; the others go back to the allocator.
      sorted_keys = key_buffers.selector == 0 ? keys : keys_alt;
      sorted_entries = entry_buffers.selector == 0 ? entries : entries_alt;
    } else {
      check_cub_count(op, segments + 1);
      sorted_keys = at::empty({items}, long_options);
      sorted_entries = at::empty({items}, int_options);
      const uint64_t* keys_in = key_data;
      uint64_t* keys_out = reinterpret_cast<uint64_t*>(sorted_keys.data_ptr<int64_t>());
      const uint32_t* entries_in = entry_data;
      uint32_t* entries_out = reinterpret_cast<uint32_t*>(sorted_entries.data_ptr<int32_t>());
      const int64_t* begins = table.begins.const_data_ptr<int64_t>();
      const int64_t* ends = table.ends.const_data_ptr<int64_t>();
      size_t bytes = 0;
      C10_CUDA_CHECK(cub::DeviceSegmentedSort::StableSortPairs(nullptr, bytes, keys_in, keys_out, entries_in,
                                                               entries_out, items, segments + 1, begins, ends,
                                                               stream));
      at::Tensor temp = temporary_bytes(bytes, input);
      C10_CUDA_CHECK(cub::DeviceSegmentedSort::StableSortPairs(temp.data_ptr(), bytes, keys_in, keys_out,
                                                               entries_in, entries_out, items, segments + 1, begins,
                                                               ends, stream));
    }
    keys = at::Tensor();
    entries = at::Tensor();

    // 4. Foreground before each entry, then the losses.
    const auto* sorted = reinterpret_cast<const uint32_t*>(sorted_entries.const_data_ptr<int32_t>());
    at::Tensor foreground_before = at::empty({items + 1}, int_options);
    exclusive_flag_scan(ForegroundFlag{sorted, items}, items, foreground_before.data_ptr<int32_t>(), input, stream);
    at::Tensor partial = at::empty({segments * grid.pieces}, input.options().dtype(at::kDouble));
    segment_loss_kernel<key_t, acc_t><<<piece_blocks(p, grid), kThreadsPerBlock, 0, stream>>>(
        reinterpret_cast<const uint64_t*>(sorted_keys.const_data_ptr<int64_t>()), sorted,
        foreground_before.const_data_ptr<int32_t>(), table.begins.const_data_ptr<int64_t>(),
        table.ends.const_data_ptr<int64_t>(), grid, p.kind == kHinge, partial.data_ptr<double>(),
        foreground_counts.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    segment_sum_kernel<acc_t><<<static_cast<unsigned int>(segments), kThreadsPerBlock, 0, stream>>>(
        partial.const_data_ptr<double>(), grid.pieces, losses.data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {losses, foreground_counts, valid_counts, sorted_entries};
}

// ---------------------------------------------------------------------------
// Backward

// For each sorted entry: w·g, times the error's slope for kinds 0 and 2 (into
// grad_input), as is for kind 1 (into `weighted`, finished per pixel below).
template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
__global__ void __launch_bounds__(kThreadsPerBlock)
    scatter_kernel(const acc_t* __restrict__ grad_losses, const scalar_t* __restrict__ input,
                   const uint32_t* __restrict__ entries, const int32_t* __restrict__ foreground_before,
                   const int64_t* __restrict__ foreground_counts, const int64_t* __restrict__ begins,
                   const int64_t* __restrict__ ends, const PieceGrid grid, const LovaszProblem p,
                   scalar_t* grad_input, acc_t* weighted) {
  int64_t segment, segment_begin, first, last;
  grid.locate(blockIdx.x, begins, ends, segment, segment_begin, first, last);
  const int64_t k = segment % grid.segment_classes;
  const int64_t c = p.classes == 1 ? 0 : k;
  const int64_t pixels = p.batch * p.pixels;
  const int64_t foreground_start = foreground_before[segment_begin];
  const int64_t total_foreground = foreground_counts[segment];
  const acc_t w = grad_losses[segment];
  for (int64_t i = first + threadIdx.x; i < last; i += blockDim.x) {
    const uint32_t entry = entries[i];
    const int64_t pixel = entry_pixel(entry);
    if (pixel >= pixels) {
      continue;  // only possible with forged saved tensors
    }
    const bool foreground = entry_foreground(entry);
    const acc_t value =
        w * lovasz_gradient<acc_t>(foreground, foreground_before[i] - foreground_start, i - segment_begin,
                                   total_foreground);
    int64_t n, s;
    split_index(pixel, p.pixels, n, s);
    const int64_t element = (n * p.classes + c) * p.pixels + s;
    if (p.kind == kSoftmaxLogits) {
      weighted[element] = value;
    } else if (p.kind == kHinge) {
      grad_input[element] = static_cast<scalar_t>(value * hinge_error_slope(load_value(input + element), foreground));
    } else {
      grad_input[element] =
          static_cast<scalar_t>(value * softmax_error_slope(load_value(input + element), foreground));
    }
  }
}

// Kind 1, per pixel: dp_c = weighted_c · slope(p_c), then the softmax
// Jacobian p_c·(dp_c − Σ_j p_j·dp_j) (sigmoid_slope(x)·dp when C == 1).
// `weighted` may be grad_input itself (float32/float64): each element is read
// before it is written, by the same thread.
template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
__global__ void __launch_bounds__(kThreadsPerBlock)
    logits_backward_kernel(const scalar_t* __restrict__ input, const int64_t* __restrict__ labels,
                           const LovaszProblem p, acc_t* weighted, scalar_t* grad_input) {
  const int64_t S = p.pixels, C = p.classes;
  const int64_t pixels = p.batch * S;
  for (int64_t q = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; q < pixels;
       q += int64_t{gridDim.x} * blockDim.x) {
    int64_t n, s;
    split_index(q, S, n, s);
    const int64_t base = n * C * S + s;
    const int64_t label = labels[q];
    if (!p.is_valid(label)) {
      for (int64_t c = 0; c < C; ++c) {
        grad_input[base + c * S] = static_cast<scalar_t>(acc_t(0));
      }
      continue;
    }
    const scalar_t* x = input + base;
    if (C == 1) {
      const acc_t v = load_value(x);
      const acc_t dp = weighted[base] * softmax_error_slope(soft_dice::sigmoid(v), p.is_foreground(label, 0));
      grad_input[base] = static_cast<scalar_t>(dp * soft_dice::sigmoid_slope(v));
      continue;
    }
    acc_t maximum = load_value(x);
    for (int64_t c = 1; c < C; ++c) {
      const acc_t v = load_value(x + c * S);
      maximum = maximum < v ? v : maximum;
    }
    acc_t total = 0;
    for (int64_t c = 0; c < C; ++c) {
      total += std::exp(load_value(x + c * S) - maximum);
    }
    acc_t dot = 0;
    for (int64_t c = 0; c < C; ++c) {
      const acc_t prediction = std::exp(load_value(x + c * S) - maximum) / total;
      const acc_t dp = weighted[base + c * S] * softmax_error_slope(prediction, p.is_foreground(label, c));
      weighted[base + c * S] = dp;
      dot += prediction * dp;
    }
    for (int64_t c = 0; c < C; ++c) {
      const acc_t prediction = std::exp(load_value(x + c * S) - maximum) / total;
      const acc_t dp = weighted[base + c * S];
      grad_input[base + c * S] = static_cast<scalar_t>(prediction * (dp - dot));
    }
  }
}

at::Tensor lovasz_segments_backward_cuda(const at::Tensor& grad_losses, const at::Tensor& input_,
                                         const at::Tensor& labels_, const at::Tensor& foreground_counts_,
                                         const at::Tensor& valid_counts_, const at::Tensor& sorted_entries_,
                                         int64_t kind, std::optional<int64_t> ignore_index, bool per_image,
                                         int64_t foreground_class) {
  const char* op = "_lovasz_segments_backward";
  const c10::cuda::CUDAGuard device_guard(input_.device());
  const LovaszProblem p = make_lovasz_problem(op, input_, labels_, kind, ignore_index, per_image, foreground_class);
  TORCH_CHECK(grad_losses.dim() == 2 && grad_losses.size(0) == p.units && grad_losses.size(1) == p.segment_classes,
              op, ": grad_losses must be [", p.units, ", ", p.segment_classes, "], got ", grad_losses.sizes());
  TORCH_CHECK(foreground_counts_.sizes() == grad_losses.sizes() && valid_counts_.dim() == 1 &&
                  valid_counts_.size(0) == p.units &&
                  sorted_entries_.numel() == p.batch * p.pixels * p.segment_classes,
              op, ": saved tensors do not match the problem");
  TORCH_CHECK(sorted_entries_.scalar_type() == at::kInt, op, ": sorted_entries must be int32, got ",
              sorted_entries_.scalar_type());
  for (const at::Tensor* t : {&grad_losses, &foreground_counts_, &valid_counts_, &sorted_entries_}) {
    TORCH_CHECK(t->device() == input_.device(), op, ": every tensor must be on the device of input");
  }
  const at::Tensor input = input_.contiguous();
  const at::Tensor labels = labels_.contiguous();
  const at::Tensor foreground_counts = foreground_counts_.to(at::kLong).contiguous();
  const at::Tensor valid_counts = valid_counts_.to(at::kLong).contiguous();
  const at::Tensor sorted_entries = sorted_entries_.contiguous();
  if (input.numel() == 0) {
    return at::empty_like(input, at::MemoryFormat::Contiguous);
  }
  const int64_t items = sorted_entries.numel();
  check_cub_count(op, items + 1);
  const auto stream = at::cuda::getCurrentCUDAStream();
  const PieceGrid grid = make_piece_grid(op, p);
  const SegmentTable table = make_segment_table(p, valid_counts, items, stream);
  const auto* entries = reinterpret_cast<const uint32_t*>(sorted_entries.const_data_ptr<int32_t>());
  at::Tensor foreground_before = at::empty({items + 1}, labels.options().dtype(at::kInt));
  exclusive_flag_scan(ForegroundFlag{entries, items}, items, foreground_before.data_ptr<int32_t>(), input, stream);

  // Kinds 0 and 2 write only valid (pixel, class) elements: the rest stays 0.
  // Kind 1 writes every element in its per-pixel pass.
  at::Tensor grad_input = p.kind == kSoftmaxLogits ? at::empty_like(input, at::MemoryFormat::Contiguous)
                                                   : at::zeros_like(input, at::MemoryFormat::Contiguous);
  if (p.kind == kSoftmaxLogits) {
    poison_if_enabled(grad_input);
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "lovasz_segments_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor grad = grad_losses.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    scalar_t* out = grad_input.data_ptr<scalar_t>();
    // w·g for kind 1, in the accumulation type (in place when that is the input's type).
    at::Tensor weighted_buffer;
    acc_t* weighted = nullptr;
    if (p.kind == kSoftmaxLogits) {
      if (std::is_same_v<scalar_t, acc_t>) {
        weighted = reinterpret_cast<acc_t*>(out);  // the same type: in place
      } else {
        weighted_buffer = at::empty(input.sizes(), input.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
        weighted = weighted_buffer.data_ptr<acc_t>();
      }
    }
    scatter_kernel<scalar_t><<<piece_blocks(p, grid), kThreadsPerBlock, 0, stream>>>(
        grad.const_data_ptr<acc_t>(), input.const_data_ptr<scalar_t>(), entries,
        foreground_before.const_data_ptr<int32_t>(), foreground_counts.const_data_ptr<int64_t>(),
        table.begins.const_data_ptr<int64_t>(), table.ends.const_data_ptr<int64_t>(), grid, p, out, weighted);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (p.kind == kSoftmaxLogits) {
      logits_backward_kernel<scalar_t><<<cuda::grid_blocks(p.batch * p.pixels), kThreadsPerBlock, 0, stream>>>(
          input.const_data_ptr<scalar_t>(), labels.const_data_ptr<int64_t>(), p, weighted, out);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, CUDA, m) {
  m.impl("lovasz_segments", &lovasz_segments_cuda);
  m.impl("_lovasz_segments_backward", &lovasz_segments_backward_cuda);
}

}  // namespace fastops
