// GCC vector types and unaligned loads/stores for the kernels, one copy per ISA variant:
// include this *inside* `namespace fbnet { namespace FBNET_ISA { namespace {` (after
// FBNET_ISA_BEGIN), never at global scope, so each variant's instances get their own names
// and the linker cannot swap an AVX-512 copy into the base variant (common.h).
#pragma once
// (std::memcpy, std::integral_constant and the FMA intrinsics: the including file includes <cstring>, <type_traits>
// and <immintrin.h> at global scope first.)

// GCC vector types: one `V` is 16 (or 8) channels, a zmm in the v4 build, two ymm in v3,
// four xmm in base; unaligned (aligned(4)) so any channel offset loads.
typedef float V16 __attribute__((vector_size(64), aligned(4)));
typedef float V8 __attribute__((vector_size(32), aligned(4)));
// The widest vector this variant runs natively: 16 floats (a zmm) in v4, 8 elsewhere. A V16 in
// v3 is two ymm; measured, the backward's gather loop over V16 ran 5-7x slower in v3 than over
// V8 (its vector select is split), and the row kernels' P = 4 V16 accumulators need 8 of the
// 16 ymm registers.
#if defined(FBNET_ISA_V4)
typedef V16 VW;
#else
typedef V8 VW;
#endif
constexpr int kW = sizeof(VW) / sizeof(float);

// memcpy, not a cast: a typedef's aligned(4) is dropped when it is a template argument,
// and an aligned vector load of an arbitrary channel offset faults.
template <typename V>
inline V vload(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}
template <typename V>
inline void vstore(float* p, const V& v) { std::memcpy(p, &v, sizeof(V)); }

// Pins v to a vector register here (v3, v4; nothing in base, whose V8 is two xmm). gcc folds a vector load into
// every FMA that reads it (vfmadd231ps mem, reg, reg): a product kernel's B vector or a depthwise tap's weight,
// read by 4 FMAs, was loaded 4 times, and those loops ran load-bound (Zen 4 issues two 256-bit loads a cycle)
// below the FMA rate (perf, AMD EPYC Zen 4, v3). The empty asm makes the loaded value opaque to gcc, so it stays
// in the register it was loaded into; the arithmetic and its order are unchanged (the same bits).
template <typename V>
inline void in_register(V& v) {
#if defined(FBNET_ISA_V3)
  asm("" : "+x"(v));
#elif defined(FBNET_ISA_V4)
  asm("" : "+v"(v));
#else
  (void)v;
#endif
}

// a * b + c, rounded once where the ISA has FMA (v3, v4), twice in base: explicit, not left to gcc's contraction,
// because gcc's Zen tuning (-mtune=native on an AMD EPYC) emits a multiply and an add instead of an FMA when the
// sum is carried around a loop (vectors up to 256 bits, scalars): the bits of a sum then depended on whether the
// compiler unrolled its loop, and on the build machine. Every sum below that was an FMA when its loop was fully
// unrolled (or its accumulator lived in memory) is one with madd, so the bits are those of the unrolled code.
template <typename T>
inline T madd(T a, T b, T c) {
#if defined(FBNET_ISA_V4) || defined(FBNET_ISA_V3)
  if constexpr (sizeof(T) == 4) {
    return __builtin_fmaf(a, b, c);
  } else if constexpr (sizeof(T) == 32) {
    return reinterpret_cast<T>(_mm256_fmadd_ps(reinterpret_cast<__m256>(a), reinterpret_cast<__m256>(b),
                                               reinterpret_cast<__m256>(c)));
  } else {
#if defined(FBNET_ISA_V4)
    static_assert(sizeof(T) == 64, "madd: float, V8 or V16");
    return reinterpret_cast<T>(_mm512_fmadd_ps(reinterpret_cast<__m512>(a), reinterpret_cast<__m512>(b),
                                               reinterpret_cast<__m512>(c)));
#else
    static_assert(sizeof(T) != 64, "madd: no 512-bit FMA in this variant");
#endif
  }
#else
  return a * b + c;
#endif
}

// The register forms of the passes over narrow rows (bn_act.cpp's act_grad_sums and act_grad_apply, dwconv_bn.cpp's
// activate_row): a row of C = B * kW + (Tail8 ? 8 : 0) channels, B + Tail8 <= MaxBlocks vectors, whose per-channel
// vectors stay in registers across the rows. with_row_blocks calls f(integral_constant<int, B>, bool_constant<Tail8>)
// for C's form and returns true, or returns false when C has none (not a multiple of 8, or too many blocks).
template <int B, int MaxBlocks, typename F>
inline bool row_blocks_from(int64_t nb, bool t8, F& f) {
  if constexpr (B > MaxBlocks) {
    return false;
  } else {
    if (nb != B) return row_blocks_from<B + 1, MaxBlocks>(nb, t8, f);
    if (t8) {
      if constexpr (B + 1 <= MaxBlocks) f(std::integral_constant<int, B>{}, std::true_type{});
      return B + 1 <= MaxBlocks;
    }
    if constexpr (B > 0) f(std::integral_constant<int, B>{}, std::false_type{});
    return B > 0;
  }
}
template <int MaxBlocks, typename F>
inline bool with_row_blocks(int64_t C, F&& f) {
  return C % 8 == 0 && row_blocks_from<0, MaxBlocks>(C / kW, C % kW != 0, f);
}
