// Per-channel BatchNorm pieces over channels-last activations z[M, C]:
// statistics, affine(+ReLU) apply, the Gumbel-weighted in-place accumulation, and
// the two passes of BN(+ReLU) backward. Reference: fbnet_fast/ops/bn_act.py (*_ref).
#include "kernels.h"

#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include <immintrin.h>  // vec.h's madd

FBNET_ISA_BEGIN
namespace fbnet {
namespace FBNET_ISA {

void bn_stats(buf_t z, int64_t M, int64_t C, buf_t mean_out, buf_t var_out) {
  check_buf(z, "z"); check_buf(mean_out, "mean"); check_buf(var_out, "var");
  check_positive(M, "z.shape[0] (rows)"); check_positive(C, "z.shape[1] (channels)");
  const float* __restrict__ zp = CF(z);
  const int64_t R = rows_per_chunk(C, M);
  const int64_t nch = (M + R - 1) / R;
  std::vector<double> part(static_cast<size_t>(nch) * 2 * C);
  // Shift by the first row: sums of (z - z[0]) avoid the cancellation of
  // E[z^2] - E[z]^2 when |mean| >> std.
  const float* __restrict__ K = zp;
#pragma omp parallel for schedule(static)
  for (int64_t ch = 0; ch < nch; ++ch) {
    double* __restrict__ s = part.data() + ch * 2 * C;
    double* __restrict__ q = s + C;
    const int64_t r1 = std::min(M, (ch + 1) * R);
    for (int64_t r = ch * R; r < r1; ++r) {
      const float* __restrict__ row = zp + r * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        const double d = static_cast<double>(row[c]) - K[c];
        s[c] += d;
        q[c] += d * d;
      }
    }
  }
  float* mo = F(mean_out);
  float* vo = F(var_out);
  for (int64_t c = 0; c < C; ++c) {
    double S = 0, Q = 0;
    for (int64_t ch = 0; ch < nch; ++ch) {
      S += part[ch * 2 * C + c];
      Q += part[ch * 2 * C + C + c];
    }
    const double m = S / M;
    mo[c] = static_cast<float>(K[c] + m);
    vo[c] = static_cast<float>(std::max(0.0, Q / M - m * m));
  }
}

void affine_act(buf_t z, int64_t M, int64_t C, buf_t scale, buf_t shift, bool relu, buf_t out) {
  check_buf(z, "z"); check_buf(scale, "scale"); check_buf(shift, "shift"); check_buf(out, "out");
  const float* __restrict__ a = CF(scale);
  const float* __restrict__ b = CF(shift);
  const float* zp = CF(z);  // may alias out (in-place apply)
  float* op = F(out);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < M; ++r) {
    const float* zr = zp + r * C;
    float* o = op + r * C;
    if (relu) {
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) o[c] = std::max(a[c] * zr[c] + b[c], 0.0f);
    } else {
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) o[c] = a[c] * zr[c] + b[c];
    }
  }
}

// assign: out = alpha * act(...) (out's old values unread: the first term of a sum, no zero-fill pass)
void affine_act_accumulate(buf_t z, int64_t M, int64_t C, buf_t scale, buf_t shift, bool relu,
                           float alpha, buf_t out, bool assign) {
  check_buf(z, "z"); check_buf(scale, "scale"); check_buf(shift, "shift"); check_buf(out, "out");
  const float* __restrict__ a = CF(scale);
  const float* __restrict__ b = CF(shift);
  const float* __restrict__ zp = CF(z);
  float* __restrict__ op = F(out);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < M; ++r) {
    const float* __restrict__ zr = zp + r * C;
    float* __restrict__ o = op + r * C;
    if (assign && relu) {
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) o[c] = alpha * std::max(a[c] * zr[c] + b[c], 0.0f);
    } else if (assign) {
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) o[c] = alpha * (a[c] * zr[c] + b[c]);
    } else if (relu) {
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) o[c] += alpha * std::max(a[c] * zr[c] + b[c], 0.0f);
    } else {
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) o[c] += alpha * (a[c] * zr[c] + b[c]);
    }
  }
}

