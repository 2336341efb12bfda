// CUDA kernels of soft_dice_statistics and its backward.
//
// Forward. The statistics must be deterministic (no float atomics) and the
// op must be fast both per image (N units, possibly many small images) and
// per batch (one unit, every block contributes to the same sums). So every
// block belongs to exactly one unit and covers a contiguous run of that
// unit's flat pixels (n·S + s): per-batch work spreads over the whole GPU,
// per-image work over ceil(blocks / N) blocks per image, and a block never
// mixes units. Each block writes its own [C, 6] partial; a second kernel adds
// a unit's partials in block order, in double (one block per unit: the
// partial is the result and the second pass is skipped).
//  - Multiclass: the softmax needs a pixel's C logits, so a lane owns a few
//    pixels of a warp tile and loops over the classes (consecutive lanes read
//    consecutive pixels of one class row: coalesced). The per-class sums of
//    a tile are reduced across the warp with shuffles (fixed order) and added
//    by lane 0 to the warp's own shared-memory slot [class][4]: no two threads
//    ever write one slot, so no atomics; the block adds its warps' slots in
//    warp order at the end. Each lane's several pixels amortise the shuffles.
//    The valid count is class-independent and kept as an integer.
//  - Multilabel: elements are independent, so a block loops over classes in
//    the outer loop and over its pixels inside, accumulating in registers; one
//    warp reduction per class and block.
//  Shared memory is [warps][classes][slot]; more than fits in 48 KB (256
//  classes in float, 128 in double) is processed in class chunks, one launch
//  per chunk (from logits each chunk recomputes the softmax normalisers).
//  A block covers at most 2^16 pixels: its float counts are exact and a
//  warp's running slot sums add at most 64 tile sums.
//
// Backward: elementwise. Multiclass from logits takes one thread per pixel
// (the softmax Jacobian needs the pixel's Σ_k p_k·dp_k): three passes over the
// pixel's classes (max, sum and dot, output), the first two re-read from cache.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <optional>

#include "common/poison.h"
#include "cuda/launch.cuh"
#include "ops/segmentation_losses.h"
#include "ops/soft_dice_math.h"

namespace fastops {
namespace {

using namespace soft_dice;
using cuda::kThreadsPerBlock;

constexpr int kWarpSize = 32;
constexpr int kWarps = kThreadsPerBlock / kWarpSize;
constexpr int kLanePixels = 4;  // pixels per lane in a multiclass warp tile
constexpr int64_t kTilePixels = int64_t{kWarpSize} * kLanePixels;
constexpr int kMulticlassSlot = 4;  // Σp, Σt, Σp·t, Σ|p − t| (statistics 0..3)
constexpr int kMultilabelSlot = kStatistics;
constexpr size_t kSharedBytes = 48 * 1024;
constexpr int64_t kMinBlockPixels = 2048;
constexpr int64_t kMaxBlockPixels = int64_t{1} << 16;  // bounds the float running sums of a warp slot

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

// Moves the pixel (n, s) forward by `step` flat pixels.
__device__ __forceinline__ void advance_pixel(int64_t& n, int64_t& s, int64_t step, int64_t pixels) {
  s += step;
  if (s >= pixels) {
    if (s < 2 * pixels) {
      s -= pixels;
      ++n;
    } else {
      int64_t wraps, rest;
      split_index(s, pixels, wraps, rest);
      n += wraps;
      s = rest;
    }
  }
}

template <typename T>
__device__ __forceinline__ T warp_sum(T value) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    value += __shfl_xor_sync(0xffffffffu, value, offset);
  }
  return value;
}

template <typename scalar_t>
__device__ __forceinline__ at::opmath_type<scalar_t> load_value(const scalar_t* p) {
  return static_cast<at::opmath_type<scalar_t>>(*p);
}

// Block b belongs to unit b / blocks_per_unit and covers the b % blocks_per_unit-th
// run of block_pixels flat pixels of that unit (possibly empty at the end).
struct BlockRanges {
  int64_t unit_pixels;
  int64_t blocks_per_unit;
  int64_t block_pixels;

  __device__ void range(int64_t block, int64_t& begin, int64_t& end) const {
    const int64_t unit = block / blocks_per_unit;
    const int64_t j = block - unit * blocks_per_unit;
    const int64_t unit_begin = unit * unit_pixels;
    begin = unit_begin + j * block_pixels;
    end = min(begin + block_pixels, unit_begin + unit_pixels);
  }
};

