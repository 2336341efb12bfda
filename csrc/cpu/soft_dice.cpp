// CPU kernels of soft_dice_statistics and its backward.
//
// Forward: the elements are cut into fixed chunks (an image and a run of
// pixels), independent of the thread count; each chunk sums its six
// statistics per class in the accumulation type, and the chunks are added in
// order, so the result is the same on any number of threads. Multiclass
// chunks work on tiles of kTile pixels: the tile's logits are loaded class by
// class into a [C, kTile] buffer, so the softmax over classes runs along the
// contiguous pixel axis (vectorisable), and the one-hot target is a compare
// per element, never a tensor.
//
// Backward: the same tiles, elementwise; the softmax Jacobian needs the
// per-pixel Σ_k p_k·dp_k, which the tile holds.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <vector>

#include "common/cpu_multiversion.h"
#include "ops/segmentation_losses.h"
#include "ops/soft_dice_math.h"

namespace fastops {
namespace {

using namespace soft_dice;

constexpr int64_t kTile = 64;
constexpr int64_t kChunkPixels = 8192;

struct Chunk {
  int64_t image, begin, end;
};

std::vector<Chunk> make_chunks(const SoftDiceProblem& p) {
  std::vector<Chunk> chunks;
  for (int64_t n = 0; n < p.batch; ++n) {
    for (int64_t s = 0; s < p.pixels; s += kChunkPixels) {
      chunks.push_back({n, s, std::min(p.pixels, s + kChunkPixels)});
    }
  }
  return chunks;
}

// Softmax (or the identity) of a tile: logits [C, count] (row stride kTile)
// become probabilities in place.
template <typename acc_t>
FASTOPS_CPU_MULTIVERSION void tile_softmax(acc_t* tile, int64_t classes, int64_t count) {
  std::array<acc_t, kTile> maximum, total;
  std::copy(tile, tile + count, maximum.begin());
  for (int64_t c = 1; c < classes; ++c) {
    const acc_t* row = tile + c * kTile;
    for (int64_t i = 0; i < count; ++i) {
      maximum[i] = std::max(maximum[i], row[i]);
    }
  }
  std::fill(total.begin(), total.begin() + count, acc_t(0));
  for (int64_t c = 0; c < classes; ++c) {
    acc_t* row = tile + c * kTile;
    for (int64_t i = 0; i < count; ++i) {
      row[i] = std::exp(row[i] - maximum[i]);
      total[i] += row[i];
    }
  }
  for (int64_t i = 0; i < count; ++i) {
    total[i] = acc_t(1) / total[i];
  }
  for (int64_t c = 0; c < classes; ++c) {
    acc_t* row = tile + c * kTile;
    for (int64_t i = 0; i < count; ++i) {
      row[i] *= total[i];
    }
  }
}

template <typename scalar_t, typename acc_t>
void load_tile(const SoftDiceProblem& p, const scalar_t* input, int64_t n, int64_t s, int64_t count, acc_t* tile) {
  for (int64_t c = 0; c < p.classes; ++c) {
    const scalar_t* row = input + (n * p.classes + c) * p.pixels + s;
    for (int64_t i = 0; i < count; ++i) {
      tile[c * kTile + i] = static_cast<acc_t>(row[i]);
    }
  }
}

// Adds one chunk's statistics to `sums` [C, 6].
template <typename scalar_t>
void multiclass_chunk_statistics(const SoftDiceProblem& p, const scalar_t* input, const int64_t* labels,
                                 const Chunk& chunk, at::opmath_type<scalar_t>* sums) {
  using acc_t = at::opmath_type<scalar_t>;
  std::vector<acc_t> tile(p.classes * kTile);
  std::array<bool, kTile> valid;
  for (int64_t s = chunk.begin; s < chunk.end; s += kTile) {
    const int64_t count = std::min(kTile, chunk.end - s);
    const int64_t* label = labels + chunk.image * p.pixels + s;
    load_tile(p, input, chunk.image, s, count, tile.data());
    if (p.from_logits) {
      tile_softmax(tile.data(), p.classes, count);
    }
    for (int64_t i = 0; i < count; ++i) {
      valid[i] = label_is_valid(label[i], p.has_ignore, p.ignore_index);
    }
    for (int64_t c = 0; c < p.classes; ++c) {
      const acc_t* prob = tile.data() + c * kTile;
      acc_t sp = 0, st = 0, spt = 0, sd = 0, sn = 0;
      for (int64_t i = 0; i < count; ++i) {
        if (!valid[i]) {
          continue;
        }
        const acc_t t = label[i] == c ? acc_t(1) : acc_t(0);
        sp += prob[i];
        st += t;
        spt += prob[i] * t;
        sd += std::abs(prob[i] - t);
        sn += 1;
      }
      acc_t* out = sums + c * kStatistics;
      out[kPredictionSum] += sp;
      out[kTargetSum] += st;
      out[kProductSum] += spt;
      out[kAbsoluteDifferenceSum] += sd;
      out[kValidCount] += sn;
    }
  }
}

template <typename scalar_t>
void multilabel_chunk_statistics(const SoftDiceProblem& p, const scalar_t* input, const scalar_t* target,
                                 const Chunk& chunk, at::opmath_type<scalar_t>* sums) {
  using acc_t = at::opmath_type<scalar_t>;
  const double ignore_value = static_cast<double>(p.ignore_index);
  for (int64_t c = 0; c < p.classes; ++c) {
    const int64_t row = (chunk.image * p.classes + c) * p.pixels;
    acc_t sp = 0, st = 0, spt = 0, sd = 0, sb = 0, sn = 0;
    for (int64_t s = chunk.begin; s < chunk.end; ++s) {
      const acc_t t = static_cast<acc_t>(target[row + s]);
      if (!target_is_valid(t, p.has_ignore, ignore_value)) {
        continue;
      }
      const acc_t x = static_cast<acc_t>(input[row + s]);
      const acc_t prob = p.from_logits ? sigmoid(x) : x;
      sp += prob;
      st += t;
      spt += prob * t;
      sd += std::abs(prob - t);
      if (p.with_bce) {
        sb += bce_with_logits(x, t);
      }
      sn += 1;
    }
    acc_t* out = sums + c * kStatistics;
    out[kPredictionSum] += sp;
    out[kTargetSum] += st;
    out[kProductSum] += spt;
    out[kAbsoluteDifferenceSum] += sd;
    out[kBceSum] += sb;
    out[kValidCount] += sn;
  }
}

at::Tensor soft_dice_statistics_cpu(const at::Tensor& input_, const at::Tensor& target_, bool multiclass,
                                   bool from_logits, std::optional<int64_t> ignore_index, bool per_image,
                                   bool with_bce) {
  const SoftDiceProblem p = make_soft_dice_problem("soft_dice_statistics", input_, target_, multiclass, from_logits,
                                                   ignore_index, per_image, with_bce);
  const at::Tensor input = input_.contiguous();
  const at::Tensor target = target_.contiguous();
  at::Tensor statistics =
      at::zeros({p.units, p.classes, kStatistics}, input.options().dtype(soft_dice_statistics_dtype(input)));
  if (input.numel() == 0) {
    return statistics;
  }
  const std::vector<Chunk> chunks = make_chunks(p);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "soft_dice_statistics_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t width = p.classes * kStatistics;
    std::vector<acc_t> partial(chunks.size() * width, acc_t(0));
    const scalar_t* x = input.const_data_ptr<scalar_t>();
    at::parallel_for(0, static_cast<int64_t>(chunks.size()), 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        acc_t* sums = partial.data() + i * width;
        if (p.multiclass) {
          multiclass_chunk_statistics(p, x, target.const_data_ptr<int64_t>(), chunks[i], sums);
        } else {
          multilabel_chunk_statistics(p, x, target.const_data_ptr<scalar_t>(), chunks[i], sums);
        }
      }
    });
    // Chunks in order, in double, whatever the thread count.
    std::vector<double> total(p.units * width, 0.0);
    for (size_t i = 0; i < chunks.size(); ++i) {
      double* out = total.data() + (per_image ? chunks[i].image : 0) * width;
      for (int64_t j = 0; j < width; ++j) {
        out[j] += partial[i * width + j];
      }
    }
    acc_t* result = statistics.data_ptr<acc_t>();
    std::copy(total.begin(), total.end(), result);
  });
  return statistics;
}

