// The one PYBIND11_MODULE of fbnet_fast._C. Tensors arrive as data_ptr() integers
// plus sizes; the Python launchers (fbnet_fast/ops/*.py) check dtype, device and
// contiguity before calling. The GIL is released for every kernel.
//
// Every kernel exists once per ISA variant (common.h); the module binds thin
// forwarders that call the variant chosen at import: the widest one this CPU runs
// (__builtin_cpu_supports), so one binary is fast here and still runs on any x86-64.
// `set_isa` switches it (tests compare the variants; an unsupported one is refused).
#include <pybind11/pybind11.h>

#include <cstring>
#include <string>

#include "kernels.h"

namespace py = pybind11;

namespace fbnet {
#if defined(FBNET_X86_DISPATCH)
namespace v3 { FBNET_KERNEL_DECLS }
namespace v4 { FBNET_KERNEL_DECLS }
#endif

namespace {

struct Table {
  const char* name;
  decltype(&base::bn_stats) bn_stats;
  decltype(&base::affine_act) affine_act;
  decltype(&base::affine_act_accumulate) affine_act_accumulate;
  decltype(&base::act_grad_sums) act_grad_sums;
  decltype(&base::act_grad_apply) act_grad_apply;
  decltype(&base::bn_fold) bn_fold;
  decltype(&base::bn_grad_fold) bn_grad_fold;
  decltype(&base::dwconv_bn_forward) dwconv_bn_forward;
  decltype(&base::dwconv_bn_backward) dwconv_bn_backward;
  decltype(&base::small_gemm) small_gemm;
  decltype(&base::small_gemm_tn) small_gemm_tn;
  decltype(&base::ir_forward) ir_forward;
  decltype(&base::ir_backward) ir_backward;
  decltype(&base::ir_eval) ir_eval;
};

#define FBNET_TABLE(ns)                                                                         \
  Table {                                                                                       \
    #ns, &ns::bn_stats, &ns::affine_act, &ns::affine_act_accumulate, &ns::act_grad_sums,        \
        &ns::act_grad_apply, &ns::bn_fold, &ns::bn_grad_fold, &ns::dwconv_bn_forward,           \
        &ns::dwconv_bn_backward, &ns::small_gemm, &ns::small_gemm_tn, &ns::ir_forward, &ns::ir_backward, \
        &ns::ir_eval \
  }

const Table kBase = FBNET_TABLE(base);
#if defined(FBNET_X86_DISPATCH)
const Table kV3 = FBNET_TABLE(v3);
const Table kV4 = FBNET_TABLE(v4);
#endif

bool supported(const std::string& isa) {
  if (isa == "base") return true;
#if defined(FBNET_X86_DISPATCH)
  __builtin_cpu_init();
  const bool v3 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                  __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("f16c") &&
                  __builtin_cpu_supports("movbe") && __builtin_cpu_supports("popcnt");
  if (isa == "v3") return v3;
  if (isa == "v4")
    return v3 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vl");
#endif
  return false;
}

const Table* pick(const std::string& isa) {
#if defined(FBNET_X86_DISPATCH)
  if (isa == "v4") return &kV4;
  if (isa == "v3") return &kV3;
#endif
  return isa == "base" ? &kBase : nullptr;
}

const Table* g_k = &kBase;

}  // namespace
}  // namespace fbnet

using namespace fbnet;

