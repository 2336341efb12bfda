#include "cpu/vector_math.h"

#include <cmath>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <dlfcn.h>
#include <immintrin.h>
#define FASTOPS_HAVE_SLEEF_AVX2 1
#endif

namespace fastops::cpu {
namespace {

#ifdef FASTOPS_HAVE_SLEEF_AVX2
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"
using VectorFunction = __m256 (*)(__m256);

VectorFunction resolve(const char* name) {
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) {
    return nullptr;
  }
  void* symbol = dlsym(RTLD_DEFAULT, name);
  if (symbol == nullptr) {
    // torch loads libtorch_cpu with local symbols; this extension links it, so it is loaded.
    if (void* torch_cpu = dlopen("libtorch_cpu.so", RTLD_LAZY | RTLD_NOLOAD)) {
      symbol = dlsym(torch_cpu, name);
    }
  }
  return reinterpret_cast<VectorFunction>(symbol);
}

const VectorFunction sleef_exp = resolve("Sleef_expf8_u10avx2");
const VectorFunction sleef_log1p = resolve("Sleef_log1pf8_u10avx2");

__attribute__((target("avx2,fma"))) int64_t apply_avx2(VectorFunction f, float* values, int64_t count) {
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) {
    _mm256_storeu_ps(values + i, f(_mm256_loadu_ps(values + i)));
  }
  return i;
}
#pragma GCC diagnostic pop
#endif

template <typename F>
int64_t apply_vectorised(F function, float* values, int64_t count) {
#ifdef FASTOPS_HAVE_SLEEF_AVX2
  if (function != nullptr) {
    return apply_avx2(function, values, count);
  }
#endif
  return 0;
}

}  // namespace

bool vectorised_math_available() {
#ifdef FASTOPS_HAVE_SLEEF_AVX2
  return sleef_exp != nullptr && sleef_log1p != nullptr;
#else
  return false;
#endif
}

void exp_inplace(float* values, int64_t count) {
  int64_t i = 0;
#ifdef FASTOPS_HAVE_SLEEF_AVX2
  i = apply_vectorised(sleef_exp, values, count);
#endif
  for (; i < count; ++i) {
    values[i] = std::exp(values[i]);
  }
}

void exp_inplace(double* values, int64_t count) {
  for (int64_t i = 0; i < count; ++i) {
    values[i] = std::exp(values[i]);
  }
}

void log1p_inplace(float* values, int64_t count) {
  int64_t i = 0;
#ifdef FASTOPS_HAVE_SLEEF_AVX2
  i = apply_vectorised(sleef_log1p, values, count);
#endif
  for (; i < count; ++i) {
    values[i] = std::log1p(values[i]);
  }
}

void log1p_inplace(double* values, int64_t count) {
  for (int64_t i = 0; i < count; ++i) {
    values[i] = std::log1p(values[i]);
  }
}

}  // namespace fastops::cpu