template <typename scalar_t>
void multiclass_chunk_backward(const SoftDiceProblem& p, const at::opmath_type<scalar_t>* grad, const scalar_t* input,
                               const int64_t* labels, const Chunk& chunk, scalar_t* grad_input) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t* g = grad + (p.units > 1 ? chunk.image : 0) * p.classes * kStatistics;
  std::vector<acc_t> tile(p.classes * kTile), slope(p.classes * kTile);
  std::array<acc_t, kTile> dot;
  for (int64_t s = chunk.begin; s < chunk.end; s += kTile) {
    const int64_t count = std::min(kTile, chunk.end - s);
    const int64_t* label = labels + chunk.image * p.pixels + s;
    load_tile(p, input, chunk.image, s, count, tile.data());
    if (p.from_logits) {
      tile_softmax(tile.data(), p.classes, count);
    }
    std::fill(dot.begin(), dot.begin() + count, acc_t(0));
    for (int64_t c = 0; c < p.classes; ++c) {
      const acc_t* prob = tile.data() + c * kTile;
      acc_t* dp = slope.data() + c * kTile;
      const acc_t* gc = g + c * kStatistics;
      for (int64_t i = 0; i < count; ++i) {
        dp[i] = prediction_gradient(gc, prob[i], label[i] == c ? acc_t(1) : acc_t(0));
        dot[i] += prob[i] * dp[i];
      }
    }
    for (int64_t c = 0; c < p.classes; ++c) {
      const acc_t* prob = tile.data() + c * kTile;
      const acc_t* dp = slope.data() + c * kTile;
      scalar_t* out = grad_input + (chunk.image * p.classes + c) * p.pixels + s;
      for (int64_t i = 0; i < count; ++i) {
        const bool valid = label_is_valid(label[i], p.has_ignore, p.ignore_index);
        const acc_t value = p.from_logits ? prob[i] * (dp[i] - dot[i]) : dp[i];
        out[i] = static_cast<scalar_t>(valid ? value : acc_t(0));
      }
    }
  }
}