// Forward the call to the chosen variant: template over the member pointer.
template <auto Member, typename... A>
void call(A... a) {
  (g_k->*Member)(a...);
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "fbnet-fast fused CPU kernels (float32, channels-last, raw buffers)";
  m.attr("ABI_VERSION") = kAbiVersion;
  for (const char* isa : {"v4", "v3", "base"})
    if (supported(isa)) {
      g_k = pick(isa);
      break;
    }
  m.def("isa", [] { return std::string(g_k->name); },
        "The ISA variant in use: 'base' (x86-64), 'v3' (AVX2+FMA) or 'v4' (AVX-512).");
  m.def("compiled_isas", [] {
    py::list out;
    for (const char* isa : {"base", "v3", "v4"})
      if (pick(isa)) out.append(isa);
    return out;
  });
  m.def("set_isa", [](const std::string& isa) {
    const Table* t = pick(isa);
    if (t == nullptr) throw std::invalid_argument("ISA variant '" + isa + "' was not compiled into fbnet_fast._C");
    if (!supported(isa)) throw std::invalid_argument("this CPU cannot run the '" + isa + "' kernels");
    g_k = t;
  }, py::arg("isa"));
  m.def("set_blas", [](buf_t sgemm) { g_sgemm = reinterpret_cast<SgemmFn>(sgemm); }, py::arg("sgemm"),
        "The address of the Fortran BLAS sgemm_ that torch multiplies with (0: none), for the one-call paths.");
  m.def("has_blas", [] { return g_sgemm != nullptr; });
  const auto nogil = py::call_guard<py::gil_scoped_release>();

  m.def("bn_stats", &call<&Table::bn_stats, buf_t, int64_t, int64_t, buf_t, buf_t>, nogil, py::arg("z"),
        py::arg("M"), py::arg("C"), py::arg("mean"), py::arg("var"));
  m.def("affine_act", &call<&Table::affine_act, buf_t, int64_t, int64_t, buf_t, buf_t, bool, buf_t>, nogil,
        py::arg("z"), py::arg("M"), py::arg("C"), py::arg("scale"), py::arg("shift"), py::arg("relu"),
        py::arg("out"));
  m.def("affine_act_accumulate",
        &call<&Table::affine_act_accumulate, buf_t, int64_t, int64_t, buf_t, buf_t, bool, float, buf_t, bool>,
        nogil, py::arg("z"), py::arg("M"), py::arg("C"), py::arg("scale"), py::arg("shift"), py::arg("relu"),
        py::arg("alpha"), py::arg("out"), py::arg("assign") = false);
  m.def("act_grad_sums",
        &call<&Table::act_grad_sums, buf_t, buf_t, int64_t, int64_t, buf_t, buf_t, bool, buf_t, buf_t, buf_t>,
        nogil, py::arg("grad"), py::arg("z"), py::arg("M"), py::arg("C"), py::arg("scale"), py::arg("shift"),
        py::arg("relu"), py::arg("center"), py::arg("sum_g"), py::arg("sum_gz"));
  m.def("act_grad_apply",
        &call<&Table::act_grad_apply, buf_t, buf_t, int64_t, int64_t, buf_t, buf_t, bool, buf_t, buf_t, buf_t,
              buf_t, buf_t>,
        nogil, py::arg("grad"), py::arg("z"), py::arg("M"), py::arg("C"), py::arg("scale"), py::arg("shift"),
        py::arg("relu"), py::arg("center"), py::arg("k1"), py::arg("k2"), py::arg("k3"), py::arg("out"));
  m.def("bn_fold",
        &call<&Table::bn_fold, buf_t, buf_t, buf_t, buf_t, buf_t, int64_t, double, buf_t, buf_t, double, int64_t,
              buf_t, buf_t, buf_t>,
        nogil, py::arg("mean"), py::arg("var"), py::arg("gamma"), py::arg("beta"), py::arg("perm"), py::arg("C"),
        py::arg("eps"), py::arg("running_mean"), py::arg("running_var"), py::arg("momentum"), py::arg("count"),
        py::arg("scale"), py::arg("shift"), py::arg("invstd"));
  m.def("bn_grad_fold",
        &call<&Table::bn_grad_fold, buf_t, buf_t, buf_t, buf_t, buf_t, buf_t, int64_t, double, int64_t, bool,
              buf_t, buf_t, buf_t, buf_t, buf_t, buf_t>,
        nogil, py::arg("sum_g"), py::arg("sum_gz"), py::arg("gamma"), py::arg("beta"), py::arg("invstd"),
        py::arg("perm"), py::arg("C"), py::arg("alpha"), py::arg("count"), py::arg("batch"), py::arg("k1"),
        py::arg("k2"), py::arg("k3"), py::arg("grad_gamma"), py::arg("grad_beta"), py::arg("weight_dot"));
  m.def("dwconv_bn_forward",
        &call<&Table::dwconv_bn_forward, buf_t, int64_t, int64_t, int64_t, int64_t, buf_t, buf_t, buf_t, int64_t,
              int64_t, buf_t, buf_t, buf_t, buf_t, buf_t, buf_t>,
        nogil, py::arg("z1"), py::arg("N"), py::arg("H"), py::arg("W"), py::arg("C"), py::arg("scale1"),
        py::arg("shift1"), py::arg("weight"), py::arg("k"), py::arg("stride"), py::arg("out"), py::arg("mean"),
        py::arg("var"), py::arg("scale2") = 0, py::arg("shift2") = 0, py::arg("act_out") = 0);
  m.def("dwconv_bn_backward",
        &call<&Table::dwconv_bn_backward, buf_t, buf_t, int64_t, int64_t, int64_t, int64_t, buf_t, buf_t, buf_t,
              int64_t, int64_t, buf_t, buf_t, buf_t, buf_t, buf_t>,
        nogil, py::arg("grad_out"), py::arg("z1"), py::arg("N"), py::arg("H"), py::arg("W"), py::arg("C"),
        py::arg("scale1"), py::arg("shift1"), py::arg("weight"), py::arg("k"), py::arg("stride"),
        py::arg("center1"), py::arg("grad_in"), py::arg("grad_weight"), py::arg("sum_g"), py::arg("sum_gz"));
  m.def("small_gemm",
        &call<&Table::small_gemm, buf_t, int64_t, int64_t, int64_t, buf_t, int64_t, buf_t, int64_t, bool, buf_t,
              buf_t, buf_t, buf_t>,
        nogil, py::arg("a"), py::arg("M"), py::arg("K"), py::arg("lda"), py::arg("b"), py::arg("N"), py::arg("out"),
        py::arg("ldo"), py::arg("accumulate"), py::arg("a_scale") = 0, py::arg("a_shift") = 0, py::arg("mean") = 0,
        py::arg("var") = 0);
  m.def("small_gemm_tn",
        &call<&Table::small_gemm_tn, buf_t, int64_t, int64_t, int64_t, buf_t, int64_t, int64_t, buf_t, buf_t, buf_t,
              bool>,
        nogil, py::arg("x"), py::arg("M"), py::arg("P"), py::arg("ldx"), py::arg("y"), py::arg("Q"), py::arg("ldy"),
        py::arg("out"), py::arg("scale") = 0, py::arg("shift") = 0, py::arg("on_x") = false);
  // positional only: called once per candidate from fbnet_fast/ops/mixed_op_fused.py (_ir_*_cpp)
  m.def("ir_forward",
        &call<&Table::ir_forward, buf_t, int64_t, int64_t, int64_t, int64_t, buf_t, int64_t, buf_t, int64_t,
              int64_t, buf_t, int64_t, int64_t, buf_t, buf_t, buf_t, buf_t, buf_t, buf_t, buf_t, buf_t, buf_t, buf_t, buf_t,
              buf_t, buf_t, double, double, double, double, double, double, buf_t, buf_t, buf_t, buf_t, buf_t,
              float, bool, int64_t>,
        nogil);
  m.def("ir_backward",
        &call<&Table::ir_backward, buf_t, buf_t, buf_t, buf_t, buf_t, int64_t, int64_t, int64_t, int64_t, int64_t,
              int64_t, int64_t, int64_t, buf_t, buf_t, buf_t, int64_t, buf_t, buf_t, buf_t, buf_t, buf_t, buf_t, buf_t, buf_t,
              buf_t, buf_t, buf_t, buf_t, buf_t, buf_t, buf_t, buf_t, buf_t, buf_t, buf_t, bool, bool, bool, double,
              buf_t, buf_t, buf_t, buf_t, buf_t, bool, int64_t>,
        nogil);
  m.def("ir_eval",
        &call<&Table::ir_eval, buf_t, int64_t, int64_t, int64_t, int64_t, buf_t, int64_t, buf_t, int64_t, int64_t,
              buf_t, int64_t, buf_t, buf_t, buf_t, buf_t, buf_t>,
        nogil);
}
