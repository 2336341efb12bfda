// CPU kernels of nms / batched_nms / nms_padded, soft_nms and box_iou.
//
// Suppression runs greedily per class on the boxes in score order, held as
// arrays of coordinates and areas (in acc_t) so that comparing a kept box with
// every later candidate is one vectorised loop (AVX2 clone). Suppressed
// candidates are only flagged; when more than half of the remaining ones are,
// the arrays are compacted, so the work tracks the candidates still alive, as
// in torchvision's loop, without its per-pair branches. Classes run in
// parallel.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

#include "common/cpu_multiversion.h"
#include "ops/box_iou_math.h"
#include "ops/nms.h"

namespace fastops {
namespace {

// Candidates of one class in score order, structure-of-arrays.
template <typename acc_t>
struct Candidates {
  std::vector<acc_t> x1, y1, x2, y2, area;
  std::vector<int64_t> position;  // in the sorted order
  std::vector<uint8_t> dead;

  template <typename scalar_t>
  void load(const scalar_t* boxes, int64_t begin, int64_t end) {
    const int64_t n = end - begin;
    for (auto* v : {&x1, &y1, &x2, &y2, &area}) {
      v->resize(n);
    }
    position.resize(n);
    dead.assign(n, 0);
    for (int64_t k = 0; k < n; ++k) {
      const Box<acc_t> box = load_box<acc_t>(boxes + (begin + k) * 4);
      x1[k] = box.x1;
      y1[k] = box.y1;
      x2[k] = box.x2;
      y2[k] = box.y2;
      area[k] = box.area();
      position[k] = begin + k;
    }
  }

  // Keeps [from, size) without the dead ones.
  void compact(int64_t from) {
    int64_t to = from;
    for (int64_t k = from; k < static_cast<int64_t>(dead.size()); ++k) {
      if (!dead[k]) {
        x1[to] = x1[k];
        y1[to] = y1[k];
        x2[to] = x2[k];
        y2[to] = y2[k];
        area[to] = area[k];
        position[to] = position[k];
        dead[to] = 0;
        ++to;
      }
    }
    for (auto* v : {&x1, &y1, &x2, &y2, &area}) {
      v->resize(to);
    }
    position.resize(to);
    dead.resize(to);
  }
};

// Flags the candidates in [begin, end) that `kept` suppresses; returns how
// many were alive before.
template <typename acc_t>
FASTOPS_CPU_MULTIVERSION int64_t suppress_by(const Box<acc_t> kept, acc_t kept_area, const acc_t* __restrict__ x1,
                                             const acc_t* __restrict__ y1, const acc_t* __restrict__ x2,
                                             const acc_t* __restrict__ y2, const acc_t* __restrict__ area,
                                             uint8_t* __restrict__ dead, int64_t begin, int64_t end, acc_t threshold) {
  int64_t newly_dead = 0;
  for (int64_t k = begin; k < end; ++k) {
    const Box<acc_t> other{x1[k], y1[k], x2[k], y2[k]};
    const bool suppressed = suppresses(box_iou(kept, kept_area, other, area[k]), threshold);
    newly_dead += suppressed & !dead[k];
    dead[k] |= suppressed;
  }
  return newly_dead;
}

// Greedy suppression over one class; marks keep[position] for the kept boxes,
// at most `limit` of them.
template <typename acc_t, typename scalar_t>
void suppress_class(const scalar_t* boxes, int64_t begin, int64_t end, acc_t threshold, int64_t limit,
                    Candidates<acc_t>& c, uint8_t* keep) {
  c.load(boxes, begin, end);
  int64_t kept = 0;
  int64_t dead_ahead = 0;  // dead candidates after the cursor
  for (int64_t t = 0; t < static_cast<int64_t>(c.dead.size()) && kept < limit;) {
    if (c.dead[t]) {
      --dead_ahead;
      ++t;
      continue;
    }
    keep[c.position[t]] = 1;
    ++kept;
    const int64_t size = static_cast<int64_t>(c.dead.size());
    dead_ahead += suppress_by<acc_t>({c.x1[t], c.y1[t], c.x2[t], c.y2[t]}, c.area[t], c.x1.data(), c.y1.data(),
                                     c.x2.data(), c.y2.data(), c.area.data(), c.dead.data(), t + 1, size, threshold);
    ++t;
    if (2 * dead_ahead > size - t) {
      c.compact(t);
      dead_ahead = 0;
    }
  }
}

std::tuple<at::Tensor, at::Tensor> nms_sorted_cpu(const at::Tensor& boxes, const std::optional<at::Tensor>& classes,
                                                  double iou_threshold, int64_t max_output) {
  const int64_t n = boxes.size(0);
  // Class boundaries in the grouped order.
  std::vector<int64_t> starts{0};
  if (classes) {
    const int64_t* cls = classes->const_data_ptr<int64_t>();
    for (int64_t k = 1; k < n; ++k) {
      if (cls[k] != cls[k - 1]) {
        starts.push_back(k);
      }
    }
  }
  starts.push_back(n);
  const int64_t groups = static_cast<int64_t>(starts.size()) - 1;
  // One class: the scan may stop at max_output. Several: every class runs in full.
  const int64_t limit = classes ? n : max_output;
  std::vector<uint8_t> keep(n, 0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "nms", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* data = boxes.const_data_ptr<scalar_t>();
    at::parallel_for(0, groups, 1, [&](int64_t first, int64_t last) {
      Candidates<acc_t> candidates;
      for (int64_t g = first; g < last; ++g) {
        suppress_class<acc_t>(data, starts[g], starts[g + 1], static_cast<acc_t>(iou_threshold), limit, candidates,
                              keep.data());
      }
    });
  });
  at::Tensor positions = at::full({max_output}, -1, boxes.options().dtype(at::kLong));
  int64_t* out = positions.data_ptr<int64_t>();
  int64_t count = 0;
  for (int64_t k = 0; k < n && count < max_output; ++k) {
    if (keep[k]) {
      out[count++] = k;
    }
  }
  return {positions, at::scalar_tensor(count, boxes.options().dtype(at::kLong))};
}

at::Tensor nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  return nms_with(&nms_sorted_cpu, boxes, scores, iou_threshold);
}

