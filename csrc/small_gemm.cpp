// Small dense products on channels-last rows: out[M, N] (+)= A[M, K] @ B[K, N], for the
// mixed op's 1x1 convolutions when K and N are both small (a narrow network: width 0.25 has
// 8-88 channels). A BLAS sgemm is built for large K and N; on [65536, 8] x [8, 48] it ran
// at ~20 GFLOP/s (1 thread, AMD EPYC Zen 4), several times below what writing the output
// costs. Here every output row is P rows x NB vectors of accumulators held in registers,
// each B vector loaded once for the P rows and each A element broadcast once for the NB
// vectors: output-stationary, one pass over A and one write of out.
// Reference: torch.mm (fbnet_fast/ops/gemm.py, small_mm_ref).
//
// Summation order: k = 0 .. K-1 sequentially, float32 FMA, so a row's result does not depend
// on the thread count or on where the row falls in a block (the last M % 4 rows too: see gemm_rows).
//
// Two fusions for the mixed op (each saves a pass over an activation tensor in memory):
// * a prologue on A: relu(scale[k] * A[m, k] + shift[k]) (a BatchNorm + ReLU folded to an affine,
//   the input of an IR block's last 1x1 conv): 4 rows of A are transformed into an L1 buffer and
//   the tile reads that, so the activated tensor is never written;
// * the output's per-column batch statistics (mean, biased variance) for the BatchNorm after
//   the conv: per 64-row work item, its mean and centred sum of squares over the rows just
//   written (in cache; float32 over <= 64 values), merged in order in float64 (Chan's formula),
//   so the result does not depend on the thread count.
#include "kernels.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#include <immintrin.h>  // vec.h's madd

