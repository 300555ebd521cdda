// Shared helpers of the fused CPU kernels: raw-buffer access, argument checks and
// the fixed work partition that keeps every reduction deterministic.
#pragma once

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace fbnet {

// Bumped whenever a kernel's signature or semantics change; fbnet_fast/_ext.py refuses
// a module built from other sources (a stale in-place build) and says how to rebuild.
constexpr int kAbiVersion = 11;

using buf_t = std::uintptr_t;  // a tensor's data_ptr(), passed from Python

// The Fortran BLAS sgemm (column-major; 32-bit ints) of the torch library the extension runs beside, found by
// fbnet_fast/ops/_ext.py and set once at import (set_blas): the one-call C++ paths (ir_block.cpp) run the
// products torch would run through it, with the arguments torch.mm passes, so they give torch's bits. nullptr:
// none found; those candidates then keep the Python path. Shared by the ISA variants (one pointer).
using SgemmFn = void (*)(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                         const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
                         const float* beta, float* c, const int* ldc);
inline SgemmFn g_sgemm = nullptr;

inline float* F(buf_t p) { return reinterpret_cast<float*>(p); }
inline const float* CF(buf_t p) { return reinterpret_cast<const float*>(p); }

inline void check(bool ok, const std::string& msg) {
  if (!ok) throw std::invalid_argument(msg);
}
inline void check(bool ok, const char* msg) {  // a literal: no std::string unless it fails
  if (!ok) throw std::invalid_argument(msg);
}

// Messages are built only on failure: a std::string per check per call added up to
// microseconds on the [C]-sized kernels called ~50 times a layer.
inline void check_buf(buf_t p, const char* name, bool optional = false) {
  if (optional && p == 0) return;
  if (p == 0) throw std::invalid_argument(std::string(name) + " must be a non-null float32 buffer");
  if (p % alignof(float) != 0)
    throw std::invalid_argument(std::string(name) + " must be aligned to 4 bytes (a float32 buffer)");
}

inline void check_positive(int64_t v, const char* name) {
  if (v <= 0) throw std::invalid_argument(std::string(name) + " must be > 0, got " + std::to_string(v));
}

// The n floats at x asked into L2 ahead of their first use: the row a kernel reads in its next step (the next
// image row). The hardware prefetcher follows a stream only while it is read, so each row of a big tensor visited
// row by row between other work started cold: the loads of its first touch stalled. No effect on any result.
// Write = true: floats about to be written, asked for ownership (the stores then do not wait for the line).
template <bool Write = false>
inline void prefetch_floats(const float* x, int64_t n) {
  const char* c = reinterpret_cast<const char*>(x);
  for (int64_t off = 0; off < n * static_cast<int64_t>(sizeof(float)); off += 64) __builtin_prefetch(c + off, Write, 2);
}

// Rows per work chunk of a reduction over `rows` rows of `row_elems` floats: about `target` elements a chunk
// (float32 sums stay short within a chunk), and at least kMinChunks chunks where there are that many rows, so
// that a small tensor still splits across the threads. Without that floor the default search's 4x4 and 8x8
// layers (1,024-4,096 rows of 16-48 channels) were one chunk: one thread did the whole pass while the other
// waited. The partition depends on the shape only, never on the thread count: each chunk writes its own
// partial sums and the partials are added in chunk order, so a reduction gives the same bits for any
// OMP_NUM_THREADS (no float atomics).
constexpr int64_t kMinChunks = 16;
inline int64_t rows_per_chunk(int64_t row_elems, int64_t rows, int64_t target = 1 << 16) {
  const int64_t by_size = (target + row_elems - 1) / std::max<int64_t>(1, row_elems);
  const int64_t by_count = (rows + kMinChunks - 1) / kMinChunks;
  return std::max<int64_t>(1, std::min(by_size, by_count));
}

}  // namespace fbnet

// ---- ISA variants ----------------------------------------------------------------
// On x86-64 every kernel source is compiled three times (CMakeLists.txt), each time with
// FBNET_ISA naming the variant's namespace: `base` (plain x86-64, SSE2), `v3` (AVX2+FMA)
// and `v4` (AVX-512, 512-bit vectors); csrc/bindings.cpp picks one at import from
// __builtin_cpu_supports. The ISA is raised with `#pragma GCC target` *after* the
// standard headers (FBNET_ISA_BEGIN), never with -m flags on the command line: the
// out-of-line std:: template instances that the three objects share (COMDAT, one copy
// kept by the linker) are then always compiled for plain x86-64, so the base variant
// cannot pick up an AVX-512 copy and crash on an older CPU. Flags listed, not
// `arch=`: gcc only inlines a callee (std::max, ...) whose arch equals the caller's.
// 512-bit: gcc's default prefers 256-bit vectors even with AVX-512; the dwconv
// channel blocks of 16 floats become one zmm FMA instead of two ymm ones.
#ifndef FBNET_ISA
#define FBNET_ISA base
#endif
#define FBNET_STR2(x) #x
#define FBNET_STR(x) FBNET_STR2(x)
#if defined(FBNET_ISA_V4)
#define FBNET_ISA_BEGIN                                                                     \
  _Pragma("GCC push_options")                                                              \
  _Pragma("GCC target(\"sse3,ssse3,sse4.1,sse4.2,popcnt,avx,avx2,fma,f16c,bmi,bmi2,lzcnt,movbe,avx512f,avx512bw,avx512cd,avx512dq,avx512vl,prefer-vector-width=512\")")
#define FBNET_ISA_END _Pragma("GCC pop_options")
#elif defined(FBNET_ISA_V3)
#define FBNET_ISA_BEGIN                                                                     \
  _Pragma("GCC push_options")                                                              \
  _Pragma("GCC target(\"sse3,ssse3,sse4.1,sse4.2,popcnt,avx,avx2,fma,f16c,bmi,bmi2,lzcnt,movbe\")")
#define FBNET_ISA_END _Pragma("GCC pop_options")
#else
#define FBNET_ISA_BEGIN
#define FBNET_ISA_END
#endif
