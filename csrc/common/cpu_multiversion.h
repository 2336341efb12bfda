#pragma once
// FASTOPS_CPU_MULTIVERSION compiles a hot CPU loop twice, for AVX2 and for
// the baseline x86-64 (SSE2), and picks one at load time from what the CPU
// supports (GCC/Clang target_clones). The extension is built without -march,
// so without this the vectorised loops would be limited to SSE2; with AVX2
// the unpooling row loops run twice as fast (measured: bench/NOTES.md).

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(__CUDACC__)
#define FASTOPS_CPU_MULTIVERSION __attribute__((target_clones("avx2", "default")))
#else
#define FASTOPS_CPU_MULTIVERSION
#endif

// FASTOPS_CPU_AVX2_FMA compiles a function for AVX2 with FMA, for loops whose
// multiply-adds are written as std::fma (cpu/vector_math.h multiply_add):
// target_clones cannot add that clone next to the "avx2" one (it would rank
// below it), so callers pick it themselves with cpu_has_avx2_fma().
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(__CUDACC__)
#define FASTOPS_CPU_AVX2_FMA __attribute__((target("avx2,fma")))
#define FASTOPS_HAVE_CPU_AVX2_FMA 1
namespace fastops {
inline bool cpu_has_avx2_fma() {
  static const bool supported = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return supported;
}
}  // namespace fastops
#else
#define FASTOPS_CPU_AVX2_FMA
#define FASTOPS_HAVE_CPU_AVX2_FMA 0
namespace fastops {
inline bool cpu_has_avx2_fma() {
  return false;
}
}  // namespace fastops
#endif

// run_fastest<Kernel>(args...) calls Kernel::template run<kFused>(args...)
// compiled for AVX2 with FMA (kFused = true) where the CPU has both, and
// multiversioned (kFused = false) elsewhere. Kernel::run must be
// C10_ALWAYS_INLINE, so that each of the two compiles its own copy.
namespace fastops {
template <typename Kernel, typename... Args>
FASTOPS_CPU_AVX2_FMA void run_with_fma(const Args&... args) {
  Kernel::template run<FASTOPS_HAVE_CPU_AVX2_FMA != 0>(args...);
}
template <typename Kernel, typename... Args>
FASTOPS_CPU_MULTIVERSION void run_without_fma(const Args&... args) {
  Kernel::template run<false>(args...);
}
template <typename Kernel, typename... Args>
void run_fastest(const Args&... args) {
  if (cpu_has_avx2_fma()) {
    run_with_fma<Kernel>(args...);
  } else {
    run_without_fma<Kernel>(args...);
  }
}
}  // namespace fastops
