// Greedy non-maximum suppression with torchvision's rules (stable sort by decreasing score, suppress when
// IoU > threshold, area (x2-x1)*(y2-y1)), class-aware: boxes of different classes never suppress each other.
// Outputs a fixed-size index list padded with -1 and the number of kept boxes. Leading dims are a vmap batch.
#include <cmath>
#include <numeric>

#include "common.h"

namespace research_ops {
namespace {

void NmsOne(const float* boxes, const float* scores, const int32_t* classes, int64_t n, float thr, int64_t max_out,
            int32_t* out, int32_t* count) {
  std::vector<int32_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    const bool na = std::isnan(scores[a]), nb = std::isnan(scores[b]);
    if (na || nb) return !na && nb;  // NaN scores last
    return scores[a] > scores[b];
  });
  std::vector<float> x1(n), y1(n), x2(n), y2(n), area(n);
  std::vector<int32_t> cls(n);
  for (int64_t p = 0; p < n; ++p) {
    const float* b = boxes + 4 * order[p];
    x1[p] = b[0], y1[p] = b[1], x2[p] = b[2], y2[p] = b[3];
    area[p] = (x2[p] - x1[p]) * (y2[p] - y1[p]);
    cls[p] = classes[order[p]];
  }
  std::vector<uint8_t> suppressed(n, 0);
  int64_t kept = 0;
  for (int64_t i = 0; i < n && kept < max_out; ++i) {
    if (suppressed[i]) continue;
    out[kept++] = order[i];
    for (int64_t j = i + 1; j < n; ++j) {
      if (suppressed[j] || cls[j] != cls[i]) continue;
      const float w = std::max(0.f, std::min(x2[i], x2[j]) - std::max(x1[i], x1[j]));
      const float h = std::max(0.f, std::min(y2[i], y2[j]) - std::max(y1[i], y1[j]));
      const float inter = w * h;
      if (inter / (area[i] + area[j] - inter) > thr) suppressed[j] = 1;
    }
  }
  for (int64_t k = kept; k < max_out; ++k) out[k] = -1;
  *count = static_cast<int32_t>(kept);
}

ffi::Error NmsImpl(ffi::ThreadPool pool, ffi::AnyBuffer boxes, ffi::AnyBuffer scores, ffi::AnyBuffer classes,
                   ffi::Result<ffi::AnyBuffer> out, ffi::Result<ffi::AnyBuffer> count, float iou_threshold) {
  const auto bd = boxes.dimensions();
  const auto od = out->dimensions();
  if (bd.size() < 2 || bd.back() != 4 || boxes.element_type() != ffi::DataType::F32 ||
      scores.element_type() != ffi::DataType::F32 || classes.element_type() != ffi::DataType::S32 ||
      out->element_type() != ffi::DataType::S32 || count->element_type() != ffi::DataType::S32 || od.size() == 0)
    return Invalid("nms: expected float32 boxes [..., N, 4], float32 scores, int32 classes; got boxes " +
                   DimsStr(bd));
  const int64_t batch = LeadingSize(bd, 2), n = bd[bd.size() - 2], max_out = od.back();
  if (static_cast<int64_t>(scores.element_count()) != batch * n ||
      static_cast<int64_t>(classes.element_count()) != batch * n ||
      static_cast<int64_t>(count->element_count()) != batch)
    return Invalid("nms: inconsistent shapes boxes " + DimsStr(bd) + ", scores " + DimsStr(scores.dimensions()));
  Parallel par(pool);
  par.For(batch, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      NmsOne(reinterpret_cast<const float*>(boxes.untyped_data()) + b * n * 4,
             reinterpret_cast<const float*>(scores.untyped_data()) + b * n,
             reinterpret_cast<const int32_t*>(classes.untyped_data()) + b * n, n, iou_threshold, max_out,
             reinterpret_cast<int32_t*>(out->untyped_data()) + b * max_out,
             reinterpret_cast<int32_t*>(count->untyped_data()) + b);
  });
  return ffi::Error::Success();
}

}  // namespace
}  // namespace research_ops

namespace ro = research_ops;

XLA_FFI_DEFINE_HANDLER_SYMBOL(ResearchNms, ro::NmsImpl,
                              ro::ffi::Ffi::Bind()
                                  .Ctx<ro::ffi::ThreadPool>()
                                  .Arg<ro::ffi::AnyBuffer>()
                                  .Arg<ro::ffi::AnyBuffer>()
                                  .Arg<ro::ffi::AnyBuffer>()
                                  .Ret<ro::ffi::AnyBuffer>()
                                  .Ret<ro::ffi::AnyBuffer>()
                                  .Attr<float>("iou_threshold"));