namespace {

#include "vec.h"  // V8, VW, kW, vload, vstore, madd (this variant's)

// One vector block of grad_sums_regs: gm (g where a * z + b > 0 with kRelu, else g) added to s, gm * (z - m) to q.
template <bool kRelu, typename V>
inline void grad_sums_step(const float* __restrict__ g, const float* __restrict__ z, const float* __restrict__ a,
                           const float* __restrict__ b, const float* __restrict__ m, V& s, V& q) {
  const V zero = {}, zv = vload<V>(z);
  V gm = vload<V>(g);
  if constexpr (kRelu) gm = madd(vload<V>(a), zv, vload<V>(b)) > zero ? gm : zero;
  s += gm;
  q = madd(gm, zv - vload<V>(m), q);
}

// grad_sums_rows for rows of C = B * kW (+ 8 with Tail8) channels: the whole row's sums in registers across the
// rows. Per channel the same operations in the same order as the loop below (the same FMAs, madd): the same bits.
template <bool kRelu, int B, bool Tail8>
void grad_sums_regs(const float* __restrict__ gp, const float* __restrict__ zp, int64_t rb, int64_t re, int64_t C,
                    const float* __restrict__ a, const float* __restrict__ b, const float* __restrict__ m,
                    float* __restrict__ fs, float* __restrict__ fq) {
  VW s[B > 0 ? B : 1] = {}, q[B > 0 ? B : 1] = {};
  V8 s8 = {}, q8 = {};
  constexpr int64_t c8 = B * kW;
  for (int64_t r = rb; r < re; ++r) {
    const float* g = gp + r * C;
    const float* z = zp + r * C;
    for (int j = 0; j < B; ++j)
      grad_sums_step<kRelu, VW>(g + j * kW, z + j * kW, a + j * kW, b + j * kW, m + j * kW, s[j], q[j]);
    if constexpr (Tail8) grad_sums_step<kRelu, V8>(g + c8, z + c8, a + c8, b + c8, m + c8, s8, q8);
  }
  for (int j = 0; j < B; ++j) {
    vstore<VW>(fs + j * kW, s[j]);
    vstore<VW>(fq + j * kW, q[j]);
  }
  if constexpr (Tail8) {
    vstore<V8>(fs + c8, s8);
    vstore<V8>(fq + c8, q8);
  }
}

template <bool kRelu>
using GradSumsRegs = void (*)(const float*, const float*, int64_t, int64_t, int64_t, const float*, const float*,
                              const float*, float*, float*);

// sum gm and sum gm * (z - m) for rows [r0, r1): float within blocks of kBlock rows
// (vectorises; <= 64 terms keep float error at the 1e-7 level), double across blocks.
// Rows of at most 4 vector blocks keep their sums in registers (grad_sums_regs): this loop keeps them in memory, and
// with one to three vectors a row each row's adds waited for the row before's stores (store-to-load forwarding).
// In v3 the loop also read g with a masked load (vmaskmovps) behind the compare; it now reads g whatever the mask.
// Measured against the loop alone, the same bits (bench/cpu/ab_bn_act.py, AMD EPYC Zen 4, 1 thread): v3 2.1-2.5x at
// 8-48 channels, 1.5x at 96 (the loop's plain read); v4 3.4-3.5x at 8-16 channels, 1.2-2.3x at 24-96; 672 the same.
template <bool kRelu>
void grad_sums_rows(const float* __restrict__ gp, const float* __restrict__ zp, int64_t r0, int64_t r1,
                    int64_t C, const float* __restrict__ a, const float* __restrict__ b,
                    const float* __restrict__ m, float* __restrict__ fs, float* __restrict__ fq,
                    double* __restrict__ s, double* __restrict__ q) {
  constexpr int64_t kBlock = 64;
  GradSumsRegs<kRelu> regs = nullptr;  // wider rows: enough independent sums a row for the loop below
  with_row_blocks<4>(C, [&](auto B, auto T8) {
    regs = grad_sums_regs<kRelu, decltype(B)::value, decltype(T8)::value>;
  });
  for (int64_t rb = r0; rb < r1; rb += kBlock) {
    const int64_t re = std::min(r1, rb + kBlock);
    if (regs) {
      regs(gp, zp, rb, re, C, a, b, m, fs, fq);
    } else {
      std::fill(fs, fs + C, 0.0f);
      std::fill(fq, fq + C, 0.0f);
      for (int64_t r = rb; r < re; ++r) {
        const float* __restrict__ gr = gp + r * C;
        const float* __restrict__ zr = zp + r * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          const float g = gr[c];  // read whatever the mask (see act_grad_apply's loop)
          const float gm = (!kRelu || a[c] * zr[c] + b[c] > 0.0f) ? g : 0.0f;
          fs[c] += gm;
          fq[c] += gm * (zr[c] - m[c]);
        }
      }
    }
    for (int64_t c = 0; c < C; ++c) {
      s[c] += fs[c];
      q[c] += fq[c];
    }
  }
}