// ---------------------------------------------------------------------------
// Forward

template <typename scalar_t, bool kFromLogits, typename acc_t = at::opmath_type<scalar_t>>
__global__ void __launch_bounds__(kThreadsPerBlock)
    multiclass_statistics_kernel(const scalar_t* __restrict__ input, const int64_t* __restrict__ labels,
                                 const SoftDiceProblem p, const BlockRanges ranges, const int64_t class_begin,
                                 const int class_count, acc_t* __restrict__ partial) {
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  acc_t* slots = reinterpret_cast<acc_t*>(shared_bytes);  // [kWarps][class_count][kMulticlassSlot]
  __shared__ int64_t warp_valid[kWarps];
  const int warp = static_cast<int>(threadIdx.x / kWarpSize);
  const int lane = static_cast<int>(threadIdx.x % kWarpSize);
  for (int i = threadIdx.x; i < kWarps * class_count * kMulticlassSlot; i += blockDim.x) {
    slots[i] = acc_t(0);
  }
  __syncthreads();

  int64_t begin, end;
  ranges.range(blockIdx.x, begin, end);
  const int64_t S = p.pixels, C = p.classes;
  acc_t* mine = slots + warp * class_count * kMulticlassSlot;
  int64_t valid_count = 0;
  // Warp-uniform loop: every lane takes part in every shuffle.
  for (int64_t tile = begin + warp * kTilePixels; tile < end; tile += kWarps * kTilePixels) {
    int64_t offset[kLanePixels], label[kLanePixels];
    bool valid[kLanePixels];
#pragma unroll
    for (int j = 0; j < kLanePixels; ++j) {
      const int64_t q = tile + j * kWarpSize + lane;
      valid[j] = false;
      offset[j] = 0;
      label[j] = -1;
      if (q < end) {
        const int64_t l = labels[q];
        if (label_is_valid(l, p.has_ignore, p.ignore_index)) {
          int64_t n, s;
          split_index(q, S, n, s);
          valid[j] = true;
          label[j] = l;
          offset[j] = n * C * S + s;
          ++valid_count;
        }
      }
    }
    acc_t maximum[kLanePixels], scale[kLanePixels];
    if constexpr (kFromLogits) {
#pragma unroll
      for (int j = 0; j < kLanePixels; ++j) {
        maximum[j] = valid[j] ? load_value(input + offset[j]) : acc_t(0);
      }
      for (int64_t c = 1; c < C; ++c) {
#pragma unroll
        for (int j = 0; j < kLanePixels; ++j) {
          if (valid[j]) {
            const acc_t x = load_value(input + offset[j] + c * S);
            maximum[j] = maximum[j] < x ? x : maximum[j];  // std::max's NaN behaviour, as the CPU kernel
          }
        }
      }
      acc_t total[kLanePixels];
#pragma unroll
      for (int j = 0; j < kLanePixels; ++j) {
        total[j] = acc_t(0);
      }
      for (int64_t c = 0; c < C; ++c) {
#pragma unroll
        for (int j = 0; j < kLanePixels; ++j) {
          if (valid[j]) {
            total[j] += std::exp(load_value(input + offset[j] + c * S) - maximum[j]);
          }
        }
      }
#pragma unroll
      for (int j = 0; j < kLanePixels; ++j) {
        scale[j] = valid[j] ? acc_t(1) / total[j] : acc_t(0);
      }
    }
    for (int ci = 0; ci < class_count; ++ci) {
      const int64_t c = class_begin + ci;
      acc_t sp = 0, st = 0, spt = 0, sd = 0;
#pragma unroll
      for (int j = 0; j < kLanePixels; ++j) {
        if (valid[j]) {
          const acc_t x = load_value(input + offset[j] + c * S);
          acc_t prob;
          if constexpr (kFromLogits) {
            prob = std::exp(x - maximum[j]) * scale[j];
          } else {
            prob = x;
          }
          const acc_t t = label[j] == c ? acc_t(1) : acc_t(0);
          sp += prob;
          st += t;
          spt += prob * t;
          sd += std::abs(prob - t);
        }
      }
      sp = warp_sum(sp);
      st = warp_sum(st);
      spt = warp_sum(spt);
      sd = warp_sum(sd);
      if (lane == 0) {
        acc_t* slot = mine + ci * kMulticlassSlot;
        slot[kPredictionSum] += sp;
        slot[kTargetSum] += st;
        slot[kProductSum] += spt;
        slot[kAbsoluteDifferenceSum] += sd;
      }
    }
  }
  valid_count = warp_sum(valid_count);
  if (lane == 0) {
    warp_valid[warp] = valid_count;
  }
  __syncthreads();

  for (int i = threadIdx.x; i < class_count * kStatistics; i += blockDim.x) {
    const int ci = i / kStatistics, stat = i % kStatistics;
    acc_t value = 0;
    if (stat == kValidCount) {
      int64_t count = 0;
      for (int w = 0; w < kWarps; ++w) {
        count += warp_valid[w];
      }
      value = static_cast<acc_t>(count);
    } else if (stat != kBceSum) {
      for (int w = 0; w < kWarps; ++w) {
        value += slots[(w * class_count + ci) * kMulticlassSlot + stat];
      }
    }
    partial[(int64_t{blockIdx.x} * C + class_begin + ci) * kStatistics + stat] = value;
  }
}

