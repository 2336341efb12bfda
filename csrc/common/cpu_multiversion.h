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
