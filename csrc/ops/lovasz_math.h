#pragma once
// Per-element math of the Lovász losses (Berman, Rannen Triki and Blaschko,
// CVPR 2018), shared by the CPU and CUDA kernels (csrc/cpu/lovasz.cpp,
// csrc/cuda/lovasz.cu).
//
// A segment is one binary problem: a (unit, class) pair, unit = image when
// per_image, else the whole batch. Its valid pixels' errors e are sorted in
// decreasing order; with G foreground pixels in the segment, the k-th error
// (rank k, 0-based) has the Lovász gradient
//   g_k = J_k − J_{k−1},  J_k = 1 − I_k / U_k,
//   I_k = G − (foreground among ranks ≤ k),  U_k = G + (background among ranks ≤ k),
// and the segment's loss is Σ_k e_k·g_k (the hinge uses max(e_k, 0)).
// lovasz_gradient evaluates g_k in closed form from integer counts, exact
// for any segment length (the reference's float32 cumsum is exact only to 2^24
// and loses digits in the difference of two close J's).
//
// Sorted segments are stored as 32-bit entries: the pixel's flat index
// (n·S + s, below 2^31) with the foreground flag in the top bit.

#include <c10/macros/Macros.h>

#include <cstdint>
#include <cstring>

namespace fastops::lovasz {

enum Kind : int64_t {
  kSoftmaxProbabilities = 0,  // input holds probabilities; e = |fg − p|
  kSoftmaxLogits = 1,         // p = softmax over classes (sigmoid when C == 1)
  kHinge = 2,                 // e = 1 − x·(2·fg − 1), loss uses max(e, 0)
};

constexpr uint32_t kForegroundBit = 0x80000000u;
// sorted_entries past the last segment (ignored pixels' share) hold this.
constexpr uint32_t kUnusedEntry = 0xffffffffu;

C10_HOST_DEVICE inline uint32_t pack_entry(int64_t pixel, bool foreground) {
  return static_cast<uint32_t>(pixel) | (foreground ? kForegroundBit : 0u);
}
C10_HOST_DEVICE inline int64_t entry_pixel(uint32_t entry) {
  return static_cast<int64_t>(entry & ~kForegroundBit);
}
C10_HOST_DEVICE inline bool entry_foreground(uint32_t entry) {
  return (entry & kForegroundBit) != 0;
}

// g_k of the entry at `rank`, given how many foreground entries precede it in
// its segment and the segment's foreground total G. U_{k−1} = G + background
// before it; a foreground entry lowers I by one (g = 1/U_{k−1}); a background
// one raises U by one (g = I_{k−1}/(U_{k−1}·(U_{k−1}+1))). With G = 0 every
// J_k is 1, so the first entry gets 1 and the others 0.
template <typename T>
C10_HOST_DEVICE inline T lovasz_gradient(bool foreground, int64_t foreground_before, int64_t rank,
                                         int64_t total_foreground) {
  const int64_t union_before = total_foreground + (rank - foreground_before);
  if (foreground) {
    return T(1) / T(union_before);
  }
  if (union_before == 0) {
    return T(1);
  }
  const int64_t intersection_before = total_foreground - foreground_before;
  return T(intersection_before) / (T(union_before) * T(union_before + 1));
}

// e = |fg − p|, and de/dp = sign(p − fg) with 0 at p == fg (torch.abs's).
template <typename T>
C10_HOST_DEVICE inline T softmax_error(T p, bool foreground) {
  const T d = p - (foreground ? T(1) : T(0));
  return d < T(0) ? -d : d;
}
template <typename T>
C10_HOST_DEVICE inline T softmax_error_slope(T p, bool foreground) {
  const T d = p - (foreground ? T(1) : T(0));
  return d > T(0) ? T(1) : (d < T(0) ? T(-1) : T(0));
}

// e = 1 − x·(2·fg − 1). Its loss term is max(e, 0), NaN kept, and
// d max(e, 0)/dx = −(2·fg − 1) unless e ≤ 0, where it is 0: torch.relu's
// rule, which passes the gradient of a NaN.
template <typename T>
C10_HOST_DEVICE inline T hinge_error(T x, bool foreground) {
  return T(1) - (foreground ? x : -x);
}
template <typename T>
C10_HOST_DEVICE inline T hinge_loss_term(T e) {
  return e > T(0) || e != e ? e : T(0);
}
template <typename T>
C10_HOST_DEVICE inline T hinge_error_slope(T x, bool foreground) {
  return hinge_error(x, foreground) <= T(0) ? T(0) : (foreground ? T(-1) : T(1));
}

// Sort keys: an unsigned integer whose ascending order is the error's
// descending order (NaN first, as torch.sort(descending=True) puts it), and
// back. float errors use 32-bit keys, double errors 64-bit ones.
C10_HOST_DEVICE inline uint32_t descending_key(float value) {
  uint32_t bits;
  memcpy(&bits, &value, sizeof(bits));
  if (value != value) {
    bits = 0x7fc00000u;  // every NaN as the positive quiet NaN, so it sorts first whatever its sign bit
  }
  bits = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
  return ~bits;
}
C10_HOST_DEVICE inline float error_of_key(uint32_t key) {
  uint32_t bits = ~key;
  bits = (bits & 0x80000000u) ? (bits & 0x7fffffffu) : ~bits;
  float value;
  memcpy(&value, &bits, sizeof(value));
  return value;
}
C10_HOST_DEVICE inline uint64_t descending_key(double value) {
  uint64_t bits;
  memcpy(&bits, &value, sizeof(bits));
  if (value != value) {
    bits = 0x7ff8000000000000ull;
  }
  bits = (bits & 0x8000000000000000ull) ? ~bits : (bits | 0x8000000000000000ull);
  return ~bits;
}
C10_HOST_DEVICE inline double error_of_key(uint64_t key) {
  uint64_t bits = ~key;
  bits = (bits & 0x8000000000000000ull) ? (bits & 0x7fffffffffffffffull) : ~bits;
  double value;
  memcpy(&value, &bits, sizeof(value));
  return value;
}

}  // namespace fastops::lovasz
