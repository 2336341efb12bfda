#pragma once
// Elementwise exp and log1p over float arrays for the CPU loss kernels, and
// the softmax over the classes of a tile of pixels built on them.
//
// float arrays go through SLEEF's 8-wide AVX2 functions (1-ulp accuracy),
// the ones ATen's own vectorised exp/log1p use, resolved at load time from
// libtorch_cpu; without AVX2 or those symbols, and for double (the float64
// oracle path), through std::exp / std::log1p. A scalar std::exp per element
// made the softmax four times slower than torch.softmax (bench/NOTES.md).

#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>
#include <cstring>

namespace fastops::cpu {

// a·b + c, as one fused multiply-add where the caller is compiled for FMA
// (kFused; then std::fma is one instruction) and as two roundings otherwise
// (std::fma without the instruction is a slow library call).
template <bool kFused, typename T>
C10_ALWAYS_INLINE T multiply_add(T a, T b, T c) {
  if constexpr (kFused) {
    return std::fma(a, b, c);
  } else {
    return a * b + c;
  }
}

// exp(x) in plain float arithmetic (Cephes' expf: range reduction by ln 2 in
// two parts, a degree-7 polynomial, the power of two built in the exponent
// bits), for loops that the compiler vectorises inside a multiversioned
// function: unlike exp_inplace it fuses with the surrounding arithmetic and
// costs no call per 8 values. Within 1 ulp of the correctly rounded exp for
// results in the normal range (tests/test_losses.py, through the soft-Dice
// softmax); 0 where exp(x) is below FLT_MIN (x < −87.3: subnormals are
// flushed, which no softmax or sigmoid sum can see); +inf above
// ln(FLT_MAX); NaN gives NaN. kFused: multiply-adds as FMA instructions
// (the caller is compiled for them). double goes to std::exp (the float64
// oracle path).
template <bool kFused = false>
C10_ALWAYS_INLINE float exp_inline(float x) {
  constexpr float kLowest = -87.33654475f, kHighest = 88.72283935546875f;
  const float clamped = x < kLowest ? kLowest : (x > kHighest ? kHighest : x);
  // Round to nearest by the 1.5·2^23 trick: no rounding instruction needed.
  const float n = multiply_add<kFused>(clamped, 1.44269504088896341f, 12582912.0f) - 12582912.0f;
  const float r = multiply_add<kFused>(n, 2.12194440e-4f, multiply_add<kFused>(n, -0.693359375f, clamped));
  float poly = 1.9875691500e-4f;
  poly = multiply_add<kFused>(poly, r, 1.3981999507e-3f);
  poly = multiply_add<kFused>(poly, r, 8.3334519073e-3f);
  poly = multiply_add<kFused>(poly, r, 4.1665795894e-2f);
  poly = multiply_add<kFused>(poly, r, 1.6666665459e-1f);
  poly = multiply_add<kFused>(poly, r, 5.0000001201e-1f);
  poly = multiply_add<kFused>(poly, r * r, r) + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(float));
  return x < kLowest ? 0.0f : poly * scale;  // a NaN x made poly NaN
}
template <bool kFused = false>
C10_ALWAYS_INLINE double exp_inline(double x) {
  return std::exp(x);
}

// log1p(e) for e in [0, 1] (the softplus term log1p(exp(−|x|)) of the
// logistic losses), inlined like exp_inline: u = 1 + e in [1, 2] is split as
// 2^k·m with m in [√½, √2], log m from Cephes' logf polynomial, and the
// rounding of 1 + e corrected to first order ((e − (u − 1))/u), so tiny e
// keep their relative accuracy (log1p(e) ≈ e). Within 2 ulp of log1p on
// [0, 1] (tests/test_losses.py, through the BCE sum); NaN gives NaN. Only
// this domain: the callers never pass anything else.
template <bool kFused = false>
C10_ALWAYS_INLINE float log1p_unit_inline(float e) {
  const float u = 1.0f + e;
  const float correction = (e - (u - 1.0f)) / u;
  const bool upper = u > 1.41421356237f;
  const float f = upper ? u * 0.5f - 1.0f : u - 1.0f;  // exact (Sterbenz)
  const float k = upper ? 1.0f : 0.0f;
  const float z = f * f;
  float poly = 7.0376836292e-2f;
  poly = multiply_add<kFused>(poly, f, -1.1514610310e-1f);
  poly = multiply_add<kFused>(poly, f, 1.1676998740e-1f);
  poly = multiply_add<kFused>(poly, f, -1.2420140846e-1f);
  poly = multiply_add<kFused>(poly, f, 1.4249322787e-1f);
  poly = multiply_add<kFused>(poly, f, -1.6668057665e-1f);
  poly = multiply_add<kFused>(poly, f, 2.0000714765e-1f);
  poly = multiply_add<kFused>(poly, f, -2.4999993993e-1f);
  poly = multiply_add<kFused>(poly, f, 3.3333331174e-1f);
  float y = poly * f * z;
  y = multiply_add<kFused>(k, -2.12194440e-4f, y);
  y = multiply_add<kFused>(z, -0.5f, y);
  const float log_u = multiply_add<kFused>(k, 0.693359375f, f + y);
  return log_u + correction;
}
template <bool kFused = false>
C10_ALWAYS_INLINE double log1p_unit_inline(double e) {
  return std::log1p(e);
}

// Whether float arrays take the SLEEF AVX2 path on this machine.
bool vectorised_math_available();

void exp_inplace(float* values, int64_t count);
void exp_inplace(double* values, int64_t count);
void log1p_inplace(float* values, int64_t count);
void log1p_inplace(double* values, int64_t count);

// Softmax over the rows of tile [classes][row_stride], for the first `count`
// columns (pixels), in place.
template <typename acc_t>
void softmax_columns(acc_t* tile, int64_t classes, int64_t row_stride, int64_t count, acc_t* scratch) {
  acc_t* maximum = scratch;
  acc_t* total = scratch + row_stride;
  for (int64_t i = 0; i < count; ++i) {
    maximum[i] = tile[i];
    total[i] = acc_t(0);
  }
  for (int64_t c = 1; c < classes; ++c) {
    const acc_t* row = tile + c * row_stride;
    for (int64_t i = 0; i < count; ++i) {
      maximum[i] = row[i] > maximum[i] ? row[i] : maximum[i];
    }
  }
  for (int64_t c = 0; c < classes; ++c) {
    acc_t* row = tile + c * row_stride;
    for (int64_t i = 0; i < count; ++i) {
      row[i] -= maximum[i];
    }
    exp_inplace(row, count);
    for (int64_t i = 0; i < count; ++i) {
      total[i] += row[i];
    }
  }
  for (int64_t i = 0; i < count; ++i) {
    total[i] = acc_t(1) / total[i];
  }
  for (int64_t c = 0; c < classes; ++c) {
    acc_t* row = tile + c * row_stride;
    for (int64_t i = 0; i < count; ++i) {
      row[i] *= total[i];
    }
  }
}

}  // namespace fastops::cpu
