// CPU kernels of lovasz_segments and its backward.
//
// Forward, in four passes with no per-class or per-image loop in Python:
//  1. Count the valid pixels of fixed chunks (an image and a run of pixels);
//     a prefix over the chunks gives each chunk's first position in its unit.
//  2. Each chunk writes, for every valid pixel and segment class, the sort key
//     of its error and its entry at (segment start + position), so every
//     segment is filled in increasing pixel order. Softmax-from-logits chunks
//     work on [C, kTile] tiles so the softmax runs along contiguous pixels.
//  3. Segments are sorted independently (in parallel) by an LSD radix sort
//     on the keys: linear in the segment length, stable, so equal errors keep
//     increasing pixel order, and passes whose byte is the same for every key
//     are skipped (errors in [0, 1] share their top bits).
//  4. One sweep per segment counts its foreground, then a second sweep
//     evaluates the Lovász gradient from exact integer counts and sums
//     error·gradient in double, the error decoded from its key.
//
// Backward: each segment's sweep recomputes the gradient and scatters
// w·g to its (pixel, class) in an accumulation-type buffer (every valid pair
// is in exactly one segment, so there are no conflicts); an elementwise pass
// then multiplies by the error's slope (and, from logits, applies the softmax
// Jacobian per pixel) and writes zeros for ignored pixels.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <type_traits>
#include <vector>

#include "common/poison.h"
#include "cpu/vector_math.h"
#include "ops/lovasz_math.h"
#include "ops/segmentation_losses.h"
#include "ops/soft_dice_math.h"

namespace fastops {
namespace {

using namespace lovasz;

constexpr int64_t kTile = 64;
constexpr int64_t kChunkPixels = 16384;

template <typename acc_t>
using key_type = std::conditional_t<std::is_same_v<acc_t, double>, uint64_t, uint32_t>;

struct Chunk {
  int64_t image, begin, end;
  int64_t first_position = 0;  // of its first valid pixel within its unit
};

struct SegmentLayout {
  std::vector<Chunk> chunks;
  std::vector<int64_t> valid_counts;  // per unit
  std::vector<int64_t> unit_bases;    // K · valid pixels of the units before
  int64_t segment_begin(const LovaszProblem& p, int64_t unit, int64_t k) const {
    return unit_bases[unit] + k * valid_counts[unit];
  }
};

SegmentLayout make_layout(const LovaszProblem& p, const int64_t* labels) {
  SegmentLayout layout;
  for (int64_t n = 0; n < p.batch; ++n) {
    for (int64_t s = 0; s < p.pixels; s += kChunkPixels) {
      layout.chunks.push_back({n, s, std::min(p.pixels, s + kChunkPixels)});
    }
  }
  std::vector<int64_t> chunk_valid(layout.chunks.size());
  at::parallel_for(0, static_cast<int64_t>(layout.chunks.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const Chunk& chunk = layout.chunks[i];
      const int64_t* label = labels + chunk.image * p.pixels;
      int64_t count = 0;
      for (int64_t s = chunk.begin; s < chunk.end; ++s) {
        count += p.is_valid(label[s]);
      }
      chunk_valid[i] = count;
    }
  });
  layout.valid_counts.assign(p.units, 0);
  for (size_t i = 0; i < layout.chunks.size(); ++i) {
    const int64_t unit = p.unit_of_image(layout.chunks[i].image);
    layout.chunks[i].first_position = layout.valid_counts[unit];
    layout.valid_counts[unit] += chunk_valid[i];
  }
  layout.unit_bases.assign(p.units, 0);
  for (int64_t u = 1; u < p.units; ++u) {
    layout.unit_bases[u] = layout.unit_bases[u - 1] + p.segment_classes * layout.valid_counts[u - 1];
  }
  return layout;
}

// Probabilities (kinds 0, 1) or logits (kind 2) of a tile of pixels, [C, kTile].
template <typename scalar_t, typename acc_t>
void load_predictions(const LovaszProblem& p, const scalar_t* input, int64_t n, int64_t s, int64_t count,
                      acc_t* tile) {
  for (int64_t c = 0; c < p.classes; ++c) {
    const scalar_t* row = input + (n * p.classes + c) * p.pixels + s;
    for (int64_t i = 0; i < count; ++i) {
      tile[c * kTile + i] = static_cast<acc_t>(row[i]);
    }
  }
  if (p.kind != kSoftmaxLogits) {
    return;
  }
  if (p.classes == 1) {
    std::array<acc_t, kTile> e;
    for (int64_t i = 0; i < count; ++i) {
      e[i] = -std::abs(tile[i]);
    }
    cpu::exp_inplace(e.data(), count);
    for (int64_t i = 0; i < count; ++i) {
      tile[i] = soft_dice::sigmoid_from_exp(tile[i], e[i]);
    }
    return;
  }
  std::array<acc_t, 2 * kTile> scratch;
  cpu::softmax_columns(tile, p.classes, kTile, count, scratch.data());
}

template <typename acc_t>
acc_t segment_error(const LovaszProblem& p, acc_t prediction, bool foreground) {
  return p.kind == kHinge ? hinge_error(prediction, foreground) : softmax_error(prediction, foreground);
}

template <typename scalar_t>
void fill_segments(const LovaszProblem& p, const SegmentLayout& layout, const scalar_t* input, const int64_t* labels,
                   key_type<at::opmath_type<scalar_t>>* keys, uint32_t* entries) {
  using acc_t = at::opmath_type<scalar_t>;
  at::parallel_for(0, static_cast<int64_t>(layout.chunks.size()), 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> tile(p.classes * kTile);
    for (int64_t i = begin; i < end; ++i) {
      const Chunk& chunk = layout.chunks[i];
      const int64_t unit = p.unit_of_image(chunk.image);
      const int64_t length = layout.valid_counts[unit];
      const int64_t* label = labels + chunk.image * p.pixels;
      int64_t position = layout.unit_bases[unit] + chunk.first_position;
      for (int64_t s = chunk.begin; s < chunk.end; s += kTile) {
        const int64_t count = std::min(kTile, chunk.end - s);
        load_predictions(p, input, chunk.image, s, count, tile.data());
        for (int64_t j = 0; j < count; ++j) {
          if (!p.is_valid(label[s + j])) {
            continue;
          }
          const int64_t pixel = chunk.image * p.pixels + s + j;
          for (int64_t k = 0; k < p.segment_classes; ++k) {
            const bool foreground = p.is_foreground(label[s + j], k);
            const acc_t prediction = tile[(p.classes == 1 ? 0 : k) * kTile + j];
            const int64_t at = position + k * length;
            keys[at] = descending_key(segment_error(p, prediction, foreground));
            entries[at] = pack_entry(pixel, foreground);
          }
          ++position;
        }
      }
    }
  });
}

