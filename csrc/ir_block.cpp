// One inverted-residual candidate's training forward, and its backward from the kept z1, z2, z3, each in one
// call: the launches the Python loop made for it (fbnet_fast/ops/mixed_op_fused.py, _ir_forward and the kept
// path of _ir_backward), in the same order and with the same kernels, so the results are the same bits. Each
// launch had its Python around it (argument checks, [C] outputs allocated, NamedTuples, the folds'
// bookkeeping) and a thread fork/join, seven a candidate forward and eleven backward; measured (AMD EPYC Zen 4,
// AVX-512, v4, fresh processes): the default search's weight step 594 -> 512 ms at 2 threads, 929 -> 893 ms
// at 1. The products the Python path leaves to torch (wide ones, where MKL's blocking wins) run here through
// torch's own sgemm_ with torch.mm's arguments (`blas` bits; same bits; twentieth session, bench/cpu/ab_blas.py,
// AMD EPYC Zen 4: the default search's weight step 1.01x on the medians / 1.04x on the fastest rounds at 1 thread,
// AVX-512, 1.04x emulated AVX2, nothing measurable at 2 threads). Reference: the Python path, which still runs
// where these do not apply (eval-mode BNs, GPU tensors, no sgemm_ found).
#include "kernels.h"

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <memory>
#include <new>
#include <utility>
#include <vector>