// o = k1 * gm + k2 * (z - m) + k3 for one block of |V| channels, gm = g where a * z + b > 0 (Relu; else g), with the
// products and sums of act_grad_apply's per-channel loop as gcc contracts it there (a * z + b and
// k1 * gm + k2 * (z - m) fused, k3 added last): the same bits.
template <bool Relu, typename V>
inline void apply_block(const float* g, const float* z, float* o, V a, V b, V m, V k1, V k2, V k3) {
  const V zero = {}, zv = vload<V>(z);
  V gm = vload<V>(g);
  if constexpr (Relu) gm = madd(a, zv, b) > zero ? gm : zero;
  vstore<V>(o, madd(k1, gm, k2 * (zv - m)) + k3);
}

// act_grad_apply over rows [r0, r1) of C = B * kW (+ 8 with Tail8) channels, every coefficient in registers across
// the rows: the per-channel loop reloaded them, and set its loop up, for each row, and at 8 channels a row is one
// vector. Measured against the loop (bench/cpu/ab_bn_act.py, AMD EPYC Zen 4, 1 thread, the same bits): v3 2.2x at 8
// channels, 1.3x at 16; v4 3.0x at 8, 1.2-1.5x at 16-64.
template <bool Relu, int B, bool Tail8>
void apply_rows_regs(const float* gp, const float* zp, int64_t r0, int64_t r1, int64_t C, const float* a,
                     const float* b, const float* m, const float* k1, const float* k2, const float* k3, float* op) {
  constexpr int NB = B > 0 ? B : 1;
  VW va[NB], vb[NB], vm[NB], v1[NB], v2[NB], v3[NB];
  for (int j = 0; j < B; ++j) {
    va[j] = vload<VW>(a + j * kW); vb[j] = vload<VW>(b + j * kW); vm[j] = vload<VW>(m + j * kW);
    v1[j] = vload<VW>(k1 + j * kW); v2[j] = vload<VW>(k2 + j * kW); v3[j] = vload<VW>(k3 + j * kW);
  }
  constexpr int64_t t = B * kW;  // the 8-channel tail's first channel
  V8 ta = {}, tb = {}, tm = {}, t1 = {}, t2 = {}, t3 = {};
  if constexpr (Tail8) {
    ta = vload<V8>(a + t); tb = vload<V8>(b + t); tm = vload<V8>(m + t);
    t1 = vload<V8>(k1 + t); t2 = vload<V8>(k2 + t); t3 = vload<V8>(k3 + t);
  }
  for (int64_t r = r0; r < r1; ++r) {
    const float* g = gp + r * C;
    const float* z = zp + r * C;
    float* o = op + r * C;
    for (int j = 0; j < B; ++j)
      apply_block<Relu, VW>(g + j * kW, z + j * kW, o + j * kW, va[j], vb[j], vm[j], v1[j], v2[j], v3[j]);
    if constexpr (Tail8) apply_block<Relu, V8>(g + t, z + t, o + t, ta, tb, tm, t1, t2, t3);
  }
}

using ApplyRowsRegs = void (*)(const float*, const float*, int64_t, int64_t, int64_t, const float*, const float*,
                               const float*, const float*, const float*, const float*, float*);

}  // namespace

