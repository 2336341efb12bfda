// CUDA kernels of nms / batched_nms / nms_padded, soft_nms and box_iou.
//
// Suppression (boxes already in score order, grouped by class for batched_nms):
// 1. mask_kernel: 64x64 tiles of the upper triangle; bit i of word
//    mask[row][column block] says box `row` suppresses box `column block * 64 + i`
//    (same class, later in the order, IoU > threshold). With classes, tiles
//    past the last box of the row block's last class are skipped: the work is
//    the sum over classes of n_c^2 / 2, not N^2 / 2, and no coordinate offset
//    is involved (torchvision's trick breaks in float16 and with negative
//    coordinates).
// 2. scan_kernel, one block: walks the 64-box blocks in order. The 64 words of
//    the diagonal tile go to shared memory and one thread resolves the block's
//    kept set; then all threads OR the kept rows' words into the `removed`
//    words of later blocks. A synchronisation per 64 boxes, not per kept box
//    (torchvision's gather_keep_from_mask), and a block that is fully removed
//    costs nothing. It writes the kept positions and their count on the
//    device and stops at max_output, so nms_padded never synchronises.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cmath>
#include <tuple>

#include "cuda/launch.cuh"
#include "ops/box_iou_math.h"
#include "ops/nms.h"

namespace fastops {
namespace {

constexpr int kBlockBoxes = 64;  // boxes per tile side: one 64-bit word per row and tile
constexpr int kScanThreads = 256;

// For each block of 64 rows: the last column block holding a box of the
// class of the block's last row (classes ascending), the end of its tiles.
__global__ void class_end_kernel(const int64_t* __restrict__ classes, int64_t n, int64_t col_blocks,
                                 int64_t* __restrict__ col_end) {
  const int64_t b = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (b >= col_blocks) {
    return;
  }
  const int64_t row = min(b * kBlockBoxes + kBlockBoxes - 1, n - 1);
  const int64_t cls = classes[row];
  int64_t lo = row, hi = n;  // first index in [lo, hi) whose class exceeds cls
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (classes[mid] > cls) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  col_end[b] = (lo - 1) / kBlockBoxes;
}

template <typename scalar_t, typename acc_t, bool kClasses>
__global__ void __launch_bounds__(kBlockBoxes)
    mask_kernel(const scalar_t* __restrict__ boxes, const int64_t* __restrict__ classes,
                const int64_t* __restrict__ col_end, int64_t n, int64_t col_blocks, acc_t threshold,
                unsigned long long* __restrict__ mask) {
  const int64_t row_block = blockIdx.y;
  const int64_t col_block = blockIdx.x;
  if (col_block < row_block || (kClasses && col_block > col_end[row_block])) {
    return;
  }
  const int rows = static_cast<int>(min(n - row_block * kBlockBoxes, int64_t{kBlockBoxes}));
  const int cols = static_cast<int>(min(n - col_block * kBlockBoxes, int64_t{kBlockBoxes}));
  __shared__ Box<acc_t> col_box[kBlockBoxes];
  __shared__ acc_t col_area[kBlockBoxes];
  __shared__ int64_t col_class[kBlockBoxes];
  if (threadIdx.x < cols) {
    const int64_t col = col_block * kBlockBoxes + threadIdx.x;
    col_box[threadIdx.x] = load_box<acc_t>(boxes + col * 4);
    col_area[threadIdx.x] = col_box[threadIdx.x].area();
    if (kClasses) {
      col_class[threadIdx.x] = classes[col];
    }
  }
  __syncthreads();
  if (threadIdx.x >= rows) {
    return;
  }
  const int64_t row = row_block * kBlockBoxes + threadIdx.x;
  const Box<acc_t> box = load_box<acc_t>(boxes + row * 4);
  const acc_t area = box.area();
  const int64_t cls = kClasses ? classes[row] : 0;
  unsigned long long bits = 0;
  for (int i = row_block == col_block ? threadIdx.x + 1 : 0; i < cols; ++i) {
    if ((!kClasses || col_class[i] == cls) && suppresses(box_iou(box, area, col_box[i], col_area[i]), threshold)) {
      bits |= 1ULL << i;
    }
  }
  mask[row * col_blocks + col_block] = bits;
}

__global__ void __launch_bounds__(kScanThreads)
    scan_kernel(const unsigned long long* __restrict__ mask, const int64_t* __restrict__ col_end, int64_t n,
                int64_t col_blocks, int64_t max_output, unsigned long long* __restrict__ removed,
                int64_t* __restrict__ positions, int64_t* __restrict__ count_out) {
  __shared__ unsigned long long diagonal[kBlockBoxes];
  __shared__ unsigned long long kept_bits;
  int64_t count = 0;
  for (int64_t b = 0; b < col_blocks && count < max_output; ++b) {
    const int rows = static_cast<int>(min(n - b * kBlockBoxes, int64_t{kBlockBoxes}));
    if (threadIdx.x < rows) {
      diagonal[threadIdx.x] = mask[(b * kBlockBoxes + threadIdx.x) * col_blocks + b];
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      unsigned long long gone = removed[b];
      unsigned long long kept = 0;
      for (int r = 0; r < rows && count + __popcll(kept) < max_output; ++r) {
        if (!((gone >> r) & 1ULL)) {
          kept |= 1ULL << r;
          gone |= diagonal[r];
        }
      }
      kept_bits = kept;
    }
    __syncthreads();
    const unsigned long long kept = kept_bits;
    if (threadIdx.x < kBlockBoxes && ((kept >> threadIdx.x) & 1ULL)) {
      const unsigned long long below = threadIdx.x == 0 ? 0ULL : kept & ((1ULL << threadIdx.x) - 1ULL);
      positions[count + __popcll(below)] = b * kBlockBoxes + threadIdx.x;
    }
    if (kept != 0) {
      const int64_t last = col_end != nullptr ? col_end[b] : col_blocks - 1;
      for (int64_t j = b + 1 + threadIdx.x; j <= last; j += blockDim.x) {
        unsigned long long word = 0;
        for (unsigned long long rest = kept; rest != 0; rest &= rest - 1) {
          const int r = __ffsll(static_cast<long long>(rest)) - 1;
          word |= mask[(b * kBlockBoxes + r) * col_blocks + j];
        }
        removed[j] |= word;
      }
    }
    count += __popcll(kept);
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    *count_out = count;
  }
}

std::tuple<at::Tensor, at::Tensor> nms_sorted_cuda(const at::Tensor& boxes, const std::optional<at::Tensor>& classes,
                                                   double iou_threshold, int64_t max_output) {
  const c10::cuda::CUDAGuard device_guard(boxes.device());
  const auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t n = boxes.size(0);
  const int64_t col_blocks = (n + kBlockBoxes - 1) / kBlockBoxes;
  TORCH_CHECK(col_blocks <= 65535, "nms: at most ", 65535 * kBlockBoxes, " boxes per call, got ", n);
  const auto long_options = boxes.options().dtype(at::kLong);
  // N x ceil(N / 64) words: 5 GB at 200k boxes. Only the words the scan reads are written.
  at::Tensor mask = at::empty({n * col_blocks}, long_options);
  auto* mask_words = reinterpret_cast<unsigned long long*>(mask.data_ptr<int64_t>());
  at::Tensor col_end;
  if (classes) {
    col_end = at::empty({col_blocks}, long_options);
    class_end_kernel<<<(col_blocks + 255) / 256, 256, 0, stream>>>(classes->const_data_ptr<int64_t>(), n, col_blocks,
                                                                     col_end.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const dim3 grid(static_cast<unsigned int>(col_blocks), static_cast<unsigned int>(col_blocks));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "nms", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto threshold = static_cast<acc_t>(iou_threshold);
    if (classes) {
      mask_kernel<scalar_t, acc_t, true><<<grid, kBlockBoxes, 0, stream>>>(
          boxes.const_data_ptr<scalar_t>(), classes->const_data_ptr<int64_t>(), col_end.const_data_ptr<int64_t>(), n,
          col_blocks, threshold, mask_words);
    } else {
      mask_kernel<scalar_t, acc_t, false><<<grid, kBlockBoxes, 0, stream>>>(
          boxes.const_data_ptr<scalar_t>(), nullptr, nullptr, n, col_blocks, threshold, mask_words);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  at::Tensor removed = at::zeros({col_blocks}, long_options);
  at::Tensor positions = at::full({max_output}, -1, long_options);
  at::Tensor count = at::zeros({}, long_options);
  scan_kernel<<<1, kScanThreads, 0, stream>>>(mask_words, classes ? col_end.const_data_ptr<int64_t>() : nullptr, n,
                                              col_blocks, max_output,
                                              reinterpret_cast<unsigned long long*>(removed.data_ptr<int64_t>()),
                                              positions.data_ptr<int64_t>(), count.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {positions, count};
}

at::Tensor nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  const c10::cuda::CUDAGuard device_guard(boxes.device());
  return nms_with(&nms_sorted_cuda, boxes, scores, iou_threshold);
}

at::Tensor batched_nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                            double iou_threshold) {
  const c10::cuda::CUDAGuard device_guard(boxes.device());
  return batched_nms_with(&nms_sorted_cuda, boxes, scores, idxs, iou_threshold);
}

std::tuple<at::Tensor, at::Tensor> nms_padded_cuda(const at::Tensor& boxes, const at::Tensor& scores,
                                                   const std::optional<at::Tensor>& idxs, double iou_threshold,
                                                   int64_t max_output) {
  const c10::cuda::CUDAGuard device_guard(boxes.device());
  return nms_padded_with(&nms_sorted_cuda, boxes, scores, idxs, iou_threshold, max_output);
}

// Soft-NMS in one block: each round finds the highest alive score (NaN first,
// ties to the lower index) with a block reduction, keeps it and decays the
// others in parallel. Inherently sequential in the kept boxes.
constexpr int kSoftThreads = 1024;

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kSoftThreads)
    soft_nms_kernel(const scalar_t* __restrict__ boxes, acc_t* __restrict__ score, uint8_t* __restrict__ alive,
                    int64_t n, acc_t iou_threshold, acc_t sigma, acc_t score_threshold, bool linear,
                    int64_t* __restrict__ kept, acc_t* __restrict__ kept_score, int64_t* __restrict__ count_out) {
  __shared__ acc_t best_score[kSoftThreads / 32];
  __shared__ int64_t best_index[kSoftThreads / 32];
  __shared__ int64_t chosen;
  const auto better = [](acc_t a, int64_t ia, acc_t b, int64_t ib) {
    // Is (a, ia) a better pick than (b, ib)? Invalid picks have index -1.
    if (ia < 0) return false;
    if (ib < 0) return true;
    const bool a_nan = a != a, b_nan = b != b;
    if (a_nan != b_nan) return a_nan;
    if (!a_nan && a != b) return a > b;
    return ia < ib;
  };
  int64_t count = 0;
  for (;;) {
    acc_t mine = 0;
    int64_t mine_index = -1;
    for (int64_t k = threadIdx.x; k < n; k += blockDim.x) {
      if (alive[k] && better(score[k], k, mine, mine_index)) {
        mine = score[k];
        mine_index = k;
      }
    }
    for (int offset = 16; offset > 0; offset /= 2) {
      const acc_t other = __shfl_down_sync(0xffffffffu, mine, offset);
      const int64_t other_index = __shfl_down_sync(0xffffffffu, mine_index, offset);
      if (better(other, other_index, mine, mine_index)) {
        mine = other;
        mine_index = other_index;
      }
    }
    if (threadIdx.x % 32 == 0) {
      best_score[threadIdx.x / 32] = mine;
      best_index[threadIdx.x / 32] = mine_index;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      acc_t top = 0;
      int64_t top_index = -1;
      for (int w = 0; w < kSoftThreads / 32; ++w) {
        if (better(best_score[w], best_index[w], top, top_index)) {
          top = best_score[w];
          top_index = best_index[w];
        }
      }
      if (top_index >= 0 && top < score_threshold) {
        top_index = -1;
      }
      if (top_index >= 0) {
        alive[top_index] = 0;
        kept[count] = top_index;
        kept_score[count] = top;
      }
      chosen = top_index;
    }
    __syncthreads();
    const int64_t i = chosen;
    if (i < 0) {
      break;
    }
    ++count;
    const Box<acc_t> box = load_box<acc_t>(boxes + i * 4);
    for (int64_t k = threadIdx.x; k < n; k += blockDim.x) {
      if (alive[k]) {
        const acc_t iou = box_iou(box, load_box<acc_t>(boxes + k * 4));
        score[k] *= linear ? (iou > iou_threshold ? acc_t(1) - iou : acc_t(1)) : exp(-(iou * iou) / sigma);
      }
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    *count_out = count;
  }
}

std::tuple<at::Tensor, at::Tensor> soft_nms_cuda(const at::Tensor& boxes_in, const at::Tensor& scores_in,
                                                 double iou_threshold, double sigma, double score_threshold,
                                                 int64_t method) {
  const c10::cuda::CUDAGuard device_guard(boxes_in.device());
  check_nms_arguments("soft_nms", boxes_in, scores_in, std::nullopt, iou_threshold);
  const auto stream = at::cuda::getCurrentCUDAStream();
  const at::Tensor boxes = boxes_in.contiguous();
  const int64_t n = boxes.size(0);
  const auto long_options = boxes.options().dtype(at::kLong);
  at::Tensor kept = at::empty({n}, long_options);
  at::Tensor count = at::zeros({}, long_options);
  at::Tensor kept_scores;
  if (n > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "soft_nms", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      at::Tensor score = scores_in.to(c10::CppTypeToScalarType<acc_t>::value).contiguous().clone();
      at::Tensor alive = at::ones({n}, boxes.options().dtype(at::kByte));
      kept_scores = at::empty({n}, score.options());
      soft_nms_kernel<scalar_t, acc_t><<<1, kSoftThreads, 0, stream>>>(
          boxes.const_data_ptr<scalar_t>(), score.data_ptr<acc_t>(), alive.data_ptr<uint8_t>(), n,
          static_cast<acc_t>(iou_threshold), static_cast<acc_t>(sigma), static_cast<acc_t>(score_threshold),
          static_cast<SoftNmsMethod>(method) == SoftNmsMethod::kLinear, kept.data_ptr<int64_t>(),
          kept_scores.data_ptr<acc_t>(), count.data_ptr<int64_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  } else {
    kept_scores = at::empty({0}, scores_in.options());
  }
  const int64_t k = count.item<int64_t>();
  return {kept.narrow(0, 0, k).clone(), kept_scores.narrow(0, 0, k).to(scores_in.scalar_type())};
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(cuda::kThreadsPerBlock)
    box_iou_kernel(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b, int64_t n, int64_t m,
                   scalar_t* __restrict__ out) {
  for (int64_t e = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; e < n * m; e += int64_t{gridDim.x} * blockDim.x) {
    const int64_t i = e / m;
    const int64_t j = e - i * m;
    out[e] = static_cast<scalar_t>(box_iou(load_box<acc_t>(a + i * 4), load_box<acc_t>(b + j * 4)));
  }
}

at::Tensor box_iou_cuda(const at::Tensor& boxes1_in, const at::Tensor& boxes2_in) {
  const c10::cuda::CUDAGuard device_guard(boxes1_in.device());
  check_boxes("box_iou", "boxes1", boxes1_in);
  check_boxes("box_iou", "boxes2", boxes2_in);
  TORCH_CHECK(boxes1_in.scalar_type() == boxes2_in.scalar_type(), "box_iou: boxes1 and boxes2 must have one dtype");
  TORCH_CHECK(boxes1_in.device() == boxes2_in.device(), "box_iou: boxes1 and boxes2 must be on one device");
  const at::Tensor boxes1 = boxes1_in.contiguous();
  const at::Tensor boxes2 = boxes2_in.contiguous();
  at::Tensor out = at::empty({boxes1.size(0), boxes2.size(0)}, boxes1.options());
  if (out.numel() == 0) {
    return out;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes1.scalar_type(), "box_iou", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    box_iou_kernel<scalar_t, acc_t>
        <<<cuda::grid_blocks(out.numel()), cuda::kThreadsPerBlock, 0, at::cuda::getCurrentCUDAStream()>>>(
            boxes1.const_data_ptr<scalar_t>(), boxes2.const_data_ptr<scalar_t>(), boxes1.size(0), boxes2.size(0),
            out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, CUDA, m) {
  m.impl("nms", &nms_cuda);
  m.impl("batched_nms", &batched_nms_cuda);
  m.impl("nms_padded", &nms_padded_cuda);
  m.impl("soft_nms", &soft_nms_cuda);
  m.impl("box_iou", &box_iou_cuda);
}

}  // namespace fastops