template <typename scalar_t>
void multilabel_chunk_backward(const SoftDiceProblem& p, const at::opmath_type<scalar_t>* grad, const scalar_t* input,
                               const scalar_t* target, const Chunk& chunk, scalar_t* grad_input) {
  using acc_t = at::opmath_type<scalar_t>;
  const double ignore_value = static_cast<double>(p.ignore_index);
  for (int64_t c = 0; c < p.classes; ++c) {
    const acc_t* g = grad + ((p.units > 1 ? chunk.image : 0) * p.classes + c) * kStatistics;
    const int64_t row = (chunk.image * p.classes + c) * p.pixels;
    for (int64_t s = chunk.begin; s < chunk.end; ++s) {
      const acc_t t = static_cast<acc_t>(target[row + s]);
      const acc_t x = static_cast<acc_t>(input[row + s]);
      acc_t value = 0;
      if (target_is_valid(t, p.has_ignore, ignore_value)) {
        if (p.from_logits) {
          value = prediction_gradient(g, sigmoid(x), t) * sigmoid_slope(x) + g[kBceSum] * bce_with_logits_slope(x, t);
        } else {
          value = prediction_gradient(g, x, t);
        }
      }
      grad_input[row + s] = static_cast<scalar_t>(value);
    }
  }
}

at::Tensor soft_dice_statistics_backward_cpu(const at::Tensor& grad_statistics, const at::Tensor& input_,
                                            const at::Tensor& target_, bool multiclass, bool from_logits,
                                            std::optional<int64_t> ignore_index, bool per_image) {
  const SoftDiceProblem p = make_soft_dice_problem("_soft_dice_statistics_backward", input_, target_, multiclass,
                                                   from_logits, ignore_index, per_image, /*with_bce=*/false);
  TORCH_CHECK(grad_statistics.dim() == 3 && grad_statistics.size(0) == p.units &&
                  grad_statistics.size(1) == p.classes && grad_statistics.size(2) == kStatistics,
              "_soft_dice_statistics_backward: grad_statistics must be [", p.units, ", ", p.classes, ", 6], got ",
              grad_statistics.sizes());
  const at::Tensor input = input_.contiguous();
  const at::Tensor target = target_.contiguous();
  at::Tensor grad_input = at::empty_like(input, at::MemoryFormat::Contiguous);
  if (input.numel() == 0) {
    return grad_input;
  }
  const std::vector<Chunk> chunks = make_chunks(p);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "soft_dice_statistics_backward_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const at::Tensor grad = grad_statistics.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
        const acc_t* g = grad.const_data_ptr<acc_t>();
        const scalar_t* x = input.const_data_ptr<scalar_t>();
        scalar_t* out = grad_input.data_ptr<scalar_t>();
        at::parallel_for(0, static_cast<int64_t>(chunks.size()), 1, [&](int64_t begin, int64_t end) {
          for (int64_t i = begin; i < end; ++i) {
            if (p.multiclass) {
              multiclass_chunk_backward(p, g, x, target.const_data_ptr<int64_t>(), chunks[i], out);
            } else {
              multilabel_chunk_backward(p, g, x, target.const_data_ptr<scalar_t>(), chunks[i], out);
            }
          }
        });
      });
  return grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, CPU, m) {
  m.impl("soft_dice_statistics", &soft_dice_statistics_cpu);
  m.impl("_soft_dice_statistics_backward", &soft_dice_statistics_backward_cpu);
}

}  // namespace fastops