template <typename scalar_t, bool kFromLogits, bool kWithBce, typename acc_t = at::opmath_type<scalar_t>>
__global__ void __launch_bounds__(kThreadsPerBlock)
    multilabel_statistics_kernel(const scalar_t* __restrict__ input, const scalar_t* __restrict__ target,
                                 const SoftDiceProblem p, const BlockRanges ranges, const int64_t class_begin,
                                 const int class_count, acc_t* __restrict__ partial) {
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  acc_t* slots = reinterpret_cast<acc_t*>(shared_bytes);  // [kWarps][class_count][kMultilabelSlot]
  const int warp = static_cast<int>(threadIdx.x / kWarpSize);
  const int lane = static_cast<int>(threadIdx.x % kWarpSize);
  int64_t begin, end;
  ranges.range(blockIdx.x, begin, end);
  const int64_t S = p.pixels, C = p.classes;
  const double ignore_value = static_cast<double>(p.ignore_index);
  const int64_t first = begin + threadIdx.x;
  int64_t first_n = 0, first_s = 0;
  if (first < end) {
    split_index(first, S, first_n, first_s);
  }
  for (int ci = 0; ci < class_count; ++ci) {
    const int64_t c = class_begin + ci;
    acc_t sp = 0, st = 0, spt = 0, sd = 0, sb = 0, sn = 0;
    int64_t n = first_n, s = first_s;
    for (int64_t q = first; q < end; q += blockDim.x) {
      const int64_t idx = (n * C + c) * S + s;
      advance_pixel(n, s, blockDim.x, S);
      const acc_t t = load_value(target + idx);
      if (!target_is_valid(t, p.has_ignore, ignore_value)) {
        continue;
      }
      const acc_t x = load_value(input + idx);
      acc_t prob;
      if constexpr (kFromLogits) {
        prob = sigmoid(x);
      } else {
        prob = x;
      }
      sp += prob;
      st += t;
      spt += prob * t;
      sd += std::abs(prob - t);
      if constexpr (kWithBce) {
        sb += bce_with_logits(x, t);
      }
      sn += 1;
    }
    sp = warp_sum(sp);
    st = warp_sum(st);
    spt = warp_sum(spt);
    sd = warp_sum(sd);
    sb = warp_sum(sb);
    sn = warp_sum(sn);
    if (lane == 0) {
      acc_t* slot = slots + (warp * class_count + ci) * kMultilabelSlot;
      slot[kPredictionSum] = sp;
      slot[kTargetSum] = st;
      slot[kProductSum] = spt;
      slot[kAbsoluteDifferenceSum] = sd;
      slot[kBceSum] = sb;
      slot[kValidCount] = sn;
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < class_count * kStatistics; i += blockDim.x) {
    const int ci = i / kStatistics, stat = i % kStatistics;
    acc_t value = 0;
    for (int w = 0; w < kWarps; ++w) {
      value += slots[(w * class_count + ci) * kMultilabelSlot + stat];
    }
    partial[(int64_t{blockIdx.x} * C + class_begin + ci) * kStatistics + stat] = value;
  }
}

// statistics[u, i] = Σ_b partial[u, b, i] over the unit's blocks in order, in double.
template <typename acc_t>
__global__ void __launch_bounds__(kThreadsPerBlock)
    sum_partials_kernel(const acc_t* __restrict__ partial, const int64_t units, const int64_t blocks_per_unit,
                        const int64_t width, acc_t* __restrict__ statistics) {
  const int64_t total = units * width;
  for (int64_t e = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; e < total; e += int64_t{gridDim.x} * blockDim.x) {
    const int64_t u = e / width, i = e - u * width;
    const acc_t* column = partial + u * blocks_per_unit * width + i;
    double sum = 0;
    for (int64_t b = 0; b < blocks_per_unit; ++b) {
      sum += static_cast<double>(column[b * width]);
    }
    statistics[e] = static_cast<acc_t>(sum);
  }
}

at::Tensor soft_dice_statistics_cuda(const at::Tensor& input_, const at::Tensor& target_, bool multiclass,
                                    bool from_logits, std::optional<int64_t> ignore_index, bool per_image,
                                    bool with_bce) {
  const c10::cuda::CUDAGuard device_guard(input_.device());
  const SoftDiceProblem p = make_soft_dice_problem("soft_dice_statistics", input_, target_, multiclass, from_logits,
                                                   ignore_index, per_image, with_bce);
  const at::Tensor input = input_.contiguous();
  const at::Tensor target = target_.contiguous();
  const auto options = input.options().dtype(soft_dice_statistics_dtype(input));
  if (input.numel() == 0) {
    return at::zeros({p.units, p.classes, kStatistics}, options);
  }
  const auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t unit_pixels = per_image ? p.pixels : p.batch * p.pixels;
  const int64_t target_blocks = int64_t{at::cuda::getCurrentDeviceProperties()->multiProcessorCount} * 4;
  int64_t blocks_per_unit = (target_blocks + p.units - 1) / p.units;
  blocks_per_unit = std::min(blocks_per_unit, (unit_pixels + kMinBlockPixels - 1) / kMinBlockPixels);
  blocks_per_unit = std::max(blocks_per_unit, (unit_pixels + kMaxBlockPixels - 1) / kMaxBlockPixels);
  blocks_per_unit = std::max<int64_t>(blocks_per_unit, 1);
  const int64_t blocks = p.units * blocks_per_unit;
  TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), "soft_dice_statistics: too many images (", p.units,
              ")");
  const BlockRanges ranges{unit_pixels, blocks_per_unit, (unit_pixels + blocks_per_unit - 1) / blocks_per_unit};

  at::Tensor statistics = at::empty({p.units, p.classes, kStatistics}, options);
  poison_if_enabled(statistics);  // every sum is written below
  // One block per unit: its partial is the result.
  at::Tensor partial =
      blocks_per_unit == 1 ? statistics : at::empty({blocks, p.classes, kStatistics}, options);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "soft_dice_statistics_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t class_chunk = static_cast<int64_t>(kSharedBytes / (kWarps * kMultilabelSlot * sizeof(acc_t)));
    const scalar_t* x = input.const_data_ptr<scalar_t>();
    acc_t* out = partial.data_ptr<acc_t>();
    for (int64_t class_begin = 0; class_begin < p.classes; class_begin += class_chunk) {
      const int class_count = static_cast<int>(std::min(class_chunk, p.classes - class_begin));
      const dim3 grid(static_cast<unsigned int>(blocks));
      if (p.multiclass) {
        const size_t shared = size_t{kWarps} * class_count * kMulticlassSlot * sizeof(acc_t);
        const int64_t* labels = target.const_data_ptr<int64_t>();
        if (p.from_logits) {
          multiclass_statistics_kernel<scalar_t, true>
              <<<grid, kThreadsPerBlock, shared, stream>>>(x, labels, p, ranges, class_begin, class_count, out);
        } else {
          multiclass_statistics_kernel<scalar_t, false>
              <<<grid, kThreadsPerBlock, shared, stream>>>(x, labels, p, ranges, class_begin, class_count, out);
        }
      } else {
        const size_t shared = size_t{kWarps} * class_count * kMultilabelSlot * sizeof(acc_t);
        const scalar_t* t = target.const_data_ptr<scalar_t>();
        if (p.with_bce) {  // implies from_logits
          multilabel_statistics_kernel<scalar_t, true, true>
              <<<grid, kThreadsPerBlock, shared, stream>>>(x, t, p, ranges, class_begin, class_count, out);
        } else if (p.from_logits) {
          multilabel_statistics_kernel<scalar_t, true, false>
              <<<grid, kThreadsPerBlock, shared, stream>>>(x, t, p, ranges, class_begin, class_count, out);
        } else {
          multilabel_statistics_kernel<scalar_t, false, false>
              <<<grid, kThreadsPerBlock, shared, stream>>>(x, t, p, ranges, class_begin, class_count, out);
        }
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (blocks_per_unit > 1) {
      const int64_t width = p.classes * kStatistics;
      sum_partials_kernel<acc_t><<<cuda::grid_blocks(p.units * width), kThreadsPerBlock, 0, stream>>>(
          partial.const_data_ptr<acc_t>(), p.units, blocks_per_unit, width, statistics.data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return statistics;
}

// ---------------------------------------------------------------------------
// Backward

template <typename scalar_t, bool kFromLogits, typename acc_t = at::opmath_type<scalar_t>>
__global__ void __launch_bounds__(kThreadsPerBlock)
    multiclass_backward_kernel(const acc_t* __restrict__ grad, const scalar_t* __restrict__ input,
                               const int64_t* __restrict__ labels, const SoftDiceProblem p,
                               scalar_t* __restrict__ grad_input) {
  const int64_t S = p.pixels, C = p.classes;
  const int64_t total = p.batch * S;
  for (int64_t q = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; q < total; q += int64_t{gridDim.x} * blockDim.x) {
    int64_t n, s;
    split_index(q, S, n, s);
    const int64_t base = n * C * S + s;
    const int64_t label = labels[q];
    if (!label_is_valid(label, p.has_ignore, p.ignore_index)) {
      for (int64_t c = 0; c < C; ++c) {
        grad_input[base + c * S] = static_cast<scalar_t>(acc_t(0));
      }
      continue;
    }
    const acc_t* g = grad + (p.units > 1 ? n : 0) * C * kStatistics;
    if constexpr (!kFromLogits) {
      for (int64_t c = 0; c < C; ++c) {
        const acc_t t = label == c ? acc_t(1) : acc_t(0);
        grad_input[base + c * S] =
            static_cast<scalar_t>(prediction_gradient(g + c * kStatistics, load_value(input + base + c * S), t));
      }
    } else {
      acc_t maximum = load_value(input + base);
      for (int64_t c = 1; c < C; ++c) {
        const acc_t x = load_value(input + base + c * S);
        maximum = maximum < x ? x : maximum;
      }
      acc_t sum = 0;
      for (int64_t c = 0; c < C; ++c) {
        sum += std::exp(load_value(input + base + c * S) - maximum);
      }
      const acc_t scale = acc_t(1) / sum;
      acc_t dot = 0;
      for (int64_t c = 0; c < C; ++c) {
        const acc_t prob = std::exp(load_value(input + base + c * S) - maximum) * scale;
        const acc_t t = label == c ? acc_t(1) : acc_t(0);
        dot += prob * prediction_gradient(g + c * kStatistics, prob, t);
      }
      for (int64_t c = 0; c < C; ++c) {
        const acc_t prob = std::exp(load_value(input + base + c * S) - maximum) * scale;
        const acc_t t = label == c ? acc_t(1) : acc_t(0);
        const acc_t dp = prediction_gradient(g + c * kStatistics, prob, t);
        grad_input[base + c * S] = static_cast<scalar_t>(prob * (dp - dot));
      }
    }
  }
}

template <typename scalar_t, bool kFromLogits, typename acc_t = at::opmath_type<scalar_t>>
__global__ void __launch_bounds__(kThreadsPerBlock)
    multilabel_backward_kernel(const acc_t* __restrict__ grad, const scalar_t* __restrict__ input,
                               const scalar_t* __restrict__ target, const SoftDiceProblem p,
                               scalar_t* __restrict__ grad_input) {
  const int64_t S = p.pixels, C = p.classes;
  const int64_t total = p.batch * C * S;
  const double ignore_value = static_cast<double>(p.ignore_index);
  for (int64_t e = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; e < total; e += int64_t{gridDim.x} * blockDim.x) {
    int64_t row, s, n, c;
    split_index(e, S, row, s);
    split_index(row, C, n, c);
    const acc_t* g = grad + ((p.units > 1 ? n : 0) * C + c) * kStatistics;
    const acc_t t = load_value(target + e);
    acc_t value = 0;
    if (target_is_valid(t, p.has_ignore, ignore_value)) {
      const acc_t x = load_value(input + e);
      if constexpr (kFromLogits) {
        value = prediction_gradient(g, sigmoid(x), t) * sigmoid_slope(x) + g[kBceSum] * bce_with_logits_slope(x, t);
      } else {
        value = prediction_gradient(g, x, t);
      }
    }
    grad_input[e] = static_cast<scalar_t>(value);
  }
}

at::Tensor soft_dice_statistics_backward_cuda(const at::Tensor& grad_statistics, const at::Tensor& input_,
                                             const at::Tensor& target_, bool multiclass, bool from_logits,
                                             std::optional<int64_t> ignore_index, bool per_image) {
  const c10::cuda::CUDAGuard device_guard(input_.device());
  const SoftDiceProblem p = make_soft_dice_problem("_soft_dice_statistics_backward", input_, target_, multiclass,
                                                   from_logits, ignore_index, per_image, /*with_bce=*/false);
  TORCH_CHECK(grad_statistics.dim() == 3 && grad_statistics.size(0) == p.units &&
                  grad_statistics.size(1) == p.classes && grad_statistics.size(2) == kStatistics,
              "_soft_dice_statistics_backward: grad_statistics must be [", p.units, ", ", p.classes, ", 6], got ",
              grad_statistics.sizes());
  TORCH_CHECK(grad_statistics.device() == input_.device(),
              "_soft_dice_statistics_backward: grad_statistics must be on the device of input");
  const at::Tensor input = input_.contiguous();
  const at::Tensor target = target_.contiguous();
  at::Tensor grad_input = at::empty_like(input, at::MemoryFormat::Contiguous);
  if (input.numel() == 0) {
    return grad_input;
  }
  poison_if_enabled(grad_input);  // every element is written below
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "soft_dice_statistics_backward_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const at::Tensor grad = grad_statistics.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
        const acc_t* g = grad.const_data_ptr<acc_t>();
        const scalar_t* x = input.const_data_ptr<scalar_t>();
        scalar_t* out = grad_input.data_ptr<scalar_t>();
        if (p.multiclass) {
          const unsigned int blocks = cuda::grid_blocks(p.batch * p.pixels);
          const int64_t* labels = target.const_data_ptr<int64_t>();
          if (p.from_logits) {
            multiclass_backward_kernel<scalar_t, true><<<blocks, kThreadsPerBlock, 0, stream>>>(g, x, labels, p, out);
          } else {
            multiclass_backward_kernel<scalar_t, false><<<blocks, kThreadsPerBlock, 0, stream>>>(g, x, labels, p, out);
          }
        } else {
          const unsigned int blocks = cuda::grid_blocks(input.numel());
          const scalar_t* t = target.const_data_ptr<scalar_t>();
          if (p.from_logits) {
            multilabel_backward_kernel<scalar_t, true><<<blocks, kThreadsPerBlock, 0, stream>>>(g, x, t, p, out);
          } else {
            multilabel_backward_kernel<scalar_t, false><<<blocks, kThreadsPerBlock, 0, stream>>>(g, x, t, p, out);
          }
        }
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return grad_input;
}

// The loss from the statistics: one thread per (unit, class) term, then a
// sum in double (deterministic); the backward reads the incoming gradient
// from device memory (no host synchronisation).
template <typename scalar_t>
__global__ void dice_loss_terms_kernel(const scalar_t* __restrict__ statistics,
                                       const scalar_t* __restrict__ coefficients, int64_t terms, int64_t classes,
                                       scalar_t smooth, scalar_t eps, bool log_loss, scalar_t* __restrict__ out) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < terms; i += int64_t{gridDim.x} * blockDim.x) {
    const scalar_t term = dice_loss_term<scalar_t>(statistics + i * kStatistics, smooth, eps, log_loss);
    out[i] = coefficients != nullptr ? term * coefficients[i % classes] : term;
  }
}

template <typename scalar_t>
__global__ void dice_loss_gradient_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ statistics,
                                          const scalar_t* __restrict__ coefficients, int64_t terms, int64_t classes,
                                          scalar_t scale, scalar_t smooth, scalar_t eps, bool log_loss,
                                          scalar_t* __restrict__ grad_statistics) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < terms; i += int64_t{gridDim.x} * blockDim.x) {
    const scalar_t grad_term = grad[0] * scale * (coefficients != nullptr ? coefficients[i % classes] : scalar_t(1));
    dice_loss_term_gradient<scalar_t>(statistics + i * kStatistics, smooth, eps, log_loss, grad_term,
                                      grad_statistics + i * kStatistics);
  }
}