at::Tensor batched_nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                           double iou_threshold) {
  return batched_nms_with(&nms_sorted_cpu, boxes, scores, idxs, iou_threshold);
}

std::tuple<at::Tensor, at::Tensor> nms_padded_cpu(const at::Tensor& boxes, const at::Tensor& scores,
                                                  const std::optional<at::Tensor>& idxs, double iou_threshold,
                                                  int64_t max_output) {
  return nms_padded_with(&nms_sorted_cpu, boxes, scores, idxs, iou_threshold, max_output);
}

// Soft-NMS (Bodla et al., 2017): repeatedly keep the highest remaining score
// (NaN counts as highest, ties go to the lower index) and decay the others by
// exp(-iou^2 / sigma) (gaussian) or, where iou > iou_threshold, by 1 - iou
// (linear); stop when the highest remaining score is below score_threshold.
std::tuple<at::Tensor, at::Tensor> soft_nms_cpu(const at::Tensor& boxes_in, const at::Tensor& scores_in,
                                                double iou_threshold, double sigma, double score_threshold,
                                                int64_t method) {
  check_nms_arguments("soft_nms", boxes_in, scores_in, std::nullopt, iou_threshold);
  const at::Tensor boxes = boxes_in.contiguous();
  const int64_t n = boxes.size(0);
  at::Tensor kept = at::empty({n}, boxes.options().dtype(at::kLong));
  at::Tensor kept_scores = at::empty({n}, scores_in.options());
  int64_t count = 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "soft_nms", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* data = boxes.const_data_ptr<scalar_t>();
    const at::Tensor scores_acc = scores_in.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    std::vector<acc_t> score(scores_acc.const_data_ptr<acc_t>(), scores_acc.const_data_ptr<acc_t>() + n);
    std::vector<uint8_t> alive(n, 1);
    int64_t* out = kept.data_ptr<int64_t>();
    scalar_t* out_scores = kept_scores.data_ptr<scalar_t>();
    const auto linear = static_cast<SoftNmsMethod>(method) == SoftNmsMethod::kLinear;
    for (;;) {
      int64_t best = -1;
      for (int64_t k = 0; k < n; ++k) {
        if (alive[k] && (best < 0 || score[k] > score[best] || (std::isnan(score[k]) && !std::isnan(score[best])))) {
          best = k;
        }
      }
      if (best < 0 || score[best] < static_cast<acc_t>(score_threshold)) {
        break;
      }
      alive[best] = 0;
      out[count] = best;
      out_scores[count] = static_cast<scalar_t>(score[best]);
      ++count;
      const Box<acc_t> kept_box = load_box<acc_t>(data + best * 4);
      for (int64_t k = 0; k < n; ++k) {
        if (!alive[k]) {
          continue;
        }
        const acc_t iou = box_iou(kept_box, load_box<acc_t>(data + k * 4));
        if (linear) {
          score[k] *= iou > static_cast<acc_t>(iou_threshold) ? acc_t(1) - iou : acc_t(1);
        } else {
          score[k] *= std::exp(-(iou * iou) / static_cast<acc_t>(sigma));
        }
      }
    }
  });
  return {kept.narrow(0, 0, count).clone(), kept_scores.narrow(0, 0, count).clone()};
}

at::Tensor box_iou_cpu(const at::Tensor& boxes1_in, const at::Tensor& boxes2_in) {
  check_boxes("box_iou", "boxes1", boxes1_in);
  check_boxes("box_iou", "boxes2", boxes2_in);
  TORCH_CHECK(boxes1_in.scalar_type() == boxes2_in.scalar_type(), "box_iou: boxes1 and boxes2 must have one dtype");
  const at::Tensor boxes1 = boxes1_in.contiguous();
  const at::Tensor boxes2 = boxes2_in.contiguous();
  const int64_t n = boxes1.size(0);
  const int64_t m = boxes2.size(0);
  at::Tensor out = at::empty({n, m}, boxes1.options());
  if (out.numel() == 0) {
    return out;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes1.scalar_type(), "box_iou", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* a = boxes1.const_data_ptr<scalar_t>();
    const scalar_t* b = boxes2.const_data_ptr<scalar_t>();
    scalar_t* result = out.data_ptr<scalar_t>();
    at::parallel_for(0, n, std::max<int64_t>(1, 16384 / m), [&](int64_t first, int64_t last) {
      for (int64_t i = first; i < last; ++i) {
        const Box<acc_t> box = load_box<acc_t>(a + i * 4);
        for (int64_t j = 0; j < m; ++j) {
          result[i * m + j] = static_cast<scalar_t>(box_iou(box, load_box<acc_t>(b + j * 4)));
        }
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, CPU, m) {
  m.impl("nms", &nms_cpu);
  m.impl("batched_nms", &batched_nms_cpu);
  m.impl("nms_padded", &nms_padded_cpu);
  m.impl("soft_nms", &soft_nms_cpu);
  m.impl("box_iou", &box_iou_cpu);
}

}  // namespace fastops
