// Declarations of the fused CPU kernels. Every activation is float32, contiguous,
// channels-last: z[M, C] with M = N*H*W, or [N, H, W, C]. Shapes and semantics are
// documented on the Python launchers (fbnet_fast/ops/bn_act.py, dwconv_bn.py).
// One copy of the declarations per ISA namespace (fbnet::base / v3 / v4, see common.h).
#pragma once

#include <vector>

#include "common.h"

#define FBNET_KERNEL_DECLS                                                                        \
  /* bn_act family */                                                                             \
  void bn_stats(buf_t z, int64_t M, int64_t C, buf_t mean_out, buf_t var_out);                    \
  void affine_act(buf_t z, int64_t M, int64_t C, buf_t scale, buf_t shift, bool relu, buf_t out); \
  void affine_act_accumulate(buf_t z, int64_t M, int64_t C, buf_t scale, buf_t shift, bool relu,  \
                             float alpha, buf_t out, bool assign);                                             \
  void act_grad_sums(buf_t g, buf_t z, int64_t M, int64_t C, buf_t scale, buf_t shift, bool relu, \
                     buf_t center, buf_t sum_g, buf_t sum_gz);                                    \
  void act_grad_apply(buf_t g, buf_t z, int64_t M, int64_t C, buf_t scale, buf_t shift,           \
                      bool relu, buf_t center, buf_t k1, buf_t k2, buf_t k3, buf_t out);          \
  void bn_fold(buf_t mean, buf_t var, buf_t gamma, buf_t beta, buf_t perm, int64_t C, double eps, \
               buf_t running_mean, buf_t running_var, double momentum, int64_t count,             \
               buf_t scale, buf_t shift, buf_t invstd);                                           \
  void bn_grad_fold(buf_t sum_g, buf_t sum_gz, buf_t gamma, buf_t beta, buf_t invstd, buf_t perm, \
                    int64_t C, double alpha, int64_t count, bool batch, buf_t k1, buf_t k2,       \
                    buf_t k3, buf_t grad_gamma, buf_t grad_beta, buf_t weight_dot);               \
  /* dwconv_bn family */                                                                          \
  void dwconv_bn_forward(buf_t z1, int64_t N, int64_t H, int64_t W, int64_t C, buf_t scale1,      \
                         buf_t shift1, buf_t weight, int64_t k, int64_t stride, buf_t out,        \
                         buf_t mean_out, buf_t var_out, buf_t scale2, buf_t shift2,               \
                         buf_t act_out);                                                          \
  void dwconv_bn_backward(buf_t grad_out, buf_t z1, int64_t N, int64_t H, int64_t W, int64_t C,   \
                          buf_t scale1, buf_t shift1, buf_t weight, int64_t k, int64_t stride,    \
                          buf_t center1, buf_t grad_in, buf_t grad_weight, buf_t sum_g,           \
                          buf_t sum_gz);                                                          \
  /* small_gemm */                                                                                \
  void small_gemm(buf_t a, int64_t M, int64_t K, int64_t lda, buf_t b, int64_t N, buf_t out,      \
                  int64_t ldo, bool accumulate, buf_t a_scale, buf_t a_shift, buf_t mean_out,     \
                  buf_t var_out);                                                                 \
  void small_gemm_tn(buf_t x, int64_t M, int64_t P, int64_t ldx, buf_t y, int64_t Q, int64_t ldy, \
                     buf_t out, buf_t aff_scale, buf_t aff_shift, bool aff_on_x);                   \
  /* ir_block: one IR candidate's training forward (the launches above, composed) */               \
  void ir_forward(buf_t x, int64_t N, int64_t H, int64_t W, int64_t Cin, buf_t w1, int64_t mid,      \
                  buf_t wt, int64_t k, int64_t stride, buf_t w3, int64_t Cout, int64_t groups,       \
                  buf_t gamma1,                                                                      \
                  buf_t beta1, buf_t perm1, buf_t gamma2, buf_t beta2, buf_t gamma3, buf_t beta3,    \
                  buf_t run_mean1, buf_t run_var1, buf_t run_mean2, buf_t run_var2,                  \
                  buf_t run_mean3, buf_t run_var3, double eps1, double eps2, double eps3,            \
                  double momentum1, double momentum2, double momentum3, buf_t z1, buf_t z2,          \
                  buf_t z3, buf_t folds, buf_t out, float alpha, bool assign, int64_t blas);        \
  void ir_backward(buf_t go, buf_t z1, buf_t z2, buf_t z3, buf_t x, int64_t N, int64_t H, int64_t W, \
                   int64_t Cin, int64_t mid, int64_t Cout, int64_t k, int64_t stride, buf_t w1,      \
                   buf_t wt, buf_t w3, int64_t groups, buf_t gamma1, buf_t beta1, buf_t perm1,       \
                   buf_t gamma2,                                                                     \
                   buf_t beta2, buf_t gamma3, buf_t beta3, buf_t scale1, buf_t shift1, buf_t mean1,  \
                   buf_t invstd1, buf_t scale2, buf_t shift2, buf_t mean2, buf_t invstd2,            \
                   buf_t scale3, buf_t shift3, buf_t mean3, buf_t invstd3, bool batch1, bool batch2, \
                   bool batch3, double alpha, buf_t grads, buf_t gw1, buf_t gwt, buf_t gw3, buf_t gx, \
                   bool accumulate_gx, int64_t blas);                                              \
  void ir_eval(buf_t x, int64_t N, int64_t H, int64_t W, int64_t Cin, buf_t w1, int64_t mid, buf_t wt,        \
               int64_t k, int64_t stride, buf_t w3, int64_t Cout, buf_t scale1, buf_t shift1, buf_t scale2,     \
               buf_t shift2, buf_t out);

namespace fbnet {
namespace FBNET_ISA {
FBNET_KERNEL_DECLS

// Single-threaded row routines the kernels share (ir_block.cpp composes them; not bound to Python).
// small_gemm.cpp: b [K, N] with its columns zero-padded to a multiple of 8 (the layout gemm_rows reads), and
// o[rows, N] (+)= A[rows, K] @ b for `rows` rows, with the prologue relu(sc * A + sh) when sc is given (scratch:
// gemm_rows_scratch(K, N) floats); per element the same sum, in the same order, as small_gemm.
std::vector<float> padded_columns(const float* b, int64_t K, int64_t N);
int64_t gemm_rows_scratch(int64_t K, int64_t N);
void gemm_rows(const float* a, int64_t lda, int64_t rows, int64_t K, const float* bp, int64_t N, float* o,
               int64_t ldo, bool accumulate, const float* sc, const float* sh, float* scratch);
// dwconv_bn.cpp: one activated input row, and one output row of the depthwise conv (see there).
void activate_row(const float* src, int64_t W, int64_t C, const float* a, const float* b, float* dst);
void conv_row(const float* const* rowp, int kh0, int kh1, const float* wt, int64_t k, int64_t stride, int64_t C,
              int64_t Wo, float* orow, float* fs, const float* a2, const float* b2, float* hrow, float* acc);
// The k tap rows first, first + 1, ... of a depthwise conv's output row (first = oh * stride - padding): those
// inside an image of H rows are kh in [kh0, kh1); the others are the padding's rows of zeros.
struct TapRows {
  int kh0, kh1;
};
inline TapRows tap_rows_inside(int64_t first, int64_t k, int64_t H) {
  return {static_cast<int>(std::max<int64_t>(0, -first)), static_cast<int>(std::min<int64_t>(k, H - first))};
}
}  // namespace FBNET_ISA
}  // namespace fbnet