// Stable LSD radix sort of (keys, values) by ascending key, one byte a pass.
template <typename key_t>
void radix_sort_pairs(key_t* keys, uint32_t* values, int64_t n, std::vector<key_t>& key_buffer,
                      std::vector<uint32_t>& value_buffer) {
  constexpr int kPasses = sizeof(key_t);
  if (n < 2) {
    return;
  }
  std::vector<std::array<int64_t, 256>> counts(kPasses);
  for (auto& c : counts) {
    c.fill(0);
  }
  for (int64_t i = 0; i < n; ++i) {
    const key_t key = keys[i];
    for (int pass = 0; pass < kPasses; ++pass) {
      ++counts[pass][(key >> (8 * pass)) & 0xff];
    }
  }
  key_buffer.resize(n);
  value_buffer.resize(n);
  key_t* source_keys = keys;
  uint32_t* source_values = values;
  key_t* target_keys = key_buffer.data();
  uint32_t* target_values = value_buffer.data();
  for (int pass = 0; pass < kPasses; ++pass) {
    auto& count = counts[pass];
    if (std::any_of(count.begin(), count.end(), [n](int64_t c) { return c == n; })) {
      continue;  // one digit for every key: the pass would not move anything
    }
    std::array<int64_t, 256> offset;
    int64_t running = 0;
    for (int digit = 0; digit < 256; ++digit) {
      offset[digit] = running;
      running += count[digit];
    }
    for (int64_t i = 0; i < n; ++i) {
      const int digit = (source_keys[i] >> (8 * pass)) & 0xff;
      const int64_t at = offset[digit]++;
      target_keys[at] = source_keys[i];
      target_values[at] = source_values[i];
    }
    std::swap(source_keys, target_keys);
    std::swap(source_values, target_values);
  }
  if (source_keys != keys) {
    std::copy(source_keys, source_keys + n, keys);
    std::copy(source_values, source_values + n, values);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lovasz_segments_cpu(
    const at::Tensor& input_, const at::Tensor& labels_, int64_t kind, std::optional<int64_t> ignore_index,
    bool per_image, int64_t foreground_class) {
  const LovaszProblem p =
      make_lovasz_problem("lovasz_segments", input_, labels_, kind, ignore_index, per_image, foreground_class);
  const at::Tensor input = input_.contiguous();
  const at::Tensor labels = labels_.contiguous();
  const int64_t segments = p.units * p.segment_classes;
  at::Tensor losses = at::zeros({p.units, p.segment_classes}, input.options().dtype(lovasz_loss_dtype(input)));
  at::Tensor foreground_counts = at::zeros({p.units, p.segment_classes}, labels.options());
  at::Tensor valid_counts = at::zeros({p.units}, labels.options());
  at::Tensor sorted_entries = at::empty({p.batch * p.pixels * p.segment_classes}, labels.options().dtype(at::kInt));
  if (sorted_entries.numel() == 0) {
    return {losses, foreground_counts, valid_counts, sorted_entries};
  }
  // Every segment's loss and count is written below.
  poison_if_enabled(losses);
  poison_if_enabled(foreground_counts);
  const SegmentLayout layout = make_layout(p, labels.const_data_ptr<int64_t>());
  std::copy(layout.valid_counts.begin(), layout.valid_counts.end(), valid_counts.data_ptr<int64_t>());
  uint32_t* entries = reinterpret_cast<uint32_t*>(sorted_entries.data_ptr<int32_t>());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "lovasz_segments_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using key_t = key_type<acc_t>;
    std::vector<key_t> keys(sorted_entries.numel());
    fill_segments(p, layout, input.const_data_ptr<scalar_t>(), labels.const_data_ptr<int64_t>(), keys.data(),
                  entries);
    const int64_t used = layout.unit_bases.back() + p.segment_classes * layout.valid_counts.back();
    std::fill(entries + used, entries + sorted_entries.numel(), kUnusedEntry);
    acc_t* loss = losses.data_ptr<acc_t>();
    int64_t* foreground = foreground_counts.data_ptr<int64_t>();
    at::parallel_for(0, segments, 1, [&](int64_t begin, int64_t end) {
      std::vector<key_t> key_buffer;
      std::vector<uint32_t> value_buffer;
      for (int64_t segment = begin; segment < end; ++segment) {
        const int64_t unit = segment / p.segment_classes, k = segment % p.segment_classes;
        const int64_t length = layout.valid_counts[unit];
        const int64_t start = layout.segment_begin(p, unit, k);
        radix_sort_pairs(keys.data() + start, entries + start, length, key_buffer, value_buffer);
        int64_t total = 0;
        for (int64_t r = 0; r < length; ++r) {
          total += entry_foreground(entries[start + r]);
        }
        double sum = 0;
        int64_t before = 0;
        for (int64_t r = 0; r < length; ++r) {
          const bool fg = entry_foreground(entries[start + r]);
          const double error = error_of_key(keys[start + r]);
          const double term = p.kind == kHinge ? hinge_loss_term(error) : error;
          sum += term * lovasz_gradient<double>(fg, before, r, total);
          before += fg;
        }
        loss[segment] = static_cast<acc_t>(sum);
        foreground[segment] = total;
      }
    });
  });
  return {losses, foreground_counts, valid_counts, sorted_entries};
}