FBNET_ISA_BEGIN
namespace fbnet {
namespace FBNET_ISA {

namespace {

struct FreeFloats {
  void operator()(float* p) const { std::free(p); }
};
using Scratch = std::unique_ptr<float[], FreeFloats>;

// Not zeroed; 64-byte aligned as torch's CPU tensors are (a BLAS may take another path for another alignment).
Scratch scratch(int64_t n) {
  const size_t bytes = (static_cast<size_t>(std::max<int64_t>(n, 1)) * sizeof(float) + 63) / 64 * 64;
  auto* p = static_cast<float*>(std::aligned_alloc(64, bytes));
  if (p == nullptr) throw std::bad_alloc();
  return Scratch(p);
}

buf_t B(const float* p) { return reinterpret_cast<buf_t>(p); }

// t = a^T: a [R, C] -> t [C, R]
void transpose(const float* a, int64_t R, int64_t C, float* t) {
  for (int64_t i = 0; i < R; ++i)
    for (int64_t j = 0; j < C; ++j) t[j * R + i] = a[i * C + j];
}

Scratch transposed(const float* a, int64_t R, int64_t C) {
  auto t = scratch(R * C);
  transpose(a, R, C, t.get());
  return t;
}

// ---- the products torch runs, through its BLAS (g_sgemm), with torch.mm's arguments
// `blas` bits of ir_forward / ir_backward: the products that run here instead of on the small kernels, set by
// fbnet_fast/ops/mixed_op_fused.py from the rules its launches follow (gemm.small_rule, gemm.small_tn_rule).
enum : int64_t {
  kBlasW1 = 1,    // forward z1 = x W1^T, then its statistics in a pass of their own (bn_stats)
  kBlasW3 = 2,    // forward z3 = h2 W3^T, h2 = relu(bn2(z2)) written first, then z3's statistics
  kBlasGW3 = 4,   // backward W3's gradient gz3^T h2, h2 written first
  kBlasGH2 = 8,   // backward gz3 W3
  kBlasGW1 = 16,  // backward W1's gradient gz1^T x
  kBlasGX = 32,   // backward gz1 W1 into gx
};

// c = op(a) op(b) (+ c), column-major: aten's cpublas::gemm hands its float products to sgemm_ this way.
void sgemm(char ta, char tb, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
           int64_t ldb, bool accumulate, float* c, int64_t ldc) {
  check(g_sgemm != nullptr, "a product for BLAS, but no sgemm was set (set_blas)");
  check(std::max({m, n, k, lda, ldb, ldc}) <= INT_MAX, "a product too large for a 32-bit BLAS");
  const int m_ = static_cast<int>(m), n_ = static_cast<int>(n), k_ = static_cast<int>(k);
  const int lda_ = static_cast<int>(lda), ldb_ = static_cast<int>(ldb), ldc_ = static_cast<int>(ldc);
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  g_sgemm(&ta, &tb, &m_, &n_, &k_, &alpha, a, &lda_, b, &ldb_, &beta, c, &ldc_);
}

// torch.mm(a, b) into out [M, N] (out += a b with accumulate: Tensor.addmm_), a [M, K] contiguous rows, b [K, N]
// contiguous or, b_t, b = w^T of a contiguous w [N, K] (a .t() view). Row-major out = a b is column-major
// out^T = b^T a^T: torch (addmm_impl_cpu_) passes b first, transposed when it is a .t() view.
void blas_mm(const float* a, int64_t M, int64_t K, const float* b, bool b_t, int64_t N, float* out,
             bool accumulate) {
  sgemm(b_t ? 't' : 'n', 'n', N, M, K, b, b_t ? K : N, a, K, accumulate, out, N);
}

// The candidate's input and output rows (M = N*H*W, Mo after the stride), its sizes checked.
std::pair<int64_t, int64_t> rows(int64_t N, int64_t H, int64_t W, int64_t Cin, int64_t mid, int64_t Cout,
                                 int64_t stride) {
  check_positive(N, "N"); check_positive(H, "H"); check_positive(W, "W");
  check_positive(Cin, "Cin"); check_positive(mid, "mid"); check_positive(Cout, "Cout");
  check(stride == 1 || stride == 2, "stride must be 1 or 2");
  return {N * H * W, N * ((H - 1) / stride + 1) * ((W - 1) / stride + 1)};
}

// An IR candidate's three weights in the layouts its kernels read, from the module's (mixed_op_fused.py's
// _ir_weights did this in Python, ~10 torch calls a candidate and step): w1 [mid, Cin] dense (block-diagonal for
// groups > 1) with its rows in the internal order (row j = module row perm[j], the channel shuffle folded in), the
// depthwise taps [k*k, mid], w3 [Cout, mid] dense. Module layouts: w1 [mid, Cin/g], wd [mid, k*k], w3 [Cout, mid/g].
struct KernelWeights {
  Scratch w1, wt, w3;
};

void check_groups(int64_t Cin, int64_t mid, int64_t Cout, int64_t groups) {
  check(groups >= 1 && Cin % groups == 0 && mid % groups == 0 && Cout % groups == 0,
        "groups must divide Cin, mid and Cout");
}

// Row o of a grouped 1x1 weight [R, C/g] (the module's) is row j of its dense block-diagonal [R, C] (the kernels'),
// o = perm[j] (o = j without perm), its C/g values at column (o / (R/g)) * (C/g). ToDense: module -> dense (the
// dense rows' other columns are left as they are); else dense -> module (a gradient).
template <bool ToDense>
void grouped_rows(const float* src, float* dst, int64_t R, int64_t C, int64_t groups, const int64_t* perm) {
  const int64_t cg = C / groups, rg = R / groups;
  for (int64_t j = 0; j < R; ++j) {
    const int64_t o = perm ? perm[j] : j;
    check(o >= 0 && o < R, "perm must hold channel indices in [0, mid)");
    const int64_t d = j * C + (o / rg) * cg, m = o * cg;
    if constexpr (ToDense) std::copy(src + m, src + m + cg, dst + d);
    else std::copy(src + d, src + d + cg, dst + m);
  }
}

KernelWeights kernel_weights(const float* w1, const float* wd, const float* w3, int64_t Cin, int64_t mid, int64_t Cout,
                             int64_t kk, int64_t groups, const int64_t* perm) {
  KernelWeights r{scratch(mid * Cin), scratch(kk * mid), scratch(Cout * mid)};
  std::fill(r.w1.get(), r.w1.get() + mid * Cin, 0.0f);
  grouped_rows<true>(w1, r.w1.get(), mid, Cin, groups, perm);
  transpose(wd, mid, kk, r.wt.get());
  std::fill(r.w3.get(), r.w3.get() + Cout * mid, 0.0f);
  grouped_rows<true>(w3, r.w3.get(), Cout, mid, groups, nullptr);
  return r;
}

}  // namespace

// folds: 5 vectors per BN (scale, shift, mean, var, invstd), BN1 and BN2 of `mid` channels,
// BN3 of `Cout`: [scale1, shift1, mean1, var1, invstd1, scale2, ..., invstd3].
void ir_forward(buf_t x, int64_t N, int64_t H, int64_t W, int64_t Cin, buf_t w1m, int64_t mid, buf_t wdm,
                int64_t k, int64_t stride, buf_t w3m, int64_t Cout, int64_t groups, buf_t gamma1, buf_t beta1, buf_t perm1,
                buf_t gamma2, buf_t beta2, buf_t gamma3, buf_t beta3, buf_t run_mean1, buf_t run_var1,
                buf_t run_mean2, buf_t run_var2, buf_t run_mean3, buf_t run_var3, double eps1, double eps2,
                double eps3, double momentum1, double momentum2, double momentum3, buf_t z1, buf_t z2, buf_t z3,
                buf_t folds, buf_t out, float alpha, bool assign, int64_t blas) {
  check_buf(folds, "folds"); check_buf(w1m, "w1"); check_buf(wdm, "wt"); check_buf(w3m, "w3");
  const auto [M, Mo] = rows(N, H, W, Cin, mid, Cout, stride);
  check_groups(Cin, mid, Cout, groups);
  const KernelWeights kw = kernel_weights(CF(w1m), CF(wdm), CF(w3m), Cin, mid, Cout, k * k, groups,
                                          reinterpret_cast<const int64_t*>(perm1));
  const buf_t w1 = B(kw.w1.get()), wt = B(kw.wt.get()), w3 = B(kw.w3.get());
  float* f = F(folds);
  const auto v = [&](int64_t off) { return reinterpret_cast<buf_t>(f + off); };
  const int64_t s1 = 0, s2 = 5 * mid, s3 = 10 * mid;  // each BN's five vectors
  // the small kernel's right-hand sides [K, N]: W1^T [Cin, mid] and W3^T [mid, Cout] (a few KB)
  if (blas & kBlasW1) {
    blas_mm(CF(x), M, Cin, CF(w1), true, mid, F(z1), false);
    bn_stats(z1, M, mid, v(s1 + 2 * mid), v(s1 + 3 * mid));
  } else {
    small_gemm(x, M, Cin, Cin, B(transposed(CF(w1), mid, Cin).get()), mid, z1, mid, false, 0, 0, v(s1 + 2 * mid),
               v(s1 + 3 * mid));
  }
  bn_fold(v(s1 + 2 * mid), v(s1 + 3 * mid), gamma1, beta1, perm1, mid, eps1, run_mean1, run_var1, momentum1, M,
          v(s1), v(s1 + mid), v(s1 + 4 * mid));
  dwconv_bn_forward(z1, N, H, W, mid, v(s1), v(s1 + mid), wt, k, stride, z2, v(s2 + 2 * mid), v(s2 + 3 * mid), 0, 0,
                    0);
  bn_fold(v(s2 + 2 * mid), v(s2 + 3 * mid), gamma2, beta2, 0, mid, eps2, run_mean2, run_var2, momentum2, Mo, v(s2),
          v(s2 + mid), v(s2 + 4 * mid));
  if (blas & kBlasW3) {
    auto h2 = scratch(Mo * mid);
    affine_act(z2, Mo, mid, v(s2), v(s2 + mid), true, B(h2.get()));
    blas_mm(h2.get(), Mo, mid, CF(w3), true, Cout, F(z3), false);
    bn_stats(z3, Mo, Cout, v(s3 + 2 * Cout), v(s3 + 3 * Cout));
  } else {
    small_gemm(z2, Mo, mid, mid, B(transposed(CF(w3), Cout, mid).get()), Cout, z3, Cout, false, v(s2), v(s2 + mid),
               v(s3 + 2 * Cout), v(s3 + 3 * Cout));
  }
  bn_fold(v(s3 + 2 * Cout), v(s3 + 3 * Cout), gamma3, beta3, 0, Cout, eps3, run_mean3, run_var3, momentum3, Mo,
          v(s3), v(s3 + Cout), v(s3 + 4 * Cout));
  affine_act_accumulate(z3, Mo, Cout, v(s3), v(s3 + Cout), false, alpha, out, assign);
}

namespace {

// out [P, Q] = x [M, P]^T y [M, Q] (prologue relu(scale * y + shift) on y's columns when scale != 0), as
// fbnet_fast.ops.gemm.mm_tn runs it: with P > Q the operands swap, [Q, P] transposed after (the small kernel's
// wider operand on its vector side; blas, where torch multiplies: torch.mm(y.t(), x).t(), the narrower matrix as
// the transposed operand, else torch.mm(x.t(), y); no prologue there, the caller writes the activated y).
void mm_tn(buf_t x, int64_t M, int64_t P, buf_t y, int64_t Q, buf_t scale, buf_t shift, float* out, bool blas) {
  check(!blas || scale == 0, "mm_tn: BLAS takes no prologue");
  if (P <= Q) {
    if (blas) sgemm('n', 't', Q, P, M, CF(y), Q, CF(x), P, false, out, Q);
    else small_gemm_tn(x, M, P, P, y, Q, Q, B(out), scale, shift, false);
    return;
  }
  auto t = scratch(Q * P);  // [Q, P]
  if (blas) sgemm('n', 't', P, Q, M, CF(x), P, CF(y), Q, false, t.get(), P);
  else small_gemm_tn(y, M, Q, Q, x, P, P, B(t.get()), scale, shift, true);
  transpose(t.get(), Q, P, out);
}

}  // namespace

// The backward of ir_forward from kept z1, z2, z3 (mixed_op_fused._ir_backward's kept path with the products'
// prologue, x wanting a gradient or a weight below W3 wanting one): the same launches in the same order.
// fold: the forward's per-BN vectors [scale, shift, mean, invstd] x 3 as 12 pointers (bn1, bn2, bn3).
// grads: [grad_gamma1, grad_beta1, grad_gamma2, grad_beta2, grad_gamma3, grad_beta3, weight_dot] (module order,
// 2 mid + 2 mid + 2 Cout + 1 floats). gw1 [mid, Cin] (rows in internal order), gwt [k*k, mid], gw3 [Cout, mid]:
// 0 when not wanted; gx [M, Cin]: 0 when x wants no gradient, else written (accumulate_gx: added to).
void ir_backward(buf_t go, buf_t z1, buf_t z2, buf_t z3, buf_t x, int64_t N, int64_t H, int64_t W, int64_t Cin,
                 int64_t mid, int64_t Cout, int64_t k, int64_t stride, buf_t w1m, buf_t wdm, buf_t w3m, int64_t groups,
                 buf_t gamma1, buf_t beta1, buf_t perm1, buf_t gamma2, buf_t beta2, buf_t gamma3, buf_t beta3, buf_t scale1,
                 buf_t shift1, buf_t mean1, buf_t invstd1, buf_t scale2, buf_t shift2, buf_t mean2, buf_t invstd2,
                 buf_t scale3, buf_t shift3, buf_t mean3, buf_t invstd3, bool batch1, bool batch2, bool batch3,
                 double alpha, buf_t grads, buf_t gw1m, buf_t gwtm, buf_t gw3m, buf_t gx, bool accumulate_gx,
                 int64_t blas) {
  check_buf(grads, "grads"); check_buf(w1m, "w1"); check_buf(wdm, "wt"); check_buf(w3m, "w3");
  const auto [M, Mo] = rows(N, H, W, Cin, mid, Cout, stride);
  check_groups(Cin, mid, Cout, groups);
  const int64_t* perm = reinterpret_cast<const int64_t*>(perm1);
  const KernelWeights kw = kernel_weights(CF(w1m), CF(wdm), CF(w3m), Cin, mid, Cout, k * k, groups, perm);
  const buf_t w1 = B(kw.w1.get()), wt = B(kw.wt.get()), w3 = B(kw.w3.get());
  // The weights' gradients in the kernels' layouts (kernel_weights'), written to the module's at the end: where
  // the two differ, through scratch.
  const bool dense = groups == 1 && perm == nullptr;
  Scratch gw1s = gw1m && !dense ? scratch(mid * Cin) : Scratch(), gwts = gwtm ? scratch(k * k * mid) : Scratch(),
          gw3s = gw3m && groups > 1 ? scratch(Cout * mid) : Scratch();
  const buf_t gw1 = gw1m ? (dense ? gw1m : B(gw1s.get())) : 0, gwt = gwtm ? B(gwts.get()) : 0,
              gw3 = gw3m ? (groups == 1 ? gw3m : B(gw3s.get())) : 0;
  float* g = F(grads);
  const int64_t C3 = std::max(mid, Cout);
  std::vector<float> sg(C3), sgz(C3), k1(C3), k2(C3), k3(C3);
  const buf_t psg = B(sg.data()), psgz = B(sgz.data()), pk1 = B(k1.data()), pk2 = B(k2.data()), pk3 = B(k3.data());
  // BN3 (y = alpha * bn3(z3)), its gradient gz3 [Mo, Cout]
  auto gz3 = scratch(Mo * Cout);
  act_grad_sums(go, z3, Mo, Cout, scale3, shift3, false, mean3, psg, psgz);
  bn_grad_fold(psg, psgz, gamma3, beta3, invstd3, 0, Cout, alpha, Mo, batch3, pk1, pk2, pk3, B(g + 4 * mid),
               B(g + 4 * mid + Cout), B(g + 4 * mid + 2 * Cout));
  act_grad_apply(go, z3, Mo, Cout, scale3, shift3, false, mean3, pk1, pk2, pk3, B(gz3.get()));
  if (gw3 && (blas & kBlasGW3)) {
    auto h2 = scratch(Mo * mid);
    affine_act(z2, Mo, mid, scale2, shift2, true, B(h2.get()));
    mm_tn(B(gz3.get()), Mo, Cout, B(h2.get()), mid, 0, 0, F(gw3), true);
  } else if (gw3) {
    mm_tn(B(gz3.get()), Mo, Cout, z2, mid, scale2, shift2, F(gw3), false);
  }
  // h2's gradient, then BN2 + ReLU's (in place)
  auto gh2 = scratch(Mo * mid);
  if (blas & kBlasGH2)
    blas_mm(gz3.get(), Mo, Cout, CF(w3), false, mid, gh2.get(), false);
  else
    small_gemm(B(gz3.get()), Mo, Cout, Cout, w3, mid, B(gh2.get()), mid, false, 0, 0, 0, 0);
  gz3.reset();
  act_grad_sums(B(gh2.get()), z2, Mo, mid, scale2, shift2, true, mean2, psg, psgz);
  bn_grad_fold(psg, psgz, gamma2, beta2, invstd2, 0, mid, 1.0, Mo, batch2, pk1, pk2, pk3, B(g + 2 * mid),
               B(g + 3 * mid), 0);
  act_grad_apply(B(gh2.get()), z2, Mo, mid, scale2, shift2, true, mean2, pk1, pk2, pk3, B(gh2.get()));
  // the depthwise conv (BN1's sums from the same pass), then BN1's gradient (in place)
  auto gu1 = scratch(M * mid);
  dwconv_bn_backward(B(gh2.get()), z1, N, H, W, mid, scale1, shift1, wt, k, stride, mean1, B(gu1.get()), gwt, psg,
                     psgz);
  gh2.reset();
  bn_grad_fold(psg, psgz, gamma1, beta1, invstd1, perm1, mid, 1.0, M, batch1, pk1, pk2, pk3, B(g), B(g + mid), 0);
  act_grad_apply(B(gu1.get()), z1, M, mid, scale1, shift1, false, mean1, pk1, pk2, pk3, B(gu1.get()));
  if (gw1) mm_tn(B(gu1.get()), M, mid, x, Cin, 0, 0, F(gw1), blas & kBlasGW1);
  if (gx && (blas & kBlasGX))
    blas_mm(gu1.get(), M, mid, CF(w1), false, Cin, F(gx), accumulate_gx);
  else if (gx)
    small_gemm(B(gu1.get()), M, mid, mid, w1, Cin, gx, Cin, accumulate_gx, 0, 0, 0, 0);
  // the weights' gradients into the module's layouts (kernel_weights' inverse)
  if (gw1m && !dense) grouped_rows<false>(gw1s.get(), F(gw1m), mid, Cin, groups, perm);
  if (gwtm) transpose(gwts.get(), k * k, mid, F(gwtm));
  if (gw3m && groups > 1) grouped_rows<false>(gw3s.get(), F(gw3m), Cout, mid, groups, nullptr);
}

// An IR candidate's evaluation (every BN folded to an affine: running statistics), accumulated into out:
// out [Mo, Cout] += relu(scale2 * dw(relu(scale1 * (x W1^T) + shift1)) + shift2) @ W3^T, where the caller has
// folded BN3 and the candidate's weight into W3's rows and its shift into out's starting value
// (mixed_op_fused._eval_forward). w1 [mid, Cin] (rows in internal order), wt [k*k, mid], w3 [Cout, mid].
// The launches ran z1 = x W1^T over the whole batch into memory, the depthwise pass from it into z2, and the
// last product from z2: two [M, mid] tensors written and read again (at the default search's evaluation batch,
// 256 x 32 x 32 x 48 floats: 50 MB each). Here each work item (an image, or a band of its output rows) makes its
// activated input rows as the output rows need them (a ring of k rows: each made once per item), then each
// output row's depthwise row and its product, all in cache; per element the same sums in the same order as the
// launches (gemm_rows, activate_row, conv_row), so the same bits.
void ir_eval(buf_t x, int64_t N, int64_t H, int64_t W, int64_t Cin, buf_t w1, int64_t mid, buf_t wt, int64_t k,
             int64_t stride, buf_t w3, int64_t Cout, buf_t scale1, buf_t shift1, buf_t scale2, buf_t shift2,
             buf_t out) {
  check_buf(x, "x"); check_buf(w1, "w1"); check_buf(wt, "wt"); check_buf(w3, "w3"); check_buf(out, "out");
  check_buf(scale1, "scale1"); check_buf(shift1, "shift1"); check_buf(scale2, "scale2"); check_buf(shift2, "shift2");
  rows(N, H, W, Cin, mid, Cout, stride);
  check(k > 0 && k % 2 == 1 && k <= 31, "depthwise kernel size must be odd and <= 31");
  const int64_t p = k / 2, Ho = (H - 1) / stride + 1, Wo = (W - 1) / stride + 1, Wp = W + 2 * p;
  // the products' right-hand sides [K, N], columns padded as gemm_rows reads them
  const std::vector<float> b1 = padded_columns(transposed(CF(w1), mid, Cin).get(), Cin, mid);
  const std::vector<float> b3 = padded_columns(transposed(CF(w3), Cout, mid).get(), mid, Cout);
  const float* xp = CF(x);
  const float* a1 = CF(scale1);
  const float* s1 = CF(shift1);
  const float* a2 = CF(scale2);
  const float* s2 = CF(shift2);
  const float* wk = CF(wt);
  float* op = F(out);
  // Work items: whole images when there are enough to share; else bands of output rows (a band recomputes
  // the k - stride input rows it shares with the band before it).
  const int64_t bands = std::min<int64_t>(Ho, std::max<int64_t>(1, (16 + N - 1) / N));
  const int64_t per_band = (Ho + bands - 1) / bands;
  const int64_t items = N * bands;
#pragma omp parallel
  {
    std::vector<float> ring(static_cast<size_t>(k * Wp * mid), 0.0f);  // k activated rows, padded by p columns
    std::vector<float> z1row(static_cast<size_t>(W * mid)), z2row(static_cast<size_t>(Wo * mid));
    std::vector<float> gs(static_cast<size_t>(std::max(gemm_rows_scratch(Cin, mid), gemm_rows_scratch(mid, Cout))));
    std::vector<float> fs(static_cast<size_t>(mid)), acc(static_cast<size_t>(mid));
    int64_t held[32];
    const float* rowp[32];
#pragma omp for schedule(static)
    for (int64_t item = 0; item < items; ++item) {
      const int64_t n = item / bands, oh0 = (item % bands) * per_band, oh1 = std::min(Ho, oh0 + per_band);
      for (int64_t i = 0; i < k; ++i) held[i] = -1;
      for (int64_t oh = oh0; oh < oh1; ++oh) {
        for (int64_t kh = 0; kh < k; ++kh) {
          const int64_t ih = oh * stride - p + kh;
          const int64_t slot = ((ih % k) + k) % k;
          const bool pad = ih < 0 || ih >= H;
          const int64_t tag = pad ? -2 : ih;
          float* row = ring.data() + slot * Wp * mid;
          rowp[kh] = row;
          if (held[slot] == tag) continue;
          held[slot] = tag;
          if (pad) {
            std::fill(row + p * mid, row + (p + W) * mid, 0.0f);
            continue;
          }
          gemm_rows(xp + (n * H + ih) * W * Cin, Cin, W, Cin, b1.data(), mid, z1row.data(), mid, false, nullptr,
                    nullptr, gs.data());
          activate_row(z1row.data(), W, mid, a1, s1, row + p * mid);
        }
        std::fill(fs.begin(), fs.end(), 0.0f);  // the row's channel sums (conv_row adds them; not needed here)
        const auto [kh0, kh1] = tap_rows_inside(oh * stride - p, k, H);
        conv_row(rowp, kh0, kh1, wk, k, stride, mid, Wo, z2row.data(), fs.data(), nullptr, nullptr, nullptr,
                 acc.data());
        gemm_rows(z2row.data(), mid, Wo, mid, b3.data(), Cout, op + (n * Ho + oh) * Wo * Cout, Cout, true, a2, s2,
                  gs.data());
      }
    }
  }
}

}  // namespace FBNET_ISA
}  // namespace fbnet
FBNET_ISA_END
