// Python module `_research_kernels`: exposes the XLA FFI handlers as PyCapsules for
// jax.ffi.register_ffi_target (see research/ops/_ffi.py).
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>

#include "xla/ffi/api/api.h"

namespace nb = nanobind;

XLA_FFI_DECLARE_HANDLER_SYMBOL(ResearchRoiAlignFwd);
XLA_FFI_DECLARE_HANDLER_SYMBOL(ResearchRoiAlignBwd);
XLA_FFI_DECLARE_HANDLER_SYMBOL(ResearchRoiPoolFwd);
XLA_FFI_DECLARE_HANDLER_SYMBOL(ResearchRoiPoolBwd);
XLA_FFI_DECLARE_HANDLER_SYMBOL(ResearchDeformIm2Col);
XLA_FFI_DECLARE_HANDLER_SYMBOL(ResearchDeformCol2Im);
XLA_FFI_DECLARE_HANDLER_SYMBOL(ResearchNms);

namespace {
template <typename T>
nb::capsule Capsule(T* fn) {
  return nb::capsule(reinterpret_cast<void*>(fn));
}
}  // namespace

NB_MODULE(_research_kernels, m) {
  m.doc() = "XLA FFI CPU kernels for research.ops (RoIAlign family, deformable convolution, NMS).";
  m.def("registrations", []() {
    nb::dict d;
    d["research_roi_align_fwd"] = Capsule(ResearchRoiAlignFwd);
    d["research_roi_align_bwd"] = Capsule(ResearchRoiAlignBwd);
    d["research_roi_pool_fwd"] = Capsule(ResearchRoiPoolFwd);
    d["research_roi_pool_bwd"] = Capsule(ResearchRoiPoolBwd);
    d["research_deform_im2col"] = Capsule(ResearchDeformIm2Col);
    d["research_deform_col2im"] = Capsule(ResearchDeformCol2Im);
    d["research_nms"] = Capsule(ResearchNms);
    return d;
  });
}
