#pragma once
// Elementwise exp and log1p over float arrays for the CPU loss kernels, and
// the softmax over the classes of a tile of pixels built on them.
//
// float arrays go through SLEEF's 8-wide AVX2 functions (1-ulp accuracy),
// the ones ATen's own vectorised exp/log1p use, resolved at load time from
// libtorch_cpu; without AVX2 or those symbols, and for double (the float64
// oracle path), through std::exp / std::log1p. A scalar std::exp per element
// made the softmax four times slower than torch.softmax (bench/NOTES.md).

#include <cstdint>

namespace fastops::cpu {

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