void act_grad_sums(buf_t g, buf_t z, int64_t M, int64_t C, buf_t scale, buf_t shift, bool relu,
                   buf_t center, buf_t sum_g, buf_t sum_gz) {
  check_buf(g, "grad"); check_buf(z, "z"); check_buf(scale, "scale"); check_buf(shift, "shift");
  check_buf(center, "center"); check_buf(sum_g, "sum_g"); check_buf(sum_gz, "sum_gz");
  const int64_t R = rows_per_chunk(C, M);
  const int64_t nch = (M + R - 1) / R;
  std::vector<double> part(static_cast<size_t>(nch) * 2 * C);
#pragma omp parallel
  {
    std::vector<float> fs(C), fq(C);
#pragma omp for schedule(static)
    for (int64_t ch = 0; ch < nch; ++ch) {
      double* s = part.data() + ch * 2 * C;
      const int64_t r0 = ch * R, r1 = std::min(M, (ch + 1) * R);
      if (relu)
        grad_sums_rows<true>(CF(g), CF(z), r0, r1, C, CF(scale), CF(shift), CF(center), fs.data(), fq.data(), s, s + C);
      else
        grad_sums_rows<false>(CF(g), CF(z), r0, r1, C, CF(scale), CF(shift), CF(center), fs.data(), fq.data(), s, s + C);
    }
  }
  float* so = F(sum_g);
  float* qo = F(sum_gz);
  for (int64_t c = 0; c < C; ++c) {
    double S = 0, Q = 0;
    for (int64_t ch = 0; ch < nch; ++ch) {
      S += part[ch * 2 * C + c];
      Q += part[ch * 2 * C + C + c];
    }
    so[c] = static_cast<float>(S);
    qo[c] = static_cast<float>(Q);
  }
}

void act_grad_apply(buf_t g, buf_t z, int64_t M, int64_t C, buf_t scale, buf_t shift, bool relu,
                    buf_t center, buf_t k1, buf_t k2, buf_t k3, buf_t out) {
  check_buf(g, "grad"); check_buf(z, "z"); check_buf(scale, "scale"); check_buf(shift, "shift");
  check_buf(center, "center");
  check_buf(k1, "k1"); check_buf(k2, "k2"); check_buf(k3, "k3"); check_buf(out, "out");
  const float* gp = CF(g);  // may alias out
  const float* __restrict__ zp = CF(z);
  const float* __restrict__ a = CF(scale);
  const float* __restrict__ b = CF(shift);
  const float* __restrict__ m = CF(center);
  const float* __restrict__ c1 = CF(k1);
  const float* __restrict__ c2 = CF(k2);
  const float* __restrict__ c3 = CF(k3);
  float* op = F(out);
  ApplyRowsRegs regs = nullptr;  // up to 4 blocks in v4, 2 in v3 and base: six coefficient vectors a block
  with_row_blocks<kW == 16 ? 4 : 2>(C, [&](auto B, auto T8) {
    constexpr int kB = decltype(B)::value;
    constexpr bool kT8 = decltype(T8)::value;
    regs = relu ? apply_rows_regs<true, kB, kT8> : apply_rows_regs<false, kB, kT8>;
  });
  if (regs) {
    constexpr int64_t kRows = 64;
#pragma omp parallel for schedule(static)
    for (int64_t r0 = 0; r0 < M; r0 += kRows) regs(gp, zp, r0, std::min(M, r0 + kRows), C, a, b, m, c1, c2, c3, op);
    return;
  }
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < M; ++r) {
    const float* gr = gp + r * C;
    const float* __restrict__ zr = zp + r * C;
    float* o = op + r * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      // g read whatever the mask (a load, then a select): gcc made a conditional read a masked load (vmaskmovps)
      // in v3, behind the compare, and this loop ran up to 1.7x slower for it (bench/cpu/ab_bn_act.py, AMD EPYC Zen 4,
      // 1 thread: 1.6-1.7x at 24-48 channels, 1.3-1.4x at 96 and 672). The same value either way.
      const float g = gr[c];
      const float gm = (!relu || a[c] * zr[c] + b[c] > 0.0f) ? g : 0.0f;
      // Centred: k2 * z + (k3 - k2 * center) cancels when |mean| >> std (few pixels).
      o[c] = c1[c] * gm + c2[c] * (zr[c] - m[c]) + c3[c];
    }
  }
}

