// The one PYBIND11_MODULE of fbnet_fast._C. Tensors arrive as data_ptr() integers
// plus sizes; the Python launchers (fbnet_fast/ops/*.py) check dtype, device and
// contiguity before calling. The GIL is released for every kernel.
#include <pybind11/pybind11.h>

#include "kernels.h"

namespace py = pybind11;
using namespace fbnet;

PYBIND11_MODULE(_C, m) {
  m.doc() = "fbnet-fast fused CPU kernels (float32, channels-last, raw buffers)";
  m.attr("ABI_VERSION") = kAbiVersion;
  const auto nogil = py::call_guard<py::gil_scoped_release>();

  m.def("bn_stats", &bn_stats, nogil, py::arg("z"), py::arg("M"), py::arg("C"), py::arg("mean"),
        py::arg("var"));
  m.def("affine_act", &affine_act, nogil, py::arg("z"), py::arg("M"), py::arg("C"), py::arg("scale"),
        py::arg("shift"), py::arg("relu"), py::arg("out"));
  m.def("affine_act_accumulate", &affine_act_accumulate, nogil, py::arg("z"), py::arg("M"),
        py::arg("C"), py::arg("scale"), py::arg("shift"), py::arg("relu"), py::arg("alpha"),
        py::arg("out"));
  m.def("act_grad_sums", &act_grad_sums, nogil, py::arg("grad"), py::arg("z"), py::arg("M"),
        py::arg("C"), py::arg("scale"), py::arg("shift"), py::arg("relu"), py::arg("center"),
        py::arg("sum_g"), py::arg("sum_gz"));
  m.def("act_grad_apply", &act_grad_apply, nogil, py::arg("grad"), py::arg("z"), py::arg("M"),
        py::arg("C"), py::arg("scale"), py::arg("shift"), py::arg("relu"), py::arg("center"), py::arg("k1"),
        py::arg("k2"), py::arg("k3"), py::arg("out"));
  m.def("dwconv_bn_forward", &dwconv_bn_forward, nogil, py::arg("z1"), py::arg("N"), py::arg("H"),
        py::arg("W"), py::arg("C"), py::arg("scale1"), py::arg("shift1"), py::arg("weight"),
        py::arg("k"), py::arg("stride"), py::arg("out"), py::arg("mean"), py::arg("var"));
  m.def("dwconv_bn_backward", &dwconv_bn_backward, nogil, py::arg("grad_out"), py::arg("z1"),
        py::arg("N"), py::arg("H"), py::arg("W"), py::arg("C"), py::arg("scale1"),
        py::arg("shift1"), py::arg("weight"), py::arg("k"), py::arg("stride"), py::arg("center1"),
        py::arg("grad_in"), py::arg("grad_weight"), py::arg("sum_g"), py::arg("sum_gz"));
}