at::Tensor lovasz_segments_backward_cpu(const at::Tensor& grad_losses, const at::Tensor& input_,
                                        const at::Tensor& labels_, const at::Tensor& foreground_counts_,
                                        const at::Tensor& valid_counts_, const at::Tensor& sorted_entries_,
                                        int64_t kind, std::optional<int64_t> ignore_index, bool per_image,
                                        int64_t foreground_class) {
  const char* op = "_lovasz_segments_backward";
  const LovaszProblem p = make_lovasz_problem(op, input_, labels_, kind, ignore_index, per_image, foreground_class);
  TORCH_CHECK(grad_losses.dim() == 2 && grad_losses.size(0) == p.units && grad_losses.size(1) == p.segment_classes,
              op, ": grad_losses must be [", p.units, ", ", p.segment_classes, "], got ", grad_losses.sizes());
  TORCH_CHECK(foreground_counts_.sizes() == grad_losses.sizes() && valid_counts_.dim() == 1 &&
                  valid_counts_.size(0) == p.units &&
                  sorted_entries_.numel() == p.batch * p.pixels * p.segment_classes,
              op, ": saved tensors do not match the problem");
  const at::Tensor input = input_.contiguous();
  const at::Tensor labels = labels_.contiguous();
  const at::Tensor foreground_counts = foreground_counts_.to(at::kLong).contiguous();
  const at::Tensor valid_counts = valid_counts_.to(at::kLong).contiguous();
  const at::Tensor sorted_entries = sorted_entries_.contiguous();
  at::Tensor grad_input = at::empty_like(input, at::MemoryFormat::Contiguous);
  if (input.numel() == 0) {
    return grad_input;
  }
  poison_if_enabled(grad_input);
  const int64_t* valid = valid_counts.const_data_ptr<int64_t>();
  std::vector<int64_t> unit_bases(p.units, 0);
  for (int64_t u = 1; u < p.units; ++u) {
    unit_bases[u] = unit_bases[u - 1] + p.segment_classes * valid[u - 1];
  }
  const uint32_t* entries = reinterpret_cast<const uint32_t*>(sorted_entries.const_data_ptr<int32_t>());
  const int64_t* foreground = foreground_counts.const_data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "lovasz_segments_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor grad = grad_losses.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    const acc_t* w = grad.const_data_ptr<acc_t>();
    // w·g per (pixel, segment class), laid out as the input.
    std::vector<acc_t> weighted(input.numel());
    const int64_t segments = p.units * p.segment_classes;
    at::parallel_for(0, segments, 1, [&](int64_t begin, int64_t end) {
      for (int64_t segment = begin; segment < end; ++segment) {
        const int64_t unit = segment / p.segment_classes, k = segment % p.segment_classes;
        const int64_t length = valid[unit];
        const int64_t start = unit_bases[unit] + k * length;
        const int64_t total = foreground[segment];
        int64_t before = 0;
        for (int64_t r = 0; r < length; ++r) {
          const uint32_t entry = entries[start + r];
          const bool fg = entry_foreground(entry);
          const int64_t pixel = entry_pixel(entry);
          const int64_t n = pixel / p.pixels, s = pixel % p.pixels;
          weighted[(n * p.classes + k) * p.pixels + s] =
              w[segment] * static_cast<acc_t>(lovasz_gradient<double>(fg, before, r, total));
          before += fg;
        }
      }
    });
    const scalar_t* x = input.const_data_ptr<scalar_t>();
    const int64_t* label = labels.const_data_ptr<int64_t>();
    scalar_t* out = grad_input.data_ptr<scalar_t>();
    const int64_t tiles_per_image = (p.pixels + kTile - 1) / kTile;
    at::parallel_for(0, p.batch * tiles_per_image, 16, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> tile(p.classes * kTile);
      std::array<acc_t, kTile> dot;
      for (int64_t t = begin; t < end; ++t) {
        const int64_t n = t / tiles_per_image, s = (t % tiles_per_image) * kTile;
        const int64_t count = std::min(kTile, p.pixels - s);
        load_predictions(p, x, n, s, count, tile.data());
        std::fill(dot.begin(), dot.begin() + count, acc_t(0));
        for (int64_t c = 0; c < p.classes; ++c) {
          const int64_t row = (n * p.classes + c) * p.pixels + s;
          for (int64_t j = 0; j < count; ++j) {
            const int64_t l = label[n * p.pixels + s + j];
            if (!p.is_valid(l)) {
              continue;
            }
            const bool fg = p.is_foreground(l, c);
            const acc_t prediction = tile[c * kTile + j];
            const acc_t slope =
                p.kind == kHinge ? hinge_error_slope(prediction, fg) : softmax_error_slope(prediction, fg);
            weighted[row + j] *= slope;
            dot[j] += prediction * weighted[row + j];
          }
        }
        for (int64_t c = 0; c < p.classes; ++c) {
          const int64_t row = (n * p.classes + c) * p.pixels + s;
          for (int64_t j = 0; j < count; ++j) {
            const int64_t l = label[n * p.pixels + s + j];
            acc_t value = 0;
            if (p.is_valid(l)) {
              value = weighted[row + j];
              if (p.kind == kSoftmaxLogits) {
                const acc_t prediction = tile[c * kTile + j];
                value = p.classes == 1 ? value * soft_dice::sigmoid_slope(static_cast<acc_t>(x[row + j]))
                                       : prediction * (value - dot[j]);
              }
            }
            out[row + j] = static_cast<scalar_t>(value);
          }
        }
      }
    });
  });
  return grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, CPU, m) {
  m.impl("lovasz_segments", &lovasz_segments_cpu);
  m.impl("_lovasz_segments_backward", &lovasz_segments_backward_cpu);
}

}  // namespace fastops