// BatchNorm's per-channel finish, one call instead of ~10 tiny tensor ops (on a GPU each
// was a kernel launch: ~700 of the Function's ~1030). Internal channel j is module
// channel perm[j] (the channel shuffle folded into conv_pw's rows; perm == 0: identity).
// Double inside: C values only, and the rounding then happens once per output.
void bn_fold(buf_t mean, buf_t var, buf_t gamma, buf_t beta, buf_t perm, int64_t C, double eps,
             buf_t running_mean, buf_t running_var, double momentum, int64_t count,
             buf_t scale, buf_t shift, buf_t invstd) {
  check_buf(mean, "mean"); check_buf(var, "var"); check_buf(gamma, "gamma"); check_buf(beta, "beta");
  check_buf(running_mean, "running_mean", true); check_buf(running_var, "running_var", true);
  check_buf(scale, "scale"); check_buf(shift, "shift"); check_buf(invstd, "invstd");
  check_positive(C, "C");
  const bool update = running_mean != 0;
  check(update == (running_var != 0), "running_mean and running_var must both be given or both be None");
  if (update && count <= 1)
    check(false, "BatchNorm in training needs more than 1 value per channel, got " + std::to_string(count));
  const int64_t* pm = reinterpret_cast<const int64_t*>(perm);
  const float *mp = CF(mean), *vp = CF(var), *gp = CF(gamma), *bp = CF(beta);
  float *so = F(scale), *ho = F(shift), *io = F(invstd);
  float *rm = F(running_mean), *rv = F(running_var);
  const double unbias = update ? static_cast<double>(count) / static_cast<double>(count - 1) : 1.0;
  bool bad_perm = false;  // checked after the loop: a message string per channel cost ~50 us a call
  for (int64_t j = 0; j < C; ++j) {
    const int64_t c = pm ? pm[j] : j;
    bad_perm |= c < 0 || c >= C;
    if (bad_perm) break;
    const double inv = 1.0 / std::sqrt(static_cast<double>(vp[j]) + eps);
    const double a = gp[c] * inv;
    io[j] = static_cast<float>(inv);
    so[j] = static_cast<float>(a);
    ho[j] = static_cast<float>(bp[c] - mp[j] * a);
    if (update) {
      rm[c] = static_cast<float>((1.0 - momentum) * rm[c] + momentum * mp[j]);
      rv[c] = static_cast<float>((1.0 - momentum) * rv[c] + momentum * vp[j] * unbias);
    }
  }
  check(!bad_perm, "perm must hold channel indices in [0, C)");
}

// Backward coefficients of y = alpha * act(bn(z)) from act_grad_sums' (or the dwconv
// backward's) sums: grad_z = k1*gm + k2*(z - mean) + k3, the gamma/beta gradients
// (module order through perm) and sum(grad_y * bn(z)), the Gumbel weight's gradient,
// using scale*mean + shift == beta. The dot runs over channels in index order.
void bn_grad_fold(buf_t sum_g, buf_t sum_gz, buf_t gamma, buf_t beta, buf_t invstd, buf_t perm,
                  int64_t C, double alpha, int64_t count, bool batch, buf_t k1, buf_t k2, buf_t k3,
                  buf_t grad_gamma, buf_t grad_beta, buf_t weight_dot) {
  check_buf(sum_g, "sum_g"); check_buf(sum_gz, "sum_gz"); check_buf(gamma, "gamma");
  check_buf(beta, "beta"); check_buf(invstd, "invstd"); check_buf(k1, "k1"); check_buf(k2, "k2");
  check_buf(k3, "k3"); check_buf(grad_gamma, "grad_gamma"); check_buf(grad_beta, "grad_beta");
  check_buf(weight_dot, "weight_dot", true);
  check_positive(C, "C"); check_positive(count, "count");
  const int64_t* pm = reinterpret_cast<const int64_t*>(perm);
  const float *sg = CF(sum_g), *sz = CF(sum_gz), *gp = CF(gamma), *bp = CF(beta), *ip = CF(invstd);
  float *o1 = F(k1), *o2 = F(k2), *o3 = F(k3), *gg = F(grad_gamma), *gb = F(grad_beta);
  const double n = static_cast<double>(count);
  double dot = 0.0;
  bool bad_perm = false;
  for (int64_t j = 0; j < C; ++j) {
    const int64_t c = pm ? pm[j] : j;
    bad_perm |= c < 0 || c >= C;
    if (bad_perm) break;
    const double inv = ip[j], a = alpha * gp[c] * inv;
    dot += gp[c] * inv * sz[j] + static_cast<double>(bp[c]) * sg[j];
    o1[j] = static_cast<float>(a);
    o2[j] = batch ? static_cast<float>(-a * inv * inv * sz[j] / n) : 0.0f;
    o3[j] = batch ? static_cast<float>(-a * sg[j] / n) : 0.0f;
    gg[c] = static_cast<float>(alpha * inv * sz[j]);
    gb[c] = static_cast<float>(alpha * sg[j]);
  }
  check(!bad_perm, "perm must hold channel indices in [0, C)");
  if (weight_dot != 0) *F(weight_dot) = static_cast<float>(dot);
}

}  // namespace FBNET_ISA
}  // namespace fbnet
FBNET_ISA_END
