// One inverted-residual candidate's training forward in one call: the seven launches the
// Python loop made for it (fbnet_fast/ops/mixed_op_fused.py, _ir_forward), in the same order
// and with the same kernels, so the result is the same bits. At the default search's width
// (0.25) a candidate's kernels take ~0.1-3 ms and the Python around each launch (argument
// checks, allocation of the [C] outputs, NamedTuples, the fold's bookkeeping) ~20 us: ~170 us
// a candidate, ~30 ms of a ~600 ms search step. Reference: the Python path it replaces,
// which still runs where this one does not apply (eval-mode BNs, products torch runs, GPU).
#include "kernels.h"

FBNET_ISA_BEGIN
namespace fbnet {
namespace FBNET_ISA {

// folds: 5 vectors per BN (scale, shift, mean, var, invstd), BN1 and BN2 of `mid` channels,
// BN3 of `Cout`: [scale1, shift1, mean1, var1, invstd1, scale2, ..., invstd3].
void ir_forward(buf_t x, int64_t N, int64_t H, int64_t W, int64_t Cin, buf_t w1t, int64_t mid, buf_t wt,
                int64_t k, int64_t stride, buf_t w3t, int64_t Cout, buf_t gamma1, buf_t beta1, buf_t perm1,
                buf_t gamma2, buf_t beta2, buf_t gamma3, buf_t beta3, buf_t run_mean1, buf_t run_var1,
                buf_t run_mean2, buf_t run_var2, buf_t run_mean3, buf_t run_var3, double eps1, double eps2,
                double eps3, double momentum1, double momentum2, double momentum3, buf_t z1, buf_t z2, buf_t z3,
                buf_t folds, buf_t out, float alpha, bool assign) {
  check_positive(N, "N"); check_positive(H, "H"); check_positive(W, "W");
  check_positive(Cin, "Cin"); check_positive(mid, "mid"); check_positive(Cout, "Cout");
  check_buf(folds, "folds");
  check(stride == 1 || stride == 2, "stride must be 1 or 2");
  const int64_t M = N * H * W;
  const int64_t Mo = N * ((H - 1) / stride + 1) * ((W - 1) / stride + 1);
  float* f = F(folds);
  const auto v = [&](int64_t off) { return reinterpret_cast<buf_t>(f + off); };
  const int64_t s1 = 0, s2 = 5 * mid, s3 = 10 * mid;  // each BN's five vectors
  small_gemm(x, M, Cin, Cin, w1t, mid, z1, mid, false, 0, 0, v(s1 + 2 * mid), v(s1 + 3 * mid));
  bn_fold(v(s1 + 2 * mid), v(s1 + 3 * mid), gamma1, beta1, perm1, mid, eps1, run_mean1, run_var1, momentum1, M,
          v(s1), v(s1 + mid), v(s1 + 4 * mid));
  dwconv_bn_forward(z1, N, H, W, mid, v(s1), v(s1 + mid), wt, k, stride, z2, v(s2 + 2 * mid), v(s2 + 3 * mid), 0, 0,
                    0);
  bn_fold(v(s2 + 2 * mid), v(s2 + 3 * mid), gamma2, beta2, 0, mid, eps2, run_mean2, run_var2, momentum2, Mo, v(s2),
          v(s2 + mid), v(s2 + 4 * mid));
  small_gemm(z2, Mo, mid, mid, w3t, Cout, z3, Cout, false, v(s2), v(s2 + mid), v(s3 + 2 * Cout), v(s3 + 3 * Cout));
  bn_fold(v(s3 + 2 * Cout), v(s3 + 3 * Cout), gamma3, beta3, 0, Cout, eps3, run_mean3, run_var3, momentum3, Mo,
          v(s3), v(s3 + Cout), v(s3 + 4 * Cout));
  affine_act_accumulate(z3, Mo, Cout, v(s3), v(s3 + Cout), false, alpha, out, assign);
}

}  // namespace FBNET_ISA
}  // namespace fbnet
FBNET_ISA_END