at::Tensor soft_dice_loss_from_statistics_cuda(const at::Tensor& statistics_,
                                               const std::optional<at::Tensor>& class_coefficients, double scale,
                                               double smooth, double eps, bool log_loss) {
  const c10::cuda::CUDAGuard device_guard(statistics_.device());
  const at::Tensor coefficients =
      check_dice_loss_arguments("_soft_dice_loss_from_statistics", statistics_, class_coefficients);
  const at::Tensor statistics = statistics_.contiguous();
  const int64_t terms = statistics.size(0) * statistics.size(1);
  at::Tensor values = at::empty({terms}, statistics.options());
  if (terms > 0) {
    const auto stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES(statistics.scalar_type(), "soft_dice_loss_from_statistics_cuda", [&] {
      dice_loss_terms_kernel<scalar_t><<<cuda::grid_blocks(terms), kThreadsPerBlock, 0, stream>>>(
          statistics.const_data_ptr<scalar_t>(),
          coefficients.defined() ? coefficients.const_data_ptr<scalar_t>() : nullptr, terms, statistics.size(1),
          static_cast<scalar_t>(smooth), static_cast<scalar_t>(eps), log_loss, values.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return (values.sum(at::kDouble) * scale).to(statistics.scalar_type());
}

at::Tensor soft_dice_loss_from_statistics_backward_cuda(const at::Tensor& grad_, const at::Tensor& statistics_,
                                                        const std::optional<at::Tensor>& class_coefficients,
                                                        double scale, double smooth, double eps, bool log_loss) {
  const c10::cuda::CUDAGuard device_guard(statistics_.device());
  const at::Tensor coefficients =
      check_dice_loss_arguments("_soft_dice_loss_from_statistics_backward", statistics_, class_coefficients);
  const at::Tensor grad = check_dice_loss_gradient("_soft_dice_loss_from_statistics_backward", grad_, statistics_);
  const at::Tensor statistics = statistics_.contiguous();
  at::Tensor grad_statistics = at::empty_like(statistics);
  const int64_t terms = statistics.size(0) * statistics.size(1);
  if (terms > 0) {
    const auto stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES(statistics.scalar_type(), "soft_dice_loss_from_statistics_backward_cuda", [&] {
      dice_loss_gradient_kernel<scalar_t><<<cuda::grid_blocks(terms), kThreadsPerBlock, 0, stream>>>(
          grad.const_data_ptr<scalar_t>(), statistics.const_data_ptr<scalar_t>(),
          coefficients.defined() ? coefficients.const_data_ptr<scalar_t>() : nullptr, terms, statistics.size(1),
          static_cast<scalar_t>(scale), static_cast<scalar_t>(smooth), static_cast<scalar_t>(eps), log_loss,
          grad_statistics.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return grad_statistics;
}

// BCE − ln(Dice): the log terms by a kernel, the BCE and count totals by
// at::sum (deterministic), read on the device by the backward kernel.
template <typename scalar_t>
__global__ void bce_dice_log_terms_kernel(const scalar_t* __restrict__ statistics, int64_t terms, scalar_t smooth,
                                          scalar_t* __restrict__ out) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < terms; i += int64_t{gridDim.x} * blockDim.x) {
    out[i] = bce_dice_log_term<scalar_t>(statistics + i * kStatistics, smooth);
  }
}

template <typename scalar_t>
__global__ void bce_dice_gradient_kernel(const scalar_t* __restrict__ grad, const double* __restrict__ totals,
                                         const scalar_t* __restrict__ statistics, int64_t terms, double dice_weight,
                                         scalar_t smooth, scalar_t* __restrict__ grad_statistics) {
  const double grad_loss = static_cast<double>(grad[0]);
  const double bce = totals[0], count = totals[1];
  const auto grad_bce = static_cast<scalar_t>(grad_loss / (count < 1.0 ? 1.0 : count));
  const auto grad_count = static_cast<scalar_t>(count >= 1.0 ? -grad_loss * bce / (count * count) : 0.0);
  const auto grad_log = static_cast<scalar_t>(-grad_loss * dice_weight / static_cast<double>(terms));
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < terms; i += int64_t{gridDim.x} * blockDim.x) {
    scalar_t* g = grad_statistics + i * kStatistics;
    bce_dice_log_term_gradient<scalar_t>(statistics + i * kStatistics, smooth, grad_log, g);
    g[kBceSum] = grad_bce;
    g[kValidCount] = grad_count;
  }
}

// [Σ bce, Σ #valid] over every (unit, class), in double, on the device.
at::Tensor bce_dice_totals(const at::Tensor& statistics) {
  return at::stack({statistics.select(2, kBceSum).sum(at::kDouble), statistics.select(2, kValidCount).sum(at::kDouble)});
}

at::Tensor bce_dice_loss_from_statistics_cuda(const at::Tensor& statistics_, double dice_weight, double smooth) {
  const c10::cuda::CUDAGuard device_guard(statistics_.device());
  check_dice_loss_arguments("_bce_dice_loss_from_statistics", statistics_, std::nullopt);
  const at::Tensor statistics = statistics_.contiguous();
  const int64_t terms = statistics.size(0) * statistics.size(1);
  at::Tensor logs = at::empty({terms}, statistics.options());
  if (terms > 0) {
    const auto stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES(statistics.scalar_type(), "bce_dice_loss_from_statistics_cuda", [&] {
      bce_dice_log_terms_kernel<scalar_t><<<cuda::grid_blocks(terms), kThreadsPerBlock, 0, stream>>>(
          statistics.const_data_ptr<scalar_t>(), terms, static_cast<scalar_t>(smooth), logs.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  const at::Tensor totals = bce_dice_totals(statistics);
  const at::Tensor bce = totals[0] / totals[1].clamp_min(1.0);
  return (bce - logs.sum(at::kDouble) * (dice_weight / static_cast<double>(terms))).to(statistics.scalar_type());
}

at::Tensor bce_dice_loss_from_statistics_backward_cuda(const at::Tensor& grad_, const at::Tensor& statistics_,
                                                       double dice_weight, double smooth) {
  const c10::cuda::CUDAGuard device_guard(statistics_.device());
  check_dice_loss_arguments("_bce_dice_loss_from_statistics_backward", statistics_, std::nullopt);
  const at::Tensor grad = check_dice_loss_gradient("_bce_dice_loss_from_statistics_backward", grad_, statistics_);
  const at::Tensor statistics = statistics_.contiguous();
  at::Tensor grad_statistics = at::empty_like(statistics);
  const int64_t terms = statistics.size(0) * statistics.size(1);
  if (terms > 0) {
    const at::Tensor totals = bce_dice_totals(statistics);
    const auto stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES(statistics.scalar_type(), "bce_dice_loss_from_statistics_backward_cuda", [&] {
      bce_dice_gradient_kernel<scalar_t><<<cuda::grid_blocks(terms), kThreadsPerBlock, 0, stream>>>(
          grad.const_data_ptr<scalar_t>(), totals.const_data_ptr<double>(), statistics.const_data_ptr<scalar_t>(),
          terms, dice_weight, static_cast<scalar_t>(smooth), grad_statistics.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return grad_statistics;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, CUDA, m) {
  m.impl("soft_dice_statistics", &soft_dice_statistics_cuda);
  m.impl("_soft_dice_statistics_backward", &soft_dice_statistics_backward_cuda);
  m.impl("_soft_dice_loss_from_statistics", &soft_dice_loss_from_statistics_cuda);
  m.impl("_soft_dice_loss_from_statistics_backward", &soft_dice_loss_from_statistics_backward_cuda);
  m.impl("_bce_dice_loss_from_statistics", &bce_dice_loss_from_statistics_cuda);
  m.impl("_bce_dice_loss_from_statistics_backward", &bce_dice_loss_from_statistics_backward_cuda);
}

}  // namespace fastops