FBNET_ISA_BEGIN
namespace fbnet {
namespace FBNET_ISA {

namespace {

#include "vec.h"  // V16, V8, VW, vload, vstore (this variant's)

#if defined(FBNET_ISA_V4)
constexpr int kNB = 4;  // VW = one zmm: 4 x 4 accumulators + 4 B vectors of the 32 zmm
#elif defined(FBNET_ISA_V3)
constexpr int kNB = 3;  // VW = one ymm: 4 x 3 accumulators + 3 B vectors + 1 broadcast, the 16 ymm
#else
constexpr int kNB = 2;  // VW = two xmm (base): 4 x 2 x 2 accumulators + 2 x 2 B vectors of the 16 xmm
#endif
constexpr int kP = 4;  // rows per register tile

// The P x NB tile of out at rows a/o, columns [n0, n0 + NB * L) of the padded B (ldb columns);
// only `valid` = N - n0 columns exist in out.
template <typename V, int P, int NB>
inline void tile(const float* __restrict__ a, int64_t lda, int64_t K, const float* __restrict__ b, int64_t ldb,
                 float* __restrict__ o, int64_t ldo, int64_t valid, bool accumulate) {
  constexpr int L = sizeof(V) / sizeof(float);
  V c[P][NB];
  const V zero = {};
  for (int q = 0; q < P; ++q)
    for (int j = 0; j < NB; ++j) c[q][j] = zero;
  for (int64_t k = 0; k < K; ++k) {
    V bv[NB];
    for (int j = 0; j < NB; ++j) bv[j] = vload<V>(b + k * ldb + j * L);
    // Each B vector loaded once for the P rows. gcc had folded it into each of the P FMAs (a 4 x 2 tile: 12 loads
    // for its 8 FMAs, load-bound); pinned, the v3 kernel went from 0.5-0.8x MKL to 0.84-1.5x on the default
    // search's products, and v4's wide ones (N = 88-288) ran 1.3-1.7x faster (bench/cpu/ab_gemm.py, AMD EPYC
    // Zen 4, 1 thread). Same sums.
    for (int j = 0; j < NB; ++j) in_register(bv[j]);
    for (int q = 0; q < P; ++q) {
      const float s = a[q * lda + k];
      for (int j = 0; j < NB; ++j) c[q][j] += s * bv[j];
    }
  }
  for (int q = 0; q < P; ++q) {
    float* orow = o + q * ldo;
    for (int j = 0; j < NB; ++j) {
      const int64_t col = static_cast<int64_t>(j) * L;
      if (col + L <= valid) {
        V r = c[q][j];
        if (accumulate) r += vload<V>(orow + col);
        vstore<V>(orow + col, r);
      } else if (col < valid) {
        float tmp[L];
        vstore<V>(tmp, c[q][j]);
        for (int64_t t = 0; t < valid - col; ++t) orow[col + t] = accumulate ? orow[col + t] + tmp[t] : tmp[t];
      }
    }
  }
}

// The column blocks of a width Np padded to a multiple of 8, widest first: kNB vectors of VW at a time, then (v3)
// at most one block of 2, then single VW vectors, then (v4) at most one block of 8; f(V{}, integral_constant<NB>,
// n0) for each.
template <typename Fn>
inline void column_blocks(int64_t Np, Fn&& f) {
  constexpr int LW = sizeof(VW) / sizeof(float);
  int64_t n0 = 0;
  for (; n0 + kNB * LW <= Np; n0 += kNB * LW) f(VW{}, std::integral_constant<int, kNB>{}, n0);
  if constexpr (kNB == 3)
    for (; n0 + 2 * LW <= Np; n0 += 2 * LW) f(VW{}, std::integral_constant<int, 2>{}, n0);
  for (; n0 + LW <= Np; n0 += LW) f(VW{}, std::integral_constant<int, 1>{}, n0);
  if (LW > 8)
    for (; n0 + 8 <= Np; n0 += 8) f(V8{}, std::integral_constant<int, 1>{}, n0);
}

// relu(sc * src + sh) of `rows` rows of `cols` columns (row strides lds, ldd), per column sc/sh.
inline void affine_relu_rows(const float* __restrict__ src, int64_t lds, int64_t rows, int64_t cols,
                             const float* __restrict__ sc, const float* __restrict__ sh, float* __restrict__ dst,
                             int64_t ldd) {
  for (int64_t q = 0; q < rows; ++q) {
    const float* sr = src + q * lds;
    float* dr = dst + q * ldd;
#pragma omp simd
    for (int64_t k = 0; k < cols; ++k) dr[k] = std::max(sc[k] * sr[k] + sh[k], 0.0f);
  }
}

// Rows of the tiles of single-vector column blocks (NB = 1: the narrow products' only blocks, e.g. an IR block's
// last 1x1 conv into 8 channels, and the remainder vectors of wider ones) where registers allow: a 4-row tile
// has 4 accumulators, 4 FMA chains each waiting on its own last FMA (4 cycles on Zen 4) every k: at most one FMA
// a cycle, half of the two FMA pipes at 8 lanes. 8 rows keep both busy (8 accumulators + 1 B vector: of the 16
// ymm in v3); base (two xmm a V8) stays at 4. Each element is still its own FMA chain over k = 0 .. K-1: the
// same sums, the same bits (a whole supernet's loss and gradients equal to the 4-row build's on v4 and v3).
// Measured in one process against the 4-row build (bench/cpu/ab_so.py, AMD EPYC Zen 4, AVX-512, v4, 1 thread):
// the default search's 32x32 layers (0-5) forward + backward 1.03x (41 rounds, twice); its whole weight step
// 0.96-1.02x on the medians of 21 rounds, within the machine's noise. small_gemm_tn's single-vector column
// blocks take 8 rows of X the same way.
#if defined(FBNET_ISA_V4) || defined(FBNET_ISA_V3)
constexpr int kPNarrow = 8;
#else
constexpr int kPNarrow = 4;
#endif

// The 8-row single-vector tile, out of line. Its loop addresses 8 rows of A (a base and 7 row offsets) besides B,
// its stride and the bound. Inlined into gemm_rows, whose own loops keep their values in registers across it, gcc
// kept 4 of the row offsets on the stack and reloaded them every k (perf: 4 stack loads beside the 8 broadcasts and
// 8 FMAs of each k, v3); the loops of the other tiles there lost registers to it too (2-5 stack loads a k in v3).
// In a function of its own none of the loops has one (bench/results/session30/gemm_rows_loops_v3.txt). The same
// instructions otherwise, so the same bits (small_gemm over base, v3 and v4, 1-4,099 rows x 1-144 x 1-184: plain,
// prologue, accumulate, statistics; equal to the inlined build's). One call per tile of 8 rows x K. Measured in one
// process against the inlined build (bench/cpu/ab_small_gemm.py, AMD EPYC Zen 4, 1 thread, the default search's
// products): emulated AVX2 (v3) 1.04-1.23x on every product into 8 channels; AVX-512 (v4), whose broadcasts fold
// into the FMAs, 1.06-1.29x where single-vector tiles make most of the columns (8 -> 24 and 8 -> 48 channels), the
// rest within 0.95-1.07x both ways.
template <typename V>
__attribute__((noinline)) void tile_narrow(const float* __restrict__ a, int64_t lda, int64_t K,
                                           const float* __restrict__ b, int64_t ldb, float* __restrict__ o,
                                           int64_t ldo, int64_t valid, bool accumulate) {
  tile<V, 8, 1>(a, lda, K, b, ldb, o, ldo, valid, accumulate);
}

// Rows [r, r + P) of out (P = kP or 2 kP), every column block, in tiles of kP rows, single-vector blocks of
// kPNarrow; with sc (the prologue) A's rows go through abuf.
template <int P>
inline void row_block(const float* a, int64_t lda, int64_t K, const float* bp, int64_t Np, int64_t N, float* o,
                      int64_t ldo, bool accumulate, const float* sc, const float* sh, float* abuf) {
  if (sc) {
    affine_relu_rows(a, lda, P, K, sc, sh, abuf, K);
    a = abuf;
    lda = K;
  }
  column_blocks(Np, [&](auto v, auto nb, int64_t n0) {
    constexpr int NB = decltype(nb)::value;
    constexpr int PT = NB == 1 ? std::min(P, kPNarrow) : kP;  // rows a tile
    static_assert(P % PT == 0, "whole tiles");
    for (int q = 0; q < P; q += PT)
      if constexpr (NB == 1 && PT == 8)
        tile_narrow<decltype(v)>(a + q * lda, lda, K, bp + n0, Np, o + q * ldo + n0, ldo, N - n0, accumulate);
      else
        tile<decltype(v), PT, NB>(a + q * lda, lda, K, bp + n0, Np, o + q * ldo + n0, ldo, N - n0, accumulate);
  });
}

// Mean and centred sum of squares of rows [0, R) of o (row stride ldo), columns [c0, c0 + |V|): two
// passes down the block's columns (in cache), accumulators in registers, float32 over <= 64 rows.
template <typename V>
inline void column_stats(const float* __restrict__ o, int64_t ldo, int64_t R, int64_t c0, double* __restrict__ mean,
                         double* __restrict__ m2) {
  constexpr int L = sizeof(V) / sizeof(float);
  // 4 independent chains (rows r mod 4), added at the end: one chain of 64 dependent adds ran at the add's
  // latency and cost half the product's time.
  V s[4] = {}, q[4] = {};
  int64_t r = 0;
  for (; r + 4 <= R; r += 4)
    for (int i = 0; i < 4; ++i) s[i] += vload<V>(o + (r + i) * ldo + c0);
  for (; r < R; ++r) s[0] += vload<V>(o + r * ldo + c0);
  const V mv = ((s[0] + s[1]) + (s[2] + s[3])) * (1.0f / static_cast<float>(R));
  for (r = 0; r + 4 <= R; r += 4)
    for (int i = 0; i < 4; ++i) {
      const V d = vload<V>(o + (r + i) * ldo + c0) - mv;
      q[i] += d * d;
    }
  for (; r < R; ++r) {
    const V d = vload<V>(o + r * ldo + c0) - mv;
    q[0] += d * d;
  }
  const V qs = (q[0] + q[1]) + (q[2] + q[3]);
  for (int l = 0; l < L; ++l) {
    mean[c0 + l] = mv[l];
    m2[c0 + l] = qs[l];
  }
}

// column_stats over every column: blocks of kW, then of 8, then single columns.
inline void block_stats(const float* __restrict__ o, int64_t ldo, int64_t R, int64_t N, double* __restrict__ mean,
                        double* __restrict__ m2) {
  int64_t c0 = 0;
  for (; c0 + kW <= N; c0 += kW) column_stats<VW>(o, ldo, R, c0, mean, m2);
  for (; c0 + 8 <= N; c0 += 8) column_stats<V8>(o, ldo, R, c0, mean, m2);
  for (; c0 < N; ++c0) {
    float s = 0.0f, q = 0.0f;
    for (int64_t r = 0; r < R; ++r) s += o[r * ldo + c0];
    const float mv = s * (1.0f / static_cast<float>(R));
    for (int64_t r = 0; r < R; ++r) {
      const float d = o[r * ldo + c0] - mv;
      q += d * d;
    }
    mean[c0] = mv;
    m2[c0] = q;
  }
}

}  // namespace

// A width padded to whole vectors of 8 (the column blocks' layout).
inline int64_t padded_width(int64_t N) { return (N + 7) / 8 * 8; }

std::vector<float> padded_columns(const float* b, int64_t K, int64_t N) {
  const int64_t Np = padded_width(N);
  std::vector<float> bp(static_cast<size_t>(K * Np), 0.0f);
  for (int64_t k = 0; k < K; ++k) std::memcpy(bp.data() + k * Np, b + k * N, sizeof(float) * N);
  return bp;
}

int64_t gemm_rows_scratch(int64_t K, int64_t N) { return 2 * kP * K + kP * padded_width(N); }

// Rows of at least this many floats (4 cache lines) are prefetched ahead, in gemm_rows and small_gemm_tn (see there).
constexpr int64_t kPrefetchMin = 64;

void gemm_rows(const float* a, int64_t lda, int64_t rows, int64_t K, const float* bp, int64_t N, float* o,
               int64_t ldo, bool accumulate, const float* sc, const float* sh, float* scratch) {
  const int64_t Np = padded_width(N);
  int64_t r = 0;
  for (; r + 2 * kP <= rows; r += 2 * kP) {
    // A's and out's rows four blocks ahead (past this call's rows too: the next block of the product; a prefetch
    // never faults). A tile reads its 2 kP rows of A side by side, each only K floats long: streams too short for
    // the hardware prefetcher, so where A did not fit the caches every row started cold (the width-1.0
    // supernet's [32768, 144] @ [144, 8] read A at 4.5 GB/s, 17x the time of [8192, 144] @ [144, 8], whose A stays
    // in L3); out's rows are written as cold. No arithmetic changes: the same bits. Measured in one process
    // against the build before (bench/cpu/ab_so.py, AMD EPYC Zen 4, 1 thread, bench/results/session27/): that
    // product alone 4.2-4.7 -> 1.8-2.6 ms; the width-1.0 batch-32 supernet's 32x32 layers (0-4), AVX-512 (v4),
    // 1.12x on the medians of 41 rounds (1.06x per round); emulated AVX2 (v3) 1.01x, the default search's 32x32
    // layers 1.01x. But over the default search's whole step, emulated AVX2 lost 3.5-4 % (weight step 0.965x per
    // round, theta step 0.977x, 31 rounds; its products' rows are 8-48 floats, each prefetched line mostly a line
    // already on its way), so only rows of kPrefetchMin floats or more are prefetched: then the v3 weight and theta
    // steps 0.995x / 0.999x against the build without any prefetch, v4's 1.009x, and the width-1.0 32x32 layers
    // 1.000x against prefetching every row (bench/results/session27/ab_so_prefetch_rows.txt).
    if (K >= kPrefetchMin)
      for (int q = 0; q < 2 * kP; ++q) prefetch_floats(a + (r + 8 * kP + q) * lda, K);
    if (N >= kPrefetchMin)
      for (int q = 0; q < 2 * kP; ++q) prefetch_floats<true>(o + (r + 8 * kP + q) * ldo, N);
    row_block<2 * kP>(a + r * lda, lda, K, bp, Np, N, o + r * ldo, ldo, accumulate, sc, sh, scratch);
  }
  for (; r + kP <= rows; r += kP)
    row_block<kP>(a + r * lda, lda, K, bp, Np, N, o + r * ldo, ldo, accumulate, sc, sh, scratch);
  if (r == rows) return;
  // The last rows % 4 rows also go through the 4-row tile, zero rows padding A and a scratch tile holding out's
  // rows: GCC contracted `c += s * b` to a FMA in the 4-row tile but not in a 1-row one (a multiply and an add:
  // measured, most elements of an [8, 8] product differed in the last bit), so a row's bits depended on whether
  // it fell in the last M % 4 rows of a product (and ir_eval's per-image rows would not have been small_gemm's).
  const int64_t tail = rows - r;
  float* at = scratch;       // [4, K]
  float* ot = at + kP * K;  // [4, Np]
  std::fill(at, at + kP * K, 0.0f);
  if (sc) {
    affine_relu_rows(a + r * lda, lda, tail, K, sc, sh, at, K);
  } else {
    for (int64_t q = 0; q < tail; ++q) std::memcpy(at + q * K, a + (r + q) * lda, sizeof(float) * K);
  }
  if (accumulate)
    for (int64_t q = 0; q < tail; ++q) std::memcpy(ot + q * Np, o + (r + q) * ldo, sizeof(float) * N);
  column_blocks(Np, [&](auto v, auto nb, int64_t n0) {
    tile<decltype(v), kP, decltype(nb)::value>(at, K, K, bp + n0, Np, ot + n0, Np, N - n0, accumulate);
  });
  for (int64_t q = 0; q < tail; ++q) std::memcpy(o + (r + q) * ldo, ot + q * Np, sizeof(float) * N);
}

void small_gemm(buf_t a, int64_t M, int64_t K, int64_t lda, buf_t b, int64_t N, buf_t out, int64_t ldo,
                bool accumulate, buf_t a_scale, buf_t a_shift, buf_t mean_out, buf_t var_out) {
  check_buf(a, "a"); check_buf(b, "b"); check_buf(out, "out");
  check_buf(a_scale, "a_scale", true); check_buf(a_shift, "a_shift", true);
  check_buf(mean_out, "mean", true); check_buf(var_out, "var", true);
  check_positive(M, "a.shape[0] (rows)"); check_positive(K, "a.shape[1] (inner dimension)");
  check_positive(N, "b.shape[1] (columns)");
  check(lda >= K, "a's row stride must be >= its columns");
  check(ldo >= N, "out's row stride must be >= its columns");
  check((a_scale != 0) == (a_shift != 0), "a_scale and a_shift must both be given or both be None");
  const bool stats = mean_out != 0;
  check(stats == (var_out != 0), "mean and var must both be given or both be None");
  check(!(stats && accumulate), "statistics of an accumulated product are not supported");
  const float* sc = CF(a_scale);
  const float* sh = CF(a_shift);
  // B with its columns padded to a multiple of 8 (zeros): every column block is whole vectors.
  const std::vector<float> bp = padded_columns(CF(b), K, N);
  const float* ap = CF(a);
  float* op = F(out);
  constexpr int64_t kRows = 64;  // rows per block (a multiple of kP)
  const int64_t nblk = (M + kRows - 1) / kRows;
  // Work items: one block; with statistics up to 16 blocks (1,024 rows) whose block statistics are merged in
  // order in the item, so the partials stay small (a per-block array of M / 64 x 2N doubles was ~0.8 MB a call:
  // mmap'ed and page-faulted anew by glibc on many calls, which made whole training steps bimodal), and at
  // least kMinChunks items where there are that many blocks (a product of 1,024 rows was one item: one thread).
  const int64_t per_item = stats ? std::clamp<int64_t>(nblk / kMinChunks, 1, 16) : 1;
  const int64_t nitem = (nblk + per_item - 1) / per_item;
  std::vector<double> part(stats ? static_cast<size_t>(nitem) * 2 * N : 0);
#pragma omp parallel
  {
    std::vector<float> abuf(static_cast<size_t>(gemm_rows_scratch(K, N)));
    std::vector<double> bst(stats ? static_cast<size_t>(2 * N) : 0);
#pragma omp for schedule(static)
    for (int64_t item = 0; item < nitem; ++item) {
      const int64_t b1 = std::min(nblk, (item + 1) * per_item);
      double n = 0.0;
      for (int64_t blk = item * per_item; blk < b1; ++blk) {
        const int64_t r0 = blk * kRows, rows = std::min(M, r0 + kRows) - r0;
        gemm_rows(ap + r0 * lda, lda, rows, K, bp.data(), N, op + r0 * ldo, ldo, accumulate, sc, sh, abuf.data());
        if (!stats) continue;
        double* __restrict__ pm = part.data() + item * 2 * N;
        block_stats(op + blk * kRows * ldo, ldo, rows, N, bst.data(), bst.data() + N);
        // Chan's merge of the block (nb rows) into the item's running (mean, M2) over n rows
        const double nb = static_cast<double>(rows), f = nb / (n + nb), g = n * f;
        for (int64_t j = 0; j < N; ++j) {
          const double delta = bst[j] - (n > 0 ? pm[j] : 0.0);
          pm[j] = n > 0 ? pm[j] + delta * f : bst[j];
          pm[N + j] = (n > 0 ? pm[N + j] : 0.0) + bst[N + j] + delta * delta * g;
        }
        n += nb;
      }
    }
  }
  if (!stats) return;
  float* mo = F(mean_out);
  float* vo = F(var_out);
  // Items merged in order in float64 (Chan's formula), so the result does not depend on the thread count.
  std::vector<double> mean(N, 0.0), m2(N, 0.0);
  double n = 0.0;
  for (int64_t item = 0; item < nitem; ++item) {
    const double ni = static_cast<double>(std::min(M, (item + 1) * per_item * kRows) - item * per_item * kRows);
    const double f = ni / (n + ni), g = n * f;
    const double* pm = part.data() + item * 2 * N;
    for (int64_t j = 0; j < N; ++j) {
      const double delta = pm[j] - mean[j];
      mean[j] += delta * f;
      m2[j] += pm[N + j] + delta * delta * g;
    }
    n += ni;
  }
  for (int64_t j = 0; j < N; ++j) {
    mo[j] = static_cast<float>(mean[j]);
    vo[j] = static_cast<float>(m2[j] / static_cast<double>(M));
  }
}

// ---- out[P, Q] = X[M, P]^T Y[M, Q]: a 1x1 conv's weight gradient, reduced over the long M ----
namespace {

constexpr int64_t kTnRows = 256;  // rows per chunk: float32 sums within, float64 across chunks

// Rows to ask into L2 while a tile runs, one pair a row r: x + r * ldx (nx floats) and y + r * ldy (ny floats).
struct TnPrefetch {
  const float* x = nullptr;
  int64_t ldx = 0, nx = 0;
  const float* y = nullptr;
  int64_t ldy = 0, ny = 0;
};

// Chunk rows [0, R) of X (ldx) and of Y (padded, Qp columns, row stride ldy): the P x Q partial,
// 4 columns of X broadcast against NB vectors of a Y row, registers for the whole chunk. pf: taken (and cleared)
// by the first tile that runs with it; the sums are the same with or without.
// Out of line, as gemm_rows's narrow tile (see tile_narrow): inlined into small_gemm_tn's chunk loop, the v3 tiles'
// loops reloaded up to 5 values a row from the stack; on their own none does (the prefetching rows' loops 2). Same
// instructions otherwise, same bits (every variant, 1-4,099 rows x 1-48 x 1-192, with the prologue on either side:
// equal to the inlined build's). The default search's weight gradients, in one process against the inlined build
// (bench/cpu/ab_small_gemm.py, AMD EPYC Zen 4, 1 thread, 31 rounds): emulated AVX2 (v3) 1.05-1.21x but for one
// (0.99x); AVX-512 (v4) 0.97-1.24x, most within 0.97-1.04x.
template <typename V, int PB, int NB>
__attribute__((noinline)) void tn_tile(const float* __restrict__ x, int64_t ldx, const float* __restrict__ y,
                                       int64_t ldy, int64_t R, float* __restrict__ part, int64_t ldp, TnPrefetch& pf) {
  constexpr int L = sizeof(V) / sizeof(float);
  const TnPrefetch ahead = pf;
  pf = {};
  V c[PB][NB];
  const V zero = {};
  for (int q = 0; q < PB; ++q)
    for (int j = 0; j < NB; ++j) c[q][j] = zero;
  for (int64_t r = 0; r < R; ++r) {
    if (ahead.x) {
      prefetch_floats(ahead.x + r * ahead.ldx, ahead.nx);
      prefetch_floats(ahead.y + r * ahead.ldy, ahead.ny);
    }
    V yv[NB];
    for (int j = 0; j < NB; ++j) yv[j] = vload<V>(y + r * ldy + j * L);
#if defined(FBNET_ISA_V3)
    // v3: a Y vector read by at most 4 FMAs loaded once (in_register). Pinned with more accumulators (4 x 3), or
    // in v4, the kernel measured slower (0.6-0.9x on [M, 8..32]^T [M, 24..192], bench/cpu/ab_tn.py).
    if constexpr (PB * NB <= 8)
      for (int j = 0; j < NB; ++j) in_register(yv[j]);
#endif
    for (int q = 0; q < PB; ++q) {
      const float s = x[r * ldx + q];
      for (int j = 0; j < NB; ++j) c[q][j] += s * yv[j];
    }
  }
  for (int q = 0; q < PB; ++q)
    for (int j = 0; j < NB; ++j) vstore<V>(part + q * ldp + j * L, c[q][j]);
}

}  // namespace

void small_gemm_tn(buf_t x, int64_t M, int64_t P, int64_t ldx, buf_t y, int64_t Q, int64_t ldy, buf_t out,
                   buf_t aff_scale, buf_t aff_shift, bool aff_on_x) {
  check_buf(x, "x"); check_buf(y, "y"); check_buf(out, "out");
  check_buf(aff_scale, "scale", true); check_buf(aff_shift, "shift", true);
  check_positive(M, "x.shape[0] (rows)"); check_positive(P, "x.shape[1] (columns)");
  check_positive(Q, "y.shape[1] (columns)");
  check(ldx >= P, "x's row stride must be >= its columns");
  check(ldy >= Q, "y's row stride must be >= its columns");
  check((aff_scale != 0) == (aff_shift != 0), "scale and shift must both be given or both be None");
  // The prologue relu(scale * v + shift) on x's or y's columns, applied to each chunk's copy.
  const float* sc = CF(aff_scale);
  const float* sh = CF(aff_shift);
  const bool aff_x = sc && aff_on_x, aff_y = sc && !aff_on_x;
  const int64_t Qp = padded_width(Q);
  const bool pad = Qp != Q || aff_y;  // a chunk of Y is copied into whole vectors, zero-padded (and activated)
  const int64_t nch = (M + kTnRows - 1) / kTnRows;
  // every partial is stored by its tile before the sums read it: not zeroed (a pass over M / 256 x P x Qp floats)
  const std::unique_ptr<float[]> part(new float[static_cast<size_t>(nch * P * Qp)]);
  const float* xp = CF(x);
  const float* yp = CF(y);
#pragma omp parallel
  {
    std::vector<float> ybuf(pad ? static_cast<size_t>(kTnRows * Qp) : 0, 0.0f);
    std::vector<float> xbuf(aff_x ? static_cast<size_t>(kTnRows * P) : 0);
#pragma omp for schedule(static)
    for (int64_t ch = 0; ch < nch; ++ch) {
      const int64_t r0 = ch * kTnRows;
      const int64_t R = std::min(M, r0 + kTnRows) - r0;
      const float* yc = yp + r0 * ldy;
      int64_t ly = ldy;
      if (aff_y) {
        affine_relu_rows(yc, ldy, R, Q, sc, sh, ybuf.data(), Qp);  // padding columns stay 0
        yc = ybuf.data();
        ly = Qp;
      } else if (pad) {
        for (int64_t r = 0; r < R; ++r) std::memcpy(ybuf.data() + r * Qp, yc + r * ldy, sizeof(float) * Q);
        yc = ybuf.data();
        ly = Qp;
      }
      const float* xc = xp + r0 * ldx;
      int64_t lx = ldx;
      if (aff_x) {
        affine_relu_rows(xc, ldx, R, P, sc, sh, xbuf.data(), P);
        xc = xbuf.data();
        lx = P;
      }
      float* pc = part.get() + ch * P * Qp;
      // The next chunk's rows of X and Y, asked for during this chunk's first tile, a row of each per row, where
      // a row pair spans 4 lines or more: the tiles read such rows in strips of a few lines, and lines the
      // hardware prefetcher had not followed came cold from memory at each chunk's first tiles. Narrower rows
      // are read whole by the first tiles and followed by it (with them it measured ~1 % slower). Past the end
      // of X or Y harmlessly (a prefetch never faults). No effect on any result.
      TnPrefetch pf;
      if (ch + 1 < nch && P + Q >= kPrefetchMin) pf = {xp + (r0 + kTnRows) * ldx, ldx, P, yp + (r0 + kTnRows) * ldy, ldy, Q};
      column_blocks(Qp, [&](auto v, auto nb, int64_t j0) {
        using V = decltype(v);
        constexpr int NB = decltype(nb)::value;
        const float* y0 = yc + j0;
        float* p0c = pc + j0;
        int64_t p0 = 0;
        if constexpr (NB == 1 && kPNarrow == 8)  // single-vector blocks: 8 FMA chains (see kPNarrow)
          for (; p0 + 8 <= P; p0 += 8) tn_tile<V, 8, 1>(xc + p0, lx, y0, ly, R, p0c + p0 * Qp, Qp, pf);
        // 6 x NB tiles: 1.5x fewer passes over the chunk of Y than 4-row ones (same sums), where their
        // accumulators leave registers free (12 of v3's 16; v3's 6 x 3 spilled: 0.6x the 4 x 3 tiles)
        if (P % 6 == 0 && 6 * NB <= (kW == 8 ? 12 : 24))
          for (; p0 + 6 <= P; p0 += 6) tn_tile<V, 6, NB>(xc + p0, lx, y0, ly, R, p0c + p0 * Qp, Qp, pf);
        for (; p0 + kP <= P; p0 += kP) tn_tile<V, kP, NB>(xc + p0, lx, y0, ly, R, p0c + p0 * Qp, Qp, pf);
        for (; p0 < P; ++p0) tn_tile<V, 1, NB>(xc + p0, lx, y0, ly, R, p0c + p0 * Qp, Qp, pf);
      });
    }
  }
  // chunk order, float64: the same bits for any thread count
  float* op = F(out);
#pragma omp parallel
  {
    std::vector<double> acc(static_cast<size_t>(Q));
#pragma omp for schedule(static)
    for (int64_t i = 0; i < P; ++i) {
      // each element's sum still runs over the chunks in order; the chunk loop is outside so that the
      // inner loop reads a partial row contiguously (vectorised) instead of one float every P * Qp
      std::fill(acc.begin(), acc.end(), 0.0);
      double* __restrict__ a = acc.data();
      for (int64_t ch = 0; ch < nch; ++ch) {
        const float* __restrict__ pr = part.get() + (ch * P + i) * Qp;
#pragma omp simd
        for (int64_t j = 0; j < Q; ++j) a[j] += pr[j];
      }
      for (int64_t j = 0; j < Q; ++j) op[i * Q + j] = static_cast<float>(a[j]);
    }
  }
}

}  // namespace FBNET_ISA
}  // namespace fbnet
FBNET_ISA_END
