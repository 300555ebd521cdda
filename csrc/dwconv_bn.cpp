// Depthwise k x k convolution fused with the BN + ReLU before it and the BN
// statistics after it, channels-last. Eager runs BN1-apply, ReLU, the conv and the
// BN2 statistics as four passes over mid-channel tensors and keeps h1 for backward;
// here h1 = relu(scale1 * z1 + shift1) is rebuilt row by row in a thread-local
// buffer, never stored. Reference: fbnet_fast/ops/dwconv_bn.py (dwconv_bn_*_ref).
#include "kernels.h"

#include <cmath>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#include <immintrin.h>  // vec.h's madd: explicit FMAs (v3, v4)

FBNET_ISA_BEGIN
namespace fbnet {
namespace FBNET_ISA {

namespace {

constexpr int kV = 16;  // one AVX-512 register of float32

void check_conv_args(int64_t N, int64_t H, int64_t W, int64_t C, int64_t k, int64_t stride) {
  check_positive(N, "z1.shape[0] (batch)"); check_positive(H, "z1.shape[1] (height)");
  check_positive(W, "z1.shape[2] (width)"); check_positive(C, "z1.shape[3] (channels)");
  if (!(k > 0 && k % 2 == 1)) check(false, "weight: depthwise kernel size must be odd, got " + std::to_string(k));
  if (stride != 1 && stride != 2) check(false, "stride must be 1 or 2, got " + std::to_string(stride));
  if (k > 31) check(false, "weight: depthwise kernel size must be <= 31, got " + std::to_string(k));
}

#include "vec.h"  // V16, V8, VW, kW, vload, vstore, madd (this variant's)

// Output pixels a row kernel computes at once (its P). In v4 the forward at stride 1 (and the backward's row kernel
// at k = 5) runs P = 8 over the row's first 8-pixel blocks (8 FMA chains; 8 accumulators and the 7 + K inputs of a
// tap row fit its 32 vector registers; at stride 2, 7 * 2 + K do not) and this P for the rest, two channel blocks
// at a time (conv_row_fast, bwd_row_fast). v3 and base use this P throughout (16 ymm registers in v3).
constexpr int kRowPixels = 4;

// v4 skips the taps of rows of zeros (kh outside [kh0, kh1)) at k = 5 (k = 3 measured the same either way), with
// explicit FMAs (madd): its sums' bits then hold whatever gcc unrolls (a first try looped over [kh0, kh1), and
// v3's and v4's sums changed bits, not values). v3 and base run every tap of the fully unrolled loops with gcc's
// own contraction, as before: the same bits either way; skipping, or explicit FMAs, measured 0.79-0.95x in v3
// (AMD EPYC Zen 4, our v3 kernels, 1 thread).
#if defined(FBNET_ISA_V4)
constexpr bool kSkipPadRows = true;
template <typename T>
inline T tap_madd(T a, T b, T c) { return madd(a, b, c); }
#else
constexpr bool kSkipPadRows = false;
template <typename T>
inline T tap_madd(T a, T b, T c) { return c + a * b; }
#endif
// Whether tap row kh (of K) is one of zeros that this variant skips.
template <int K>
constexpr bool skipped_row(int kh, int kh0, int kh1) { return kSkipPadRows && K >= 5 && (kh < kh0 || kh >= kh1); }

// taps_accumulate (below) for B adjacent channel blocks at once and P whole pixels, each tap row's (P - 1) * S + K
// inputs loaded once into registers: B * P independent FMA chains (P = 4 alone leaves 4 chains of 4-cycle FMAs, at
// the edge of Zen 4's one 512-bit FMA a cycle). Each output's sum in taps_accumulate's order; B = 1 is its
// load-once path.
template <int K, int S, typename V, int P, int B, bool Rev = false>
inline void taps_accumulate_blocks(const float* const* r, const float* __restrict__ wt, int64_t C, int64_t o,
                                   int64_t c0, int kh0, int kh1, V (*ac)[P]) {
  constexpr int L = sizeof(V) / sizeof(float);
  constexpr int X = (P - 1) * S + K;
  const V zero = {};
  for (int b = 0; b < B; ++b)
    for (int q = 0; q < P; ++q) ac[b][q] = zero;
  for (int i = 0; i < K; ++i) {
    const int kh = Rev ? K - 1 - i : i;
    if (skipped_row<K>(kh, kh0, kh1)) continue;
    V x[B][X];
    for (int b = 0; b < B; ++b) {
      const float* p = r[kh] + o * S * C + c0 + b * L;
      for (int j = 0; j < X; ++j, p += C) x[b][j] = vload<V>(p);
    }
    const float* wk = wt + (kh * K + (Rev ? K - 1 : 0)) * C + c0;
    for (int j = 0; j < K; ++j, wk += Rev ? -C : C) {
      const int kw = Rev ? K - 1 - j : j;
      for (int b = 0; b < B; ++b) {
        V w = vload<V>(wk + b * L);
        // Loaded once for the P pixels, not folded into each of the P FMAs: in v3 at k = 5 the forward 1.04-1.25x,
        // the stride-1 backward 1.02-1.11x on the default search's shapes (bench/cpu/ab_so_dwconv.py --as-avx2,
        // AMD EPYC Zen 4, 1 thread). Same sums.
        in_register(w);
        for (int q = 0; q < P; ++q) ac[b][q] = tap_madd(w, x[b][q * S + kw], ac[b][q]);
      }
    }
  }
}

// ac[q] = sum over the taps of wt[tap] * row[(o + q) * S + kw] for the np <= P output pixels o .. o + np - 1 of
// one channel block [c0, c0 + |V|), over the tap rows kh in [kh0, kh1) (the rows inside the image: a padding
// row's taps add w * 0, which leaves a sum unchanged, so they are skipped) and all K columns; rows r[kh] are
// zero-padded by K / 2 columns. Each tap's weight vector is loaded once for the P pixels; kh major, kw minor
// (Rev: both descending, the order of the backward's gather, which the backward's row kernel reproduces with it).
template <int K, int S, typename V, int P, bool Rev = false>
inline void taps_accumulate(const float* const* r, const float* __restrict__ wt, int64_t C, int64_t o, int64_t c0,
                            int kh0, int kh1, int np, V* ac) {
  const V zero = {};
  for (int q = 0; q < P; ++q) ac[q] = zero;
  if (np < P) {  // the row's last pixels
    for (int q = 0; q < np; ++q)
      for (int i = 0; i < K; ++i) {
        const int kh = Rev ? K - 1 - i : i;
        if (skipped_row<K>(kh, kh0, kh1)) continue;
        const float* row = r[kh] + (o + q) * S * C + c0;
        for (int j = 0; j < K; ++j) {
          const int kw = Rev ? K - 1 - j : j;
          ac[q] = tap_madd(vload<V>(wt + (kh * K + kw) * C + c0), vload<V>(row + kw * C), ac[q]);
        }
      }
    return;
  }
  if constexpr (K >= 5 || P >= 8) {
    // The (P - 1) * S + K input pixels of a tap row are loaded once into registers, walking the row
    // with one pointer: indexed by the P * K (pixel, tap) pairs, the compiler kept P * S + K runtime
    // offsets (C is not a constant), ran out of general registers, spilled them to vector ones and
    // reloaded each input up to K times (AMD EPYC Zen 4, perf). Same FMA order (kh, then kw).
    taps_accumulate_blocks<K, S, V, P, 1, Rev>(r, wt, C, o, c0, kh0, kh1, reinterpret_cast<V(*)[P]>(ac));
  } else {  // k = 3: indexed loads measured faster (the load-once path: 0.71-1.33x, worse on 8 of 12)
    for (int i = 0; i < K; ++i) {
      const int kh = Rev ? K - 1 - i : i;
      if (skipped_row<K>(kh, kh0, kh1)) continue;
      const float* row = r[kh] + o * S * C + c0;
      for (int j = 0; j < K; ++j) {
        const int kw = Rev ? K - 1 - j : j;
        const V w = vload<V>(wt + (kh * K + kw) * C + c0);
        for (int q = 0; q < P; ++q) ac[q] = tap_madd(w, vload<V>(row + (q * S + kw) * C), ac[q]);
      }
    }
  }
}

// Forward, output pixels [ow_begin, Wo) of one row, all channel blocks of |V| (B of them at a time where B > 1
// and a whole P pixels remain): P output pixels at a time, each tap's
// weight vector loaded once for the P pixels (1.25 loads a FMA at P = 4, not 2: the runtime-k
// loop was load-bound) and P independent FMA chains. Pixel-major like the generic loop, so
// the k activated rows stream through L1 in address order (a channel-block-major order with
// the taps held in registers measured ~1.8x slower). Same summation order as the generic
// loop (kh major, kw minor).
template <int K, int S, typename V, int P = kRowPixels, int B = 1>
inline int64_t conv_row_blocks(const float* const* rowp, int kh0, int kh1, const float* __restrict__ wt, int64_t C,
                               int64_t c_begin, int64_t ow_begin, int64_t Wo, float* __restrict__ orow,
                               float* __restrict__ fs, const float* __restrict__ a2, const float* __restrict__ b2,
                               float* __restrict__ hrow) {
  constexpr int L = sizeof(V) / sizeof(float);
  const V zero = {};
  int64_t c_end = c_begin;
  while (c_end + L <= C) c_end += L;
  if (c_end == c_begin) return c_begin;
  const float* r[K];
  for (int kh = 0; kh < K; ++kh) r[kh] = rowp[kh];
  // The np outputs of one channel block, in pixel order: stored, added to the row sums, activated.
  auto epilogue = [&](const V* ac, int np, int64_t ow, int64_t c0) {
    V sv = vload<V>(fs + c0);
    for (int q = 0; q < np; ++q) {
      vstore<V>(orow + (ow + q) * C + c0, ac[q]);
      sv += ac[q];
      if (hrow) {
        const V hv = vload<V>(a2 + c0) * ac[q] + vload<V>(b2 + c0);
        vstore<V>(hrow + (ow + q) * C + c0, hv < zero ? zero : hv);  // std::max(hv, 0): keeps NaN
      }
    }
    vstore<V>(fs + c0, sv);
  };
  for (int64_t ow = ow_begin; ow < Wo; ow += P) {
    const int np = static_cast<int>(std::min<int64_t>(P, Wo - ow));
    int64_t c0 = c_begin;
    if constexpr (B > 1) {
      for (; np == P && c0 + B * L <= c_end; c0 += B * L) {
        V ac[B][P];
        taps_accumulate_blocks<K, S, V, P, B>(r, wt, C, ow, c0, kh0, kh1, ac);
        for (int b = 0; b < B; ++b) epilogue(ac[b], P, ow, c0 + b * L);
      }
    }
    for (; c0 < c_end; c0 += L) {
      V ac[P];
      taps_accumulate<K, S, V, P>(r, wt, C, ow, c0, kh0, kh1, np, ac);
      epilogue(ac, np, ow, c0);
    }
  }
  return c_end;
}

// Channel blocks of kW, then at most one of 8; returns the first channel left to the generic loop. v4, stride 1:
// pixels in blocks of 8 first, then the rest in blocks of 4 with two kW-blocks at a time. Measured against one
// block of 4 pixels and one channel block, padding rows skipped too (bench/cpu/ab_dwconv.py, AMD EPYC Zen 4,
// AVX-512, v4, 1 thread): 1.56-1.81x on 8x8 and 16x16 images at k = 5, 1.29-1.32x at k = 3 (8x8, 14x14), 1.27x on
// 4x4 at k = 5, 1.16x on 32x32 at k = 5; 32x32 at k = 3 0.95x.
template <int K, int S>
int64_t conv_row_fast(const float* const* rowp, int kh0, int kh1, const float* wt, int64_t C, int64_t Wo, float* orow,
                      float* fs, const float* a2, const float* b2, float* hrow) {
  int64_t w8 = 0;  // pixels [0, w8) in blocks of 8, the rest in blocks of kRowPixels
#if defined(FBNET_ISA_V4)
  if constexpr (S == 1) w8 = Wo / 8 * 8;
  if (w8 > 0) {
    const int64_t c = conv_row_blocks<K, S, VW, 8>(rowp, kh0, kh1, wt, C, 0, 0, w8, orow, fs, a2, b2, hrow);
    conv_row_blocks<K, S, V8, 8>(rowp, kh0, kh1, wt, C, c, 0, w8, orow, fs, a2, b2, hrow);
  }
  constexpr int B = S == 1 ? 2 : 1;
#else
  constexpr int B = 1;
#endif
  const int64_t c = conv_row_blocks<K, S, VW, kRowPixels, B>(rowp, kh0, kh1, wt, C, 0, w8, Wo, orow, fs, a2, b2, hrow);
  return conv_row_blocks<K, S, V8>(rowp, kh0, kh1, wt, C, c, w8, Wo, orow, fs, a2, b2, hrow);
}

int64_t conv_row_dispatch(int64_t k, int64_t stride, const float* const* rowp, int kh0, int kh1, const float* wt,
                          int64_t C, int64_t Wo, float* orow, float* fs, const float* a2, const float* b2,
                          float* hrow) {
  if (k == 3 && stride == 1) return conv_row_fast<3, 1>(rowp, kh0, kh1, wt, C, Wo, orow, fs, a2, b2, hrow);
  if (k == 3 && stride == 2) return conv_row_fast<3, 2>(rowp, kh0, kh1, wt, C, Wo, orow, fs, a2, b2, hrow);
  if (k == 5 && stride == 1) return conv_row_fast<5, 1>(rowp, kh0, kh1, wt, C, Wo, orow, fs, a2, b2, hrow);
  if (k == 5 && stride == 2) return conv_row_fast<5, 2>(rowp, kh0, kh1, wt, C, Wo, orow, fs, a2, b2, hrow);
  return 0;
}

// Backward, stride 1: grad_u1 of one input row is the forward's correlation of the k rows of
// grad_out around it (zero-padded like the activated rows) with the kernel flipped in both
// axes, so it runs the forward's register blocking (P pixels a tap load, P FMA chains), with
// the ReLU-mask and BN1-sum epilogue: gu = (scale1*z1 + shift1 > 0) ? acc : 0, sum_g += gu,
// sum_gz += gu * (z1 - center1). The former per-pixel gather built its tap list per pixel and
// ran channels below a 16-block scalar (11.6 ms for 8 channels at 64x32x32, the forward 1.6).
template <int K, typename V, int P = kRowPixels, int B = 1, bool Rev = false>
inline int64_t bwd_row_blocks(const float* const* rowp, int kh0, int kh1, const float* __restrict__ wf, int64_t C,
                              int64_t c_begin, int64_t iw_begin, int64_t W, float* __restrict__ orow,
                              const float* __restrict__ zrow, const float* __restrict__ a, const float* __restrict__ b,
                              const float* __restrict__ m, float* __restrict__ fs, float* __restrict__ fq) {
  constexpr int L = sizeof(V) / sizeof(float);
  const V zero = {};
  int64_t c_end = c_begin;
  while (c_end + L <= C) c_end += L;
  if (c_end == c_begin) return c_begin;
  const float* r[K];
  for (int kh = 0; kh < K; ++kh) r[kh] = rowp[kh];
  // The ReLU mask and BN1's sums of np pixels of one channel block, in pixel order.
  auto epilogue = [&](const V* ac, int np, int64_t iw, int64_t c0) {
    const V av = vload<V>(a + c0), bv = vload<V>(b + c0), mv = vload<V>(m + c0);
    V sv = vload<V>(fs + c0), qv = vload<V>(fq + c0);
    for (int q = 0; q < np; ++q) {
      const V zv = vload<V>(zrow + (iw + q) * C + c0);
      const V gu = av * zv + bv > zero ? ac[q] : zero;
      vstore<V>(orow + (iw + q) * C + c0, gu);
      sv += gu;
      qv += gu * (zv - mv);
    }
    vstore<V>(fs + c0, sv);
    vstore<V>(fq + c0, qv);
  };
  for (int64_t iw = iw_begin; iw < W; iw += P) {
    const int np = static_cast<int>(std::min<int64_t>(P, W - iw));
    int64_t c0 = c_begin;
    if constexpr (B > 1) {
      for (; np == P && c0 + B * L <= c_end; c0 += B * L) {
        V ac[B][P];
        taps_accumulate_blocks<K, 1, V, P, B, Rev>(r, wf, C, iw, c0, kh0, kh1, ac);
        for (int bb = 0; bb < B; ++bb) epilogue(ac[bb], P, iw, c0 + bb * L);
      }
    }
    for (; c0 < c_end; c0 += L) {
      V ac[P];
      taps_accumulate<K, 1, V, P, Rev>(r, wf, C, iw, c0, kh0, kh1, np, ac);
      epilogue(ac, np, iw, c0);
    }
  }
  return c_end;
}

// Channel blocks of kW, then at most one of 8; returns the first channel left to the gather loop. v4 at k = 5:
// pixels in blocks of 8 first, then the rest in blocks of 4 with two kW-blocks at a time, the padding rows' taps
// skipped (as the forward's conv_row_fast). Rev: the taps in the gather's order (v4's 16-blocks at k = 5 on images
// narrower than 16, which gathered until the nineteenth session, so their bits stay).
template <int K, bool Rev = false>
int64_t bwd_row_fast(const float* const* rowp, int kh0, int kh1, const float* wf, int64_t C, int64_t W, float* orow,
                     const float* zrow, const float* a, const float* b, const float* m, float* fs, float* fq) {
  int64_t w8 = 0;
#if defined(FBNET_ISA_V4)
  if constexpr (K == 5) w8 = W / 8 * 8;
  if (w8 > 0) {
    const int64_t c = bwd_row_blocks<K, VW, 8, 1, Rev>(rowp, kh0, kh1, wf, C, 0, 0, w8, orow, zrow, a, b, m, fs, fq);
    bwd_row_blocks<K, V8, 8>(rowp, kh0, kh1, wf, C, c, 0, w8, orow, zrow, a, b, m, fs, fq);
  }
  constexpr int B = K == 5 ? 2 : 1;
#else
  constexpr int B = 1;
#endif
  const int64_t c = bwd_row_blocks<K, VW, kRowPixels, B, Rev>(rowp, kh0, kh1, wf, C, 0, w8, W, orow, zrow, a, b, m,
                                                               fs, fq);
  return bwd_row_blocks<K, V8>(rowp, kh0, kh1, wf, C, c, w8, W, orow, zrow, a, b, m, fs, fq);
}

// grad_in of one pixel, channels [c0, c0 + |V|): the sum over its nt (tap, output) pairs, in tap
// order, then the ReLU mask and the BN1 sums (the gather path: stride 2, other k, remainders).
template <typename V>
inline void gather_block(const float* __restrict__ wt, const float* __restrict__ gp, const int64_t* taps,
                         const int64_t* offs, int64_t nt, const float* __restrict__ zr, const float* __restrict__ a,
                         const float* __restrict__ b, const float* __restrict__ m, int64_t c0,
                         float* __restrict__ o, float* __restrict__ fs, float* __restrict__ fq) {
  V ac = {};
  for (int64_t t = 0; t < nt; ++t) ac += vload<V>(wt + taps[t] + c0) * vload<V>(gp + offs[t] + c0);
  const V zero = {}, zv = vload<V>(zr + c0);
  const V gu = vload<V>(a + c0) * zv + vload<V>(b + c0) > zero ? ac : zero;
  vstore<V>(o + c0, gu);
  vstore<V>(fs + c0, vload<V>(fs + c0) + gu);
  vstore<V>(fq + c0, vload<V>(fq + c0) + gu * (zv - vload<V>(m + c0)));
}

// grad_weight[kh, kw] += sum_ow h[ow*s - p + kw] * g[ow] for every kw at once, channels [c0, c0 + L):
// the K accumulators stay in registers and each g[ow] is loaded once for the K taps (wgrad_block
// below reloads it per tap: 2 loads a FMA). Each tap still sums ow in increasing order and adds once
// to d, as wgrad_block does (the compiler may contract differently: float32 rounding apart, the same).
// 1.06-1.85x the backward with the weight gradient (bench: AMD EPYC Zen 4, 1 thread, v4).
template <int K, typename V>
inline void wgrad_row_taps(const float* __restrict__ hrow, const float* __restrict__ grow, int64_t C, int64_t c0,
                           int64_t W, int64_t Wo, int64_t stride, float* __restrict__ d) {
  constexpr int64_t p = K / 2;
  V ac[K];
  const V zero = {};
  for (int kw = 0; kw < K; ++kw) ac[kw] = zero;
  for (int64_t ow = 0; ow < Wo; ++ow) {
    const V g = vload<V>(grow + ow * C + c0);
    const int64_t base = ow * stride - p;
    if (base >= 0 && base + K <= W) {
      for (int kw = 0; kw < K; ++kw) ac[kw] += vload<V>(hrow + (base + kw) * C + c0) * g;
    } else {
      for (int kw = 0; kw < K; ++kw)
        if (base + kw >= 0 && base + kw < W) ac[kw] += vload<V>(hrow + (base + kw) * C + c0) * g;
    }
  }
  for (int kw = 0; kw < K; ++kw) vstore<V>(d + kw * C + c0, vload<V>(d + kw * C + c0) + ac[kw]);
}

// wgrad_row_taps for stride 1 with a sliding window: the K inputs h[ow - p .. ow - p + K - 1] stay in
// registers and each step loads one new input (ow advancing by 1 shifts the window by 1), so a FMA needs
// 2 / K loads instead of (K + 1) / K (the loop above was load-bound: 512-bit loads issue at one a cycle on
// Zen 4, as do 512-bit FMAs). The window is unrolled by K so every slot index is a constant (registers, not
// memory). Each tap still sums ow in increasing order (edges, interior, edges) and adds once to d: the same
// sums as wgrad_row_taps. Measured (AMD EPYC Zen 4, v4, 1 and 2 threads): the backward with the weight
// gradient 1.03-1.12x at k = 5 on the 16x16 and 32x32 layers' shapes, 0.97-1.04x at k = 3.
template <int K, typename V>
inline void wgrad_row_taps_s1(const float* __restrict__ hrow, const float* __restrict__ grow, int64_t C, int64_t c0,
                              int64_t W, float* __restrict__ d) {
  constexpr int64_t p = K / 2;
  V ac[K];
  const V zero = {};
  for (int kw = 0; kw < K; ++kw) ac[kw] = zero;
  // interior: ow - p >= 0 and ow - p + K <= W; stride 1 so Wo == W
  const int64_t lo = std::min<int64_t>(p, W);
  const int64_t hi = std::max<int64_t>(lo, W - K + p + 1);
  auto edge = [&](int64_t ow) {
    const V g = vload<V>(grow + ow * C + c0);
    for (int kw = 0; kw < K; ++kw) {
      const int64_t iw = ow - p + kw;
      if (iw >= 0 && iw < W) ac[kw] += vload<V>(hrow + iw * C + c0) * g;
    }
  };
  for (int64_t ow = 0; ow < lo; ++ow) edge(ow);
  int64_t ow = lo;
  if (ow + K <= hi) {
    V hv[K];
#pragma GCC unroll 8
    for (int t = 0; t < K - 1; ++t) hv[t] = vload<V>(hrow + (ow - p + t) * C + c0);
    for (; ow + K <= hi; ow += K) {
      // slot t % K holds h at ow - p + t (t = 0 .. 2K - 2 over the K steps)
#pragma GCC unroll 8
      for (int j = 0; j < K; ++j) {
        hv[(j + K - 1) % K] = vload<V>(hrow + (ow - p + j + K - 1) * C + c0);
        const V g = vload<V>(grow + (ow + j) * C + c0);
#pragma GCC unroll 8
        for (int kw = 0; kw < K; ++kw) ac[kw] += hv[(j + kw) % K] * g;
      }
    }
  }
  for (; ow < hi; ++ow) {
    const V g = vload<V>(grow + ow * C + c0);
    for (int kw = 0; kw < K; ++kw) ac[kw] += vload<V>(hrow + (ow - p + kw) * C + c0) * g;
  }
  for (ow = hi; ow < W; ++ow) edge(ow);
  for (int kw = 0; kw < K; ++kw) vstore<V>(d + kw * C + c0, vload<V>(d + kw * C + c0) + ac[kw]);
}

// grad_weight[tap] += sum_ow h[ow*s - p + kw] * g[ow] over channels [c0, c0 + L): registers over ow.
template <typename V>
inline void wgrad_block(const float* __restrict__ hrow, const float* __restrict__ grow, int64_t C, int64_t c0,
                        int64_t lo, int64_t hi, int64_t stride, int64_t off, float* __restrict__ d) {
  V ac = {};
  for (int64_t ow = lo; ow < hi; ++ow) ac += vload<V>(hrow + (ow * stride + off) * C + c0) * vload<V>(grow + ow * C + c0);
  vstore<V>(d + c0, vload<V>(d + c0) + ac);
}

// One output row's statistics, in place: fs [C] (the row's channel sums) becomes the row mean (times 1 / Wo, as a
// float), fq [C] the centred sum of squares sum_ow (o - mean)^2 in ow order. Channel blocks outermost with the sum
// in a register: the pixel-outer loop stored fq back every pixel (~10 % of the 8x8 forward, perf, AMD EPYC Zen 4).
// The same operations per element in the same order (madd), so the same bits.
inline void row_centred_squares(const float* __restrict__ orow, int64_t Wo, int64_t C, float* __restrict__ fs,
                                float* __restrict__ fq) {
  const float inv = 1.0f / static_cast<float>(Wo);
  int64_t c0 = 0;
  for (; c0 + kW <= C; c0 += kW) {
    const VW mv = vload<VW>(fs + c0) * inv;
    VW qv = {};
    for (int64_t ow = 0; ow < Wo; ++ow) {
      const VW d = vload<VW>(orow + ow * C + c0) - mv;
      qv = madd(d, d, qv);
    }
    vstore<VW>(fs + c0, mv);
    vstore<VW>(fq + c0, qv);
  }
  for (int64_t c = c0; c < C; ++c) {
    const float mean = fs[c] * inv;
    float q = 0.0f;
    for (int64_t ow = 0; ow < Wo; ++ow) {
      const float d = orow[ow * C + c] - mean;
      q = madd(d, d, q);
    }
    fs[c] = mean;
    fq[c] = q;
  }
}

// activate_row for rows of C = B * kW (+ 8 with Tail8) channels, scale and shift in registers across the pixels: the
// per-channel loop reloaded them, and set its loop up, for each pixel (at 8 channels a pixel is one vector). Per
// element relu(a * z + b) with the FMA gcc contracts the loop's to (madd): the same bits.
template <int B, bool Tail8>
void activate_row_regs(const float* __restrict__ src, int64_t W, int64_t C, const float* __restrict__ a,
                       const float* __restrict__ b, float* __restrict__ dst) {
  constexpr int NB = B > 0 ? B : 1;
  VW va[NB], vb[NB];
  for (int j = 0; j < B; ++j) {
    va[j] = vload<VW>(a + j * kW);
    vb[j] = vload<VW>(b + j * kW);
  }
  constexpr int64_t t = B * kW;  // the 8-channel tail's first channel
  V8 ta = {}, tb = {};
  if constexpr (Tail8) {
    ta = vload<V8>(a + t);
    tb = vload<V8>(b + t);
  }
  const VW zw = {};
  const V8 z8 = {};
  for (int64_t iw = 0; iw < W; ++iw) {
    const float* x = src + iw * C;
    float* y = dst + iw * C;
    for (int j = 0; j < B; ++j) {
      const VW h = madd(va[j], vload<VW>(x + j * kW), vb[j]);
      vstore<VW>(y + j * kW, h < zw ? zw : h);  // std::max(h, 0): keeps NaN
    }
    if constexpr (Tail8) {
      const V8 h = madd(ta, vload<V8>(x + t), tb);
      vstore<V8>(y + t, h < z8 ? z8 : h);
    }
  }
}

}  // namespace

// h1 = relu(scale1 * z1 + shift1) of one row of W pixels x C channels (the forward's activated input row).
void activate_row(const float* __restrict__ src, int64_t W, int64_t C, const float* __restrict__ a,
                  const float* __restrict__ b, float* __restrict__ dst) {
  // up to 4 blocks: two vectors a block (scale, shift) in registers
  if (with_row_blocks<4>(C, [&](auto B, auto T8) {
        activate_row_regs<decltype(B)::value, decltype(T8)::value>(src, W, C, a, b, dst);
      }))
    return;
  for (int64_t iw = 0; iw < W; ++iw) {
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) dst[iw * C + c] = std::max(a[c] * src[iw * C + c] + b[c], 0.0f);
  }
}

// One output row of the depthwise conv from the k activated input rows rowp[kh] (zero-padded by k / 2 columns),
// of which [kh0, kh1) lie inside the image (the others are rows of zeros: where kSkipPadRows their taps are
// skipped, leaving every sum as it was): orow [Wo, C] written, its per-channel sum added to fs [C], and with hrow
// relu(a2 * orow + b2) written there too.
// acc: C floats of scratch. k in {3, 5}: register-resident taps for whole channel blocks (conv_row_dispatch);
// the generic loop does the rest (other k, and the last C % 8 channels).
void conv_row(const float* const* rowp, int kh0, int kh1, const float* __restrict__ wt, int64_t k, int64_t stride,
              int64_t C, int64_t Wo, float* __restrict__ orow, float* __restrict__ fs, const float* __restrict__ a2,
              const float* __restrict__ b2, float* __restrict__ hrow, float* __restrict__ acc) {
  const bool act2 = hrow != nullptr;
  const int64_t cfast = conv_row_dispatch(k, stride, rowp, kh0, kh1, wt, C, Wo, orow, fs, a2, b2, hrow);
  for (int64_t ow = 0; cfast < C && ow < Wo; ++ow) {
    float* __restrict__ o = orow + ow * C;
    float* __restrict__ hv = act2 ? hrow + ow * C : nullptr;
    const int64_t aoff = ow * stride * C;
    // Channel blocks of kV accumulate in registers over the k*k taps; the
    // generic per-channel loop kept the accumulator in memory and ran ~3x slower.
    int64_t c0 = cfast;
    for (; c0 + kV <= C; c0 += kV) {
      float ac[kV] = {};
      for (int64_t kh = kh0; kh < kh1; ++kh) {
        const float* __restrict__ arow = rowp[kh] + aoff + c0;
        const float* __restrict__ wrow = wt + kh * k * C + c0;
        for (int64_t kw = 0; kw < k; ++kw) {
#pragma omp simd
          for (int j = 0; j < kV; ++j) ac[j] += wrow[kw * C + j] * arow[kw * C + j];
        }
      }
#pragma omp simd
      for (int j = 0; j < kV; ++j) {
        o[c0 + j] = ac[j];
        fs[c0 + j] += ac[j];
      }
      if (act2) {
#pragma omp simd
        for (int j = 0; j < kV; ++j) hv[c0 + j] = std::max(a2[c0 + j] * ac[j] + b2[c0 + j], 0.0f);
      }
    }
    if (c0 < C) {
      float* __restrict__ ac = acc;
      std::fill(ac + c0, ac + C, 0.0f);
      for (int64_t kh = kh0; kh < kh1; ++kh)
        for (int64_t kw = 0; kw < k; ++kw) {
          const float* __restrict__ x = rowp[kh] + aoff + kw * C;
          const float* __restrict__ w = wt + (kh * k + kw) * C;
          for (int64_t c = c0; c < C; ++c) ac[c] += w[c] * x[c];
        }
      for (int64_t c = c0; c < C; ++c) {
        o[c] = ac[c];
        fs[c] += ac[c];
        if (act2) hv[c] = std::max(a2[c] * ac[c] + b2[c], 0.0f);
      }
    }
  }
}

void dwconv_bn_forward(buf_t z1, int64_t N, int64_t H, int64_t W, int64_t C, buf_t scale1,
                       buf_t shift1, buf_t weight, int64_t k, int64_t stride, buf_t out,
                       buf_t mean_out, buf_t var_out, buf_t scale2, buf_t shift2, buf_t act_out) {
  check_conv_args(N, H, W, C, k, stride);
  check_buf(z1, "z1"); check_buf(scale1, "scale1"); check_buf(shift1, "shift1");
  check_buf(weight, "weight"); check_buf(out, "out");
  check_buf(mean_out, "mean", true); check_buf(var_out, "var", true);
  check_buf(scale2, "scale2", true); check_buf(shift2, "shift2", true); check_buf(act_out, "act_out", true);
  const bool stats = mean_out != 0;
  check(stats == (var_out != 0), "mean and var must both be given or both be None");
  // With act_out, relu(scale2 * out + shift2) is written too, from registers: the
  // recomputation in backward (BN2 known) then skips a separate read of out.
  const bool act2 = act_out != 0;
  check(act2 == (scale2 != 0) && act2 == (shift2 != 0), "scale2, shift2 and act_out must all be given or all None");
  const float* __restrict__ a2 = CF(scale2);
  const float* __restrict__ b2 = CF(shift2);
  float* __restrict__ hp = F(act_out);
  const int64_t p = k / 2, Ho = (H - 1) / stride + 1, Wo = (W - 1) / stride + 1, Wp = W + 2 * p;
  const float* __restrict__ zp = CF(z1);
  const float* __restrict__ a = CF(scale1);
  const float* __restrict__ b = CF(shift1);
  const float* __restrict__ wt = CF(weight);  // [k*k, C]
  float* __restrict__ op = F(out);
  const int64_t rows = N * Ho;
  const int64_t R = rows_per_chunk(Wo * C, rows);
  const int64_t nch = (rows + R - 1) / R;
  std::vector<double> part(stats ? static_cast<size_t>(nch) * 2 * C : 0);
#pragma omp parallel
  {
    // k activated input rows, zero-padded by p columns each side.
    std::vector<float> act(static_cast<size_t>(k) * Wp * C, 0.0f);
    std::vector<float> acc(C), rs(C), rq(C);
    constexpr int64_t kNone = -1, kZero = -2;  // slot tags besides a row index n*H + ih
    int64_t held[32];
    const float* rowp[32];
#pragma omp for schedule(static)
    for (int64_t ch = 0; ch < nch; ++ch) {
      double* __restrict__ s = stats ? part.data() + ch * 2 * C : nullptr;
      double* __restrict__ q = stats ? s + C : nullptr;
      float* __restrict__ fs = rs.data();
      float* __restrict__ fq = rq.data();
      const int64_t r1 = std::min(rows, (ch + 1) * R);
      // Ring of k activated rows: input row ih lives in slot ih mod k while the output
      // rows of its image that read it are produced, so each row is activated once per
      // chunk, not k / stride times (that was ~25 % of the k=3 forward's work).
      for (int64_t i = 0; i < k; ++i) held[i] = kNone;
      for (int64_t r = ch * R; r < r1; ++r) {
        const int64_t n = r / Ho, oh = r % Ho;
        for (int64_t kh = 0; kh < k; ++kh) {
          const int64_t ih = oh * stride - p + kh;
          const int64_t slot = ((ih % k) + k) % k;
          const bool pad = ih < 0 || ih >= H;
          const int64_t tag = pad ? kZero : n * H + ih;
          rowp[kh] = act.data() + slot * Wp * C;
          if (held[slot] == tag) continue;
          held[slot] = tag;
          float* __restrict__ dst = act.data() + slot * Wp * C + p * C;
          if (pad) {
            std::fill(dst, dst + W * C, 0.0f);
            continue;
          }
          activate_row(zp + ((n * H + ih) * W) * C, W, C, a, b, dst);
        }
        if (r + 1 < r1) {  // the input rows the next output row activates (at an image's first row: its last stride)
          const int64_t n1 = (r + 1) / Ho, oh1 = (r + 1) % Ho;
          for (int64_t kh = std::max<int64_t>(0, k - stride); kh < k; ++kh) {
            const int64_t ih = oh1 * stride - p + kh;
            if (ih >= 0 && ih < H) prefetch_floats(zp + (n1 * H + ih) * W * C, W * C);
          }
        }
        float* __restrict__ orow = op + r * Wo * C;
        // Statistics in float over one output row (<= a few hundred pixels), in
        // double across rows: vectorises, and keeps the error at eager's level.
        std::fill(fs, fs + C, 0.0f);
        std::fill(fq, fq + C, 0.0f);
        const auto [kh0, kh1] = tap_rows_inside(oh * stride - p, k, H);
        conv_row(rowp, kh0, kh1, wt, k, stride, C, Wo, orow, fs, a2, b2, act2 ? hp + r * Wo * C : nullptr,
                 acc.data());
        if (stats) {
          // Row mean and centred sum of squares (second pass over the row, in cache),
          // merged into the chunk's running (mean, M2) with Chan's formula: with few
          // pixels per channel (2x2 -> 1x1 at batch 2) E[z^2] - E[z]^2 lost 5 digits.
          row_centred_squares(orow, Wo, C, fs, fq);
          const double na = static_cast<double>(r - ch * R) * Wo, nb = static_cast<double>(Wo);
          const double f = nb / (na + nb), g = na * nb / (na + nb);
          for (int64_t c = 0; c < C; ++c) {
            const double delta = fs[c] - s[c];
            s[c] += delta * f;
            q[c] += fq[c] + delta * delta * g;
          }
        }
      }
    }
  }
  if (!stats) return;
  float* mo = F(mean_out);
  float* vo = F(var_out);
  // Chunks hold (mean, M2) of R rows each (the last maybe fewer); merge in chunk order.
  for (int64_t c = 0; c < C; ++c) {
    double mean = 0, m2 = 0, n = 0;
    for (int64_t ch = 0; ch < nch; ++ch) {
      const double nb = static_cast<double>(std::min(rows, (ch + 1) * R) - ch * R) * Wo;
      const double delta = part[ch * 2 * C + c] - mean;
      mean += delta * nb / (n + nb);
      m2 += part[ch * 2 * C + C + c] + delta * delta * n * nb / (n + nb);
      n += nb;
    }
    mo[c] = static_cast<float>(mean);
    vo[c] = static_cast<float>(m2 / n);
  }
}

void dwconv_bn_backward(buf_t grad_out, buf_t z1, int64_t N, int64_t H, int64_t W, int64_t C,
                        buf_t scale1, buf_t shift1, buf_t weight, int64_t k, int64_t stride,
                        buf_t center1, buf_t grad_in, buf_t grad_weight, buf_t sum_g,
                        buf_t sum_gz) {
  check_conv_args(N, H, W, C, k, stride);
  check_buf(grad_out, "grad_out"); check_buf(z1, "z1"); check_buf(scale1, "scale1");
  check_buf(shift1, "shift1"); check_buf(weight, "weight"); check_buf(center1, "center1");
  check_buf(grad_in, "grad_in"); check_buf(grad_weight, "grad_weight", true);
  // grad_weight == 0: not wanted (a theta step of the search, weights frozen): the
  // weight-gradient loop, about half the pass's FMAs, is skipped.
  const bool wgrad = grad_weight != 0;
  check_buf(sum_g, "sum_g"); check_buf(sum_gz, "sum_gz");
  const int64_t p = k / 2, Ho = (H - 1) / stride + 1, Wo = (W - 1) / stride + 1, KK = k * k;
  const float* __restrict__ gp = CF(grad_out);
  const float* __restrict__ zp = CF(z1);
  const float* __restrict__ a = CF(scale1);
  const float* __restrict__ b = CF(shift1);
  const float* __restrict__ m = CF(center1);
  const float* __restrict__ wt = CF(weight);
  float* __restrict__ gi = F(grad_in);
  const int64_t rows = N * H;
  const int64_t R = rows_per_chunk(W * C, rows);
  const int64_t nch = (rows + R - 1) / R;
  const int64_t stride_part = (KK + 2) * C;
  // Not zeroed here: each chunk writes its own (a serial zero fill of nch x (k*k + 2) x C doubles: 2.9 MB for the
  // width-1.0 8x8 layer's 20 chunks of 672 channels).
  std::unique_ptr<double[]> part(new double[static_cast<size_t>(nch * stride_part)]);
  // Per input column iw, the (kw, ow) taps it feeds, computed once: built per pixel
  // with two integer divisions a tap, they cost more than the k=5 FMAs they fed.
  std::vector<int64_t> col_n(W), col_kw(static_cast<size_t>(W) * k), col_ow(static_cast<size_t>(W) * k);
  for (int64_t iw = 0; iw < W; ++iw) {
    int64_t cnt = 0;
    for (int64_t kw = 0; kw < k; ++kw) {
      const int64_t t = iw + p - kw;
      if (t < 0 || t % stride || t / stride >= Wo) continue;
      col_kw[iw * k + cnt] = kw;
      col_ow[iw * k + cnt++] = t / stride;
    }
    col_n[iw] = cnt;
  }
  // Stride 1 with k in {3, 5}: grad_in by the forward-style row kernel (bwd_row_fast) over a
  // ring of k zero-padded grad_out rows, with the kernel flipped: every 16- and 8-channel block; the
  // gather loop below does the remaining channels. Other k and stride 2 gather. In v4 at k = 5 on images
  // narrower than 16 the 16-blocks gathered (the row kernel with 4-pixel blocks measured 0.77-0.93x the gather
  // there); since the nineteenth session the row kernel runs them in the gather's tap order (Rev), with 8-pixel
  // blocks, two channel blocks at a time for 4-pixel rows and the padding rows skipped: the gather's bits, and
  // 1.12-1.60x the backward on 4x4, 8x8 and 16x16 images (bench/cpu/ab_dwconv.py, AMD EPYC Zen 4, AVX-512, v4,
  // 1 thread; k = 3's backward measured 0.92-0.95x there, not traced: its row code is the same as before).
  const bool rowfast = stride == 1 && (k == 3 || k == 5);
  const int64_t Wp = W + 2 * p;
  std::vector<float> wflip(rowfast ? static_cast<size_t>(KK) * C : 0);
  for (int64_t t = 0; rowfast && t < KK; ++t) std::memcpy(wflip.data() + t * C, wt + (KK - 1 - t) * C, C * sizeof(float));
#pragma omp parallel
  {
    std::vector<float> h(W * C), dw(static_cast<size_t>(KK) * C), rs(C), rq(C);
    std::vector<float> gring(rowfast ? static_cast<size_t>(k) * Wp * C : 0, 0.0f);
    constexpr int64_t kNone = -1, kZero = -2;
    int64_t held[32];
    const float* rowp[32];
#pragma omp for schedule(static)
    for (int64_t ch = 0; ch < nch; ++ch) {
      // Weight-grad partials in float within a chunk (<= 64K elements), in double
      // across chunks, added in chunk order.
      std::fill(dw.begin(), dw.end(), 0.0f);
      double* __restrict__ s = part.get() + ch * stride_part + KK * C;
      double* __restrict__ q = s + C;
      std::fill(s, s + 2 * C, 0.0);  // the rows' sums are added in
      const int64_t r1 = std::min(rows, (ch + 1) * R);
      float* __restrict__ fs = rs.data();
      float* __restrict__ fq = rq.data();
      for (int64_t i = 0; i < k; ++i) held[i] = kNone;
      for (int64_t r = ch * R; r < r1; ++r) {
        const int64_t n = r / H, ih = r % H;
        const float* __restrict__ zrow = zp + r * W * C;
        float* __restrict__ hrow = h.data();
        // The next row's z1 and grad_out asked into L2 while this row computes: a perf profile of the weight step put
        // 19 % of this kernel on the h loop's loads below, each row's first touch of z1 (the hardware prefetcher had
        // no stream to follow across the row's other work). Measured in one process against the build without
        // (bench/cpu/ab_so.py, AMD EPYC Zen 4, AVX-512, v4, 1 thread, the same bits; two runs, their medians, fastest
        // rounds and per-round ratios): the default search's weight step 1.015-1.038x, its theta step 1.022-1.038x
        // (the forward's z1 rows, dwconv_bn_forward, included); at 2 threads nothing measurable.
        if (r + 1 < r1) {
          prefetch_floats(zrow + W * C, W * C);
          // the grad_out row the next input row reads first (the ring copies it in, or the gather reads it)
          const int64_t oh1 = (ih + 1 + p) / stride;
          if (oh1 < Ho && ih + 1 < H) prefetch_floats(gp + (n * Ho + oh1) * Wo * C, Wo * C);
        }
        if (wgrad) activate_row(zrow, W, C, a, b, hrow);  // h feeds the weight gradient only
        // Output (oh, ow) reads input (oh*s - p + kh, ow*s - p + kw): the rows oh this
        // input row feeds, one per kh at most.
        int64_t ohs[32];
        for (int64_t kh = 0; kh < k; ++kh) {
          const int64_t t = ih + p - kh;
          ohs[kh] = (t < 0 || t % stride || t / stride >= Ho) ? -1 : t / stride;
        }
        std::fill(fs, fs + C, 0.0f);
        std::fill(fq, fq + C, 0.0f);
        // Gather ranges: kW-channel blocks in [0, g16), 8-channel blocks in [g16, g8) (v4's remainder
        // of 8 or more channels: e1 candidates have 8, e3 24), single channels in [gs, C).
        int64_t cfast = 0, g16 = C / kW * kW, g8 = g16 + (C - g16) / 8 * 8, gs = g8;
        if (rowfast) {
          // grad_out rows ih - p .. ih + p (Ho == H), each copied once per chunk into slot oh mod k.
          for (int64_t kh = 0; kh < k; ++kh) {
            const int64_t oh = ih - p + kh;
            const int64_t slot = ((oh % k) + k) % k;
            const bool pad = oh < 0 || oh >= Ho;
            const int64_t tag = pad ? kZero : n * Ho + oh;
            rowp[kh] = gring.data() + slot * Wp * C;
            if (held[slot] == tag) continue;
            held[slot] = tag;
            float* __restrict__ dst = gring.data() + slot * Wp * C + p * C;
            if (pad) std::fill(dst, dst + W * C, 0.0f);
            else std::memcpy(dst, gp + (n * Ho + oh) * Wo * C, W * C * sizeof(float));
          }
          const auto [kh0, kh1] = tap_rows_inside(ih - p, k, Ho);  // of grad_out rows ih - p .. ih + p
          float* __restrict__ orow = gi + r * W * C;
          const float* wf = wflip.data();
          if (k == 3) cfast = bwd_row_fast<3>(rowp, kh0, kh1, wf, C, W, orow, zrow, a, b, m, fs, fq);
          else if (kW == 8 || W >= 16) cfast = bwd_row_fast<5>(rowp, kh0, kh1, wf, C, W, orow, zrow, a, b, m, fs, fq);
          else cfast = bwd_row_fast<5, true>(rowp, kh0, kh1, wf, C, W, orow, zrow, a, b, m, fs, fq);
          g16 = g8 = 0;
          gs = cfast;
        }
        // grad_in, the rest: gather every output this pixel feeds, kW- and 8-channel blocks in
        // [0, g8) and single channels in [gs, C); accumulator in registers.
        for (int64_t iw = 0; (g8 > 0 || gs < C) && iw < W; ++iw) {
          int64_t taps[32 * 32], offs[32 * 32], nt = 0;
          const int64_t* ckw = col_kw.data() + iw * k;
          const int64_t* cow = col_ow.data() + iw * k;
          for (int64_t kh = 0; kh < k; ++kh) {
            if (ohs[kh] < 0) continue;
            const int64_t rowoff = (n * Ho + ohs[kh]) * Wo;
            for (int64_t i = 0; i < col_n[iw]; ++i) {
              taps[nt] = (kh * k + ckw[i]) * C;
              offs[nt++] = (rowoff + cow[i]) * C;
            }
          }
          const float* __restrict__ zr = zrow + iw * C;
          float* __restrict__ o = gi + (r * W + iw) * C;
          // Explicit vectors: gcc vectorised the loop above over taps (gathers) instead.
          for (int64_t c0 = 0; c0 < g16; c0 += kW) gather_block<VW>(wt, gp, taps, offs, nt, zr, a, b, m, c0, o, fs, fq);
          for (int64_t c0 = g16; c0 < g8; c0 += 8) gather_block<V8>(wt, gp, taps, offs, nt, zr, a, b, m, c0, o, fs, fq);
          for (int64_t c = gs; c < C; ++c) {
            float acc1 = 0.0f;
            for (int64_t t = 0; t < nt; ++t) acc1 += wt[taps[t] + c] * gp[offs[t] + c];
            const float gu = a[c] * zr[c] + b[c] > 0.0f ? acc1 : 0.0f;
            o[c] = gu;
            fs[c] += gu;
            fq[c] += gu * (zr[c] - m[c]);
          }
        }
        for (int64_t c = 0; c < C; ++c) {
          s[c] += fs[c];
          q[c] += fq[c];
        }
        // grad_weight[kh, kw] += sum_ow h[ih, ow*s - p + kw] * g[oh, ow]; registers over ow.
        for (int64_t kh = 0; wgrad && kh < k; ++kh) {
          if (ohs[kh] < 0) continue;
          const float* __restrict__ grow = gp + (n * Ho + ohs[kh]) * Wo * C;
          int64_t cw = 0;  // k in {3, 5}: whole channel blocks with all k taps in registers, then the rest below
          float* __restrict__ dk = dw.data() + kh * k * C;
          if (stride == 1 && (k == 3 || k == 5)) {  // the sliding window
            if (k == 3) {
              for (; cw + kW <= C; cw += kW) wgrad_row_taps_s1<3, VW>(hrow, grow, C, cw, W, dk);
              for (; cw + 8 <= C; cw += 8) wgrad_row_taps_s1<3, V8>(hrow, grow, C, cw, W, dk);
            } else {
              for (; cw + kW <= C; cw += kW) wgrad_row_taps_s1<5, VW>(hrow, grow, C, cw, W, dk);
              for (; cw + 8 <= C; cw += 8) wgrad_row_taps_s1<5, V8>(hrow, grow, C, cw, W, dk);
            }
          } else if (k == 3) {
            for (; cw + kW <= C; cw += kW) wgrad_row_taps<3, VW>(hrow, grow, C, cw, W, Wo, stride, dk);
            for (; cw + 8 <= C; cw += 8) wgrad_row_taps<3, V8>(hrow, grow, C, cw, W, Wo, stride, dk);
          } else if (k == 5) {
            for (; cw + kW <= C; cw += kW) wgrad_row_taps<5, VW>(hrow, grow, C, cw, W, Wo, stride, dk);
            for (; cw + 8 <= C; cw += 8) wgrad_row_taps<5, V8>(hrow, grow, C, cw, W, Wo, stride, dk);
          }
          for (int64_t kw = 0; cw < C && kw < k; ++kw) {
            // ow with 0 <= ow*s - p + kw < W
            const int64_t lo = std::max<int64_t>(0, (p - kw + stride - 1) / stride);
            const int64_t last = W - 1 + p - kw;  // may be < 0 when W < k: no ow at all
            const int64_t hi = last < 0 ? 0 : std::min<int64_t>(Wo, last / stride + 1);
            float* __restrict__ d = dw.data() + (kh * k + kw) * C;
            int64_t c0 = cw;
            for (; c0 + kW <= C; c0 += kW) wgrad_block<VW>(hrow, grow, C, c0, lo, hi, stride, kw - p, d);
            for (; c0 + 8 <= C; c0 += 8) wgrad_block<V8>(hrow, grow, C, c0, lo, hi, stride, kw - p, d);
            for (int64_t c = c0; c < C; ++c) {
              float acc1 = 0.0f;
              for (int64_t ow = lo; ow < hi; ++ow) acc1 += hrow[(ow * stride - p + kw) * C + c] * grow[ow * C + c];
              d[c] += acc1;
            }
          }
        }
      }
      double* __restrict__ pd = part.get() + ch * stride_part;
      for (int64_t i = 0; i < KK * C; ++i) pd[i] = dw[i];
    }
  }
  float* gw = F(grad_weight);
  float* so = F(sum_g);
  float* qo = F(sum_gz);
  // Chunk-major within a block of elements: the same per-element order (chunks ascending) as a per-element loop
  // over chunks, but sequential reads; that strided loop (a (k*k+2)*C*8-byte stride per add) was the largest
  // single cost of the k=5 backward in a profile. Blocks of elements across the threads (the sum was serial:
  // nch x (k*k + 2) x C adds; with the fill above, 4x4 x 1,104 channels at k = 5 went 0.82-0.84 -> 0.71-0.72 ms,
  // 2 threads, AMD EPYC Zen 4, AVX-512). Each block's sums go straight to the outputs.
  constexpr int64_t kSumBlock = 512;
#pragma omp parallel for schedule(static)
  for (int64_t i0 = 0; i0 < stride_part; i0 += kSumBlock) {
    const int64_t i1 = std::min(stride_part, i0 + kSumBlock);
    double t[kSumBlock];
    for (int64_t i = i0; i < i1; ++i) t[i - i0] = part[i];
    for (int64_t ch = 1; ch < nch; ++ch) {
      const double* __restrict__ pc = part.get() + ch * stride_part;
#pragma omp simd
      for (int64_t i = i0; i < i1; ++i) t[i - i0] += pc[i];
    }
    for (int64_t i = i0; i < i1; ++i) {
      const float acc = static_cast<float>(t[i - i0]);
      if (i < KK * C) {
        if (wgrad) gw[i] = acc;
      } else if (i < KK * C + C) {
        so[i - KK * C] = acc;
      } else {
        qo[i - KK * C - C] = acc;
      }
    }
  }
}

}  // namespace FBNET_ISA
}  // namespace fbnet
FBNET_ISA_END
