// RoIAlign (He et al. 2017, Mask R-CNN), position-sensitive RoIAlign (Dai et al. 2016, R-FCN) and RoIPool
// (Girshick 2015, Fast R-CNN): channels-last CPU kernels with torchvision's sampling rules.
//
// RoIAlign is separable: a bin's average of bilinear samples equals sum_{r,c} wy[r] wx[c] F[r, c, :] / count,
// where wy (wx) merges the row (column) weights of all of the bin's sample rows (columns). Per ROI we build
// these taps once (only samples inside [-1, size] are visited, so huge adaptive grids are cheap), then do
// channel-vectorised AXPYs. Forward: parallel over ROIs. Backward: parallel over stripes of feature rows
// (each stripe owns its rows of the gradient: no atomics, deterministic).
#include <cmath>
#include <limits>

#include "common.h"

namespace research_ops {
namespace {

constexpr int kModeAlign = 0;
constexpr int kModePs = 1;

struct Taps {  // CSR over bins: taps of bin i are [start[i], start[i + 1])
  std::vector<int32_t> start, index;
  std::vector<float> weight;
};

struct Scratch {
  std::vector<float> acc;
  std::vector<int32_t> touched;
  void Reset(int size) {
    if (static_cast<int>(acc.size()) < size) acc.assign(size, 0.f);
  }
};

// Taps along one axis. Sample s of bin i sits at (start + i*bin) + (s + .5)*bin/grid (torchvision's float
// arithmetic); samples outside [-1, size] contribute nothing, others are clamped to >= 0 and to the last row.
void BuildTaps(float start, float bin, int64_t grid, int n_bins, int size, Taps& taps, Scratch& s) {
  taps.start.assign(1, 0);
  taps.index.clear();
  taps.weight.clear();
  s.Reset(size);
  for (int i = 0; i < n_bins; ++i) {
    const float base = start + static_cast<float>(i) * bin;
    int64_t lo = 0, hi = grid - 1;
    if (grid > 0 && bin != 0.f) {  // visit only samples that can land in [-1, size] (with a margin)
      const double step = static_cast<double>(bin) / static_cast<double>(grid);
      double a = (-1.0 - base) / step - 0.5, b = (static_cast<double>(size) - base) / step - 0.5;
      if (a > b) std::swap(a, b);
      a = std::floor(a) - 2.0;
      b = std::ceil(b) + 2.0;
      lo = a <= 0.0 ? 0 : (a >= static_cast<double>(grid) ? grid : static_cast<int64_t>(a));
      hi = b >= static_cast<double>(grid - 1) ? grid - 1 : (b < 0.0 ? -1 : static_cast<int64_t>(b));
    }
    s.touched.clear();
    auto add = [&](int r, float w) {
      if (w == 0.f) return;
      if (s.acc[r] == 0.f) s.touched.push_back(r);
      s.acc[r] += w;  // weights are > 0, so a touched row is never 0
    };
    for (int64_t iy = lo; iy <= hi; ++iy) {
      float y = base + static_cast<float>(iy + .5f) * bin / static_cast<float>(grid);
      if (y < -1.f || y > static_cast<float>(size)) continue;
      if (y <= 0.f) y = 0.f;
      int y0 = static_cast<int>(y), y1;
      float ly;
      if (y0 >= size - 1) {
        y0 = y1 = size - 1;
        ly = 0.f;
      } else {
        y1 = y0 + 1;
        ly = y - static_cast<float>(y0);
      }
      add(y0, 1.f - ly);
      add(y1, ly);
    }
    std::sort(s.touched.begin(), s.touched.end());
    for (int r : s.touched) {
      taps.index.push_back(r);
      taps.weight.push_back(s.acc[r]);
      s.acc[r] = 0.f;
    }
    taps.start.push_back(static_cast<int32_t>(taps.index.size()));
  }
}

struct Roi {
  bool valid = false;
  int64_t image = 0;  // flat image index (vmap batch folded in)
  float count = 1.f;
  Taps y, x;
  int32_t row_lo = 0, row_hi = -1;  // rows touched (for the backward stripes)
};

int64_t GridSize(float v) {
  if (!(v > 0.f)) return 0;  // also NaN
  const float c = std::ceil(v);
  return c > 1e9f ? int64_t{1000000000} : static_cast<int64_t>(c);
}

void MakeRoi(const float* box, int32_t idx, int64_t n_images, int64_t batch, int ph, int pw, float scale,
             int sampling_ratio, bool aligned, int height, int width, Scratch& s, Roi& roi) {
  roi.valid = false;
  roi.y.index.clear();
  roi.x.index.clear();
  if (idx < 0 || idx >= n_images) return;
  for (int i = 0; i < 4; ++i)
    if (!std::isfinite(box[i])) return;
  const float off = aligned ? .5f : 0.f;
  const float x1 = box[0] * scale - off, y1 = box[1] * scale - off;
  const float x2 = box[2] * scale - off, y2 = box[3] * scale - off;
  float rw = x2 - x1, rh = y2 - y1;
  if (!aligned) {
    rw = std::max(rw, 1.f);
    rh = std::max(rh, 1.f);
  }
  const float bh = rh / static_cast<float>(ph), bw = rw / static_cast<float>(pw);
  const int64_t gh = sampling_ratio > 0 ? sampling_ratio : GridSize(bh);
  const int64_t gw = sampling_ratio > 0 ? sampling_ratio : GridSize(bw);
  roi.valid = true;
  roi.image = batch * n_images + idx;
  roi.count = static_cast<float>(std::max<int64_t>(gh * gw, 1));
  BuildTaps(y1, bh, gh, ph, height, roi.y, s);
  BuildTaps(x1, bw, gw, pw, width, roi.x, s);
  if (!roi.y.index.empty()) {
    roi.row_lo = *std::min_element(roi.y.index.begin(), roi.y.index.end());
    roi.row_hi = *std::max_element(roi.y.index.begin(), roi.y.index.end());
  } else {
    roi.row_lo = 0;
    roi.row_hi = -1;
  }
}

struct RoiArgs {
  int64_t batch, n, h, w, c, k, co;
  int ph, pw, sampling_ratio, mode;
  float scale;
  bool aligned;
};

ffi::Error CheckRoiShapes(const char* op, ffi::AnyBuffer::Dimensions fdims, ffi::AnyBuffer boxes,
                          ffi::AnyBuffer idx, int ph, int pw, int mode, RoiArgs& a) {
  if (fdims.size() < 4) return Invalid(std::string(op) + ": features must have rank >= 4, got " + DimsStr(fdims));
  const auto bd = boxes.dimensions();
  const auto id = idx.dimensions();
  a.batch = LeadingSize(fdims, 4);
  a.n = fdims[fdims.size() - 4];
  a.h = fdims[fdims.size() - 3];
  a.w = fdims[fdims.size() - 2];
  a.c = fdims[fdims.size() - 1];
  if (bd.size() < 2 || bd.back() != 4 || LeadingSize(bd, 2) != a.batch || id.size() + 1 != bd.size() ||
      LeadingSize(id, 1) != a.batch || id.back() != bd[bd.size() - 2])
    return Invalid(std::string(op) + ": inconsistent shapes features " + DimsStr(fdims) + ", boxes " +
                   DimsStr(bd) + ", box_indices " + DimsStr(id));
  if (boxes.element_type() != ffi::DataType::F32 || idx.element_type() != ffi::DataType::S32)
    return Invalid(std::string(op) + ": boxes must be float32 and box_indices int32");
  a.k = bd[bd.size() - 2];
  a.ph = ph;
  a.pw = pw;
  a.mode = mode;
  if (ph <= 0 || pw <= 0) return Invalid(std::string(op) + ": bad output size");
  if (mode == kModePs && a.c % (ph * pw) != 0)
    return Invalid(std::string(op) + ": channels not divisible by ph*pw");
  a.co = mode == kModePs ? a.c / (ph * pw) : a.c;
  return ffi::Error::Success();
}

template <typename T>
void RoiAlignForward(Parallel& par, const RoiArgs& a, const T* feat, const float* boxes, const int32_t* idx,
                     T* out) {
  const int64_t total = a.batch * a.k;
  par.For(total, 1, [&](int64_t begin, int64_t end) {
    Scratch s;
    Roi roi;
    std::vector<float> acc(a.co);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / a.k;
      MakeRoi(boxes + 4 * t, idx[t], a.n, b, a.ph, a.pw, a.scale, a.sampling_ratio, a.aligned || a.mode == kModePs,
              static_cast<int>(a.h), static_cast<int>(a.w), s, roi);
      T* o = out + t * a.ph * a.pw * a.co;
      for (int i = 0; i < a.ph; ++i) {
        for (int j = 0; j < a.pw; ++j) {
          std::fill(acc.begin(), acc.end(), 0.f);
          if (roi.valid) {
            const int64_t cofs = a.mode == kModePs ? i * a.pw + j : 0;
            for (int32_t ty = roi.y.start[i]; ty < roi.y.start[i + 1]; ++ty) {
              const T* row = feat + ((roi.image * a.h + roi.y.index[ty]) * a.w) * a.c + cofs;
              const float wy = roi.y.weight[ty];
              for (int32_t tx = roi.x.start[j]; tx < roi.x.start[j + 1]; ++tx) {
                const float wgt = wy * roi.x.weight[tx];
                const T* src = row + static_cast<int64_t>(roi.x.index[tx]) * a.c;
                if (a.mode == kModePs)
                  AxpyStrided(wgt, src, a.ph * a.pw, acc.data(), a.co);
                else
                  Axpy(wgt, src, acc.data(), a.co);
              }
            }
          }
          T* dst = o + (i * a.pw + j) * a.co;
          for (int64_t c = 0; c < a.co; ++c) dst[c] = FromFloat<T>(acc[c] / roi.count);
        }
      }
    }
  });
}

template <typename T>
void RoiAlignBackward(Parallel& par, const RoiArgs& a, const T* grad, const float* boxes, const int32_t* idx,
                      T* gfeat) {
  const int64_t total = a.batch * a.k;
  std::vector<Roi> rois(total);
  par.For(total, 16, [&](int64_t begin, int64_t end) {
    Scratch s;
    for (int64_t t = begin; t < end; ++t)
      MakeRoi(boxes + 4 * t, idx[t], a.n, t / a.k, a.ph, a.pw, a.scale, a.sampling_ratio,
              a.aligned || a.mode == kModePs, static_cast<int>(a.h), static_cast<int>(a.w), s, rois[t]);
  });
  const int64_t rows = a.batch * a.n * a.h;  // global feature rows, split into stripes
  const int64_t row_elems = a.w * a.c;
  std::vector<float> tmp;
  float* g32 = nullptr;
  if constexpr (std::is_same_v<T, float>) {
    g32 = gfeat;
  } else {
    tmp.resize(rows * row_elems);
    g32 = tmp.data();
  }
  const int64_t stripes = std::min<int64_t>(rows, 8 * par.threads());
  par.For(stripes, 1, [&](int64_t sb, int64_t se) {
    for (int64_t st = sb; st < se; ++st) {
      const int64_t r0 = rows * st / stripes, r1 = rows * (st + 1) / stripes;
      std::fill(g32 + r0 * row_elems, g32 + r1 * row_elems, 0.f);
      std::vector<float> g(a.co);
      for (int64_t t = 0; t < total; ++t) {
        const Roi& roi = rois[t];
        if (!roi.valid) continue;
        const int64_t base_row = roi.image * a.h;
        if (base_row + roi.row_hi < r0 || base_row + roi.row_lo >= r1) continue;
        const float inv = 1.f / roi.count;
        for (int i = 0; i < a.ph; ++i) {
          for (int j = 0; j < a.pw; ++j) {
            const T* go = grad + ((t * a.ph + i) * a.pw + j) * a.co;
            bool loaded = false;
            const int64_t cofs = a.mode == kModePs ? i * a.pw + j : 0;
            for (int32_t ty = roi.y.start[i]; ty < roi.y.start[i + 1]; ++ty) {
              const int64_t grow = base_row + roi.y.index[ty];
              if (grow < r0 || grow >= r1) continue;
              if (!loaded) {
                for (int64_t c = 0; c < a.co; ++c) g[c] = ToFloat(go[c]) * inv;
                loaded = true;
              }
              float* dst_row = g32 + grow * row_elems + cofs;
              const float wy = roi.y.weight[ty];
              for (int32_t tx = roi.x.start[j]; tx < roi.x.start[j + 1]; ++tx) {
                const float wgt = wy * roi.x.weight[tx];
                float* dst = dst_row + static_cast<int64_t>(roi.x.index[tx]) * a.c;
                if (a.mode == kModePs) {
                  const int64_t stride = a.ph * a.pw;
                  for (int64_t c = 0; c < a.co; ++c) dst[c * stride] += wgt * g[c];
                } else {
                  for (int64_t c = 0; c < a.co; ++c) dst[c] += wgt * g[c];
                }
              }
            }
          }
        }
      }
      if constexpr (!std::is_same_v<T, float>) {
        for (int64_t e = r0 * row_elems; e < r1 * row_elems; ++e) gfeat[e] = FromFloat<T>(g32[e]);
      }
    }
  });
}

ffi::Error RoiAlignFwdImpl(ffi::ThreadPool pool, ffi::AnyBuffer features, ffi::AnyBuffer boxes,
                           ffi::AnyBuffer idx, ffi::Result<ffi::AnyBuffer> out, int32_t pooled_h,
                           int32_t pooled_w, float spatial_scale, int32_t sampling_ratio, bool aligned,
                           int32_t mode) {
  RoiArgs a;
  if (auto e = CheckRoiShapes("roi_align", features.dimensions(), boxes, idx, pooled_h, pooled_w, mode, a);
      !e.success())
    return e;
  a.scale = spatial_scale;
  a.sampling_ratio = sampling_ratio;
  a.aligned = aligned;
  if (out->element_type() != features.element_type() ||
      static_cast<int64_t>(out->element_count()) != a.batch * a.k * a.ph * a.pw * a.co)
    return Invalid("roi_align: bad output buffer " + DimsStr(out->dimensions()));
  Parallel par(pool);
  const bool ok = DispatchFloat(features.element_type(), [&](auto tag) {
    using T = decltype(tag);
    RoiAlignForward<T>(par, a, reinterpret_cast<const T*>(features.untyped_data()),
                       reinterpret_cast<const float*>(boxes.untyped_data()),
                       reinterpret_cast<const int32_t*>(idx.untyped_data()), reinterpret_cast<T*>(out->untyped_data()));
  });
  return ok ? ffi::Error::Success() : Invalid("roi_align: features must be float32, bfloat16 or float16");
}

ffi::Error RoiAlignBwdImpl(ffi::ThreadPool pool, ffi::AnyBuffer grad, ffi::AnyBuffer boxes, ffi::AnyBuffer idx,
                           ffi::Result<ffi::AnyBuffer> gfeat, int32_t pooled_h, int32_t pooled_w,
                           float spatial_scale, int32_t sampling_ratio, bool aligned, int32_t mode) {
  RoiArgs a;
  if (auto e = CheckRoiShapes("roi_align_bwd", gfeat->dimensions(), boxes, idx, pooled_h, pooled_w, mode, a);
      !e.success())
    return e;
  a.scale = spatial_scale;
  a.sampling_ratio = sampling_ratio;
  a.aligned = aligned;
  if (grad.element_type() != gfeat->element_type() ||
      static_cast<int64_t>(grad.element_count()) != a.batch * a.k * a.ph * a.pw * a.co)
    return Invalid("roi_align_bwd: bad gradient buffer " + DimsStr(grad.dimensions()));
  Parallel par(pool);
  const bool ok = DispatchFloat(grad.element_type(), [&](auto tag) {
    using T = decltype(tag);
    RoiAlignBackward<T>(par, a, reinterpret_cast<const T*>(grad.untyped_data()),
                        reinterpret_cast<const float*>(boxes.untyped_data()),
                        reinterpret_cast<const int32_t*>(idx.untyped_data()),
                        reinterpret_cast<T*>(gfeat->untyped_data()));
  });
  return ok ? ffi::Error::Success() : Invalid("roi_align_bwd: unsupported dtype");
}

// ---------------------------------------------------------------------------------------------------------
// RoIPool
// ---------------------------------------------------------------------------------------------------------
int RoundClamp(float v) {  // C round(): half away from zero; clamped so that the int conversion is defined
  const float r = std::round(v);
  return static_cast<int>(std::min(std::max(r, -1e9f), 1e9f));
}

template <typename T>
void RoiPoolForward(Parallel& par, const RoiArgs& a, const T* feat, const float* boxes, const int32_t* idx, T* out,
                    int32_t* argmax) {
  const int64_t total = a.batch * a.k;
  const int H = static_cast<int>(a.h), W = static_cast<int>(a.w);
  par.For(total, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> best(a.c);
    std::vector<int32_t> arg(a.c);
    for (int64_t t = begin; t < end; ++t) {
      const float* box = boxes + 4 * t;
      const int32_t n = idx[t];
      bool valid = n >= 0 && n < a.n;
      for (int i = 0; i < 4; ++i) valid = valid && std::isfinite(box[i]);
      const int64_t image = (t / a.k) * a.n + n;
      int sw = 0, sh = 0, rw = 1, rh = 1;
      if (valid) {
        sw = RoundClamp(box[0] * a.scale);
        sh = RoundClamp(box[1] * a.scale);
        rw = std::max(RoundClamp(box[2] * a.scale) - sw + 1, 1);
        rh = std::max(RoundClamp(box[3] * a.scale) - sh + 1, 1);
      }
      const float bh = static_cast<float>(rh) / static_cast<float>(a.ph);
      const float bw = static_cast<float>(rw) / static_cast<float>(a.pw);
      for (int i = 0; i < a.ph; ++i) {
        for (int j = 0; j < a.pw; ++j) {
          int hs = static_cast<int>(std::floor(static_cast<float>(i) * bh));
          int he = static_cast<int>(std::ceil(static_cast<float>(i + 1) * bh));
          int ws = static_cast<int>(std::floor(static_cast<float>(j) * bw));
          int we = static_cast<int>(std::ceil(static_cast<float>(j + 1) * bw));
          hs = std::min(std::max(hs + sh, 0), H);
          he = std::min(std::max(he + sh, 0), H);
          ws = std::min(std::max(ws + sw, 0), W);
          we = std::min(std::max(we + sw, 0), W);
          const bool empty = !valid || he <= hs || we <= ws;
          std::fill(best.begin(), best.end(), empty ? 0.f : -std::numeric_limits<float>::max());
          std::fill(arg.begin(), arg.end(), -1);
          if (!empty) {
            for (int y = hs; y < he; ++y) {
              for (int x = ws; x < we; ++x) {
                const T* src = feat + ((image * a.h + y) * a.w + x) * a.c;
                const int32_t pos = y * W + x;
                for (int64_t c = 0; c < a.c; ++c) {
                  const float v = ToFloat(src[c]);
                  const bool gt = v > best[c];
                  best[c] = gt ? v : best[c];
                  arg[c] = gt ? pos : arg[c];
                }
              }
            }
          }
          const int64_t o = ((t * a.ph + i) * a.pw + j) * a.c;
          for (int64_t c = 0; c < a.c; ++c) {
            out[o + c] = FromFloat<T>(best[c]);
            argmax[o + c] = arg[c];
          }
        }
      }
    }
  });
}

template <typename T>
void RoiPoolBackward(Parallel& par, const RoiArgs& a, const T* grad, const int32_t* idx, const int32_t* argmax,
                     T* gfeat) {
  const int64_t total = a.batch * a.k;
  const int64_t rows = a.batch * a.n * a.h, row_elems = a.w * a.c;
  std::vector<float> tmp;
  float* g32 = nullptr;
  if constexpr (std::is_same_v<T, float>) {
    g32 = gfeat;
  } else {
    tmp.resize(rows * row_elems);
    g32 = tmp.data();
  }
  const int64_t stripes = std::min<int64_t>(rows, 8 * par.threads());
  const int64_t bin_elems = a.ph * a.pw * a.c;
  par.For(stripes, 1, [&](int64_t sb, int64_t se) {
    for (int64_t st = sb; st < se; ++st) {
      const int64_t r0 = rows * st / stripes, r1 = rows * (st + 1) / stripes;
      std::fill(g32 + r0 * row_elems, g32 + r1 * row_elems, 0.f);
      for (int64_t t = 0; t < total; ++t) {
        const int32_t n = idx[t];
        if (n < 0 || n >= a.n) continue;
        const int64_t image = (t / a.k) * a.n + n;
        if ((image + 1) * a.h <= r0 || image * a.h >= r1) continue;
        for (int64_t e = 0; e < bin_elems; ++e) {
          const int32_t am = argmax[t * bin_elems + e];
          if (am < 0) continue;
          const int64_t grow = image * a.h + am / a.w;
          if (grow < r0 || grow >= r1) continue;
          const int64_t c = e % a.c;
          g32[(image * a.h * a.w + am) * a.c + c] += ToFloat(grad[t * bin_elems + e]);
        }
      }
      if constexpr (!std::is_same_v<T, float>) {
        for (int64_t e = r0 * row_elems; e < r1 * row_elems; ++e) gfeat[e] = FromFloat<T>(g32[e]);
      }
    }
  });
}

ffi::Error RoiPoolFwdImpl(ffi::ThreadPool pool, ffi::AnyBuffer features, ffi::AnyBuffer boxes, ffi::AnyBuffer idx,
                          ffi::Result<ffi::AnyBuffer> out, ffi::Result<ffi::AnyBuffer> argmax, int32_t pooled_h,
                          int32_t pooled_w, float spatial_scale) {
  RoiArgs a;
  if (auto e = CheckRoiShapes("roi_pool", features.dimensions(), boxes, idx, pooled_h, pooled_w, kModeAlign, a);
      !e.success())
    return e;
  a.scale = spatial_scale;
  const int64_t want = a.batch * a.k * a.ph * a.pw * a.c;
  if (static_cast<int64_t>(out->element_count()) != want || static_cast<int64_t>(argmax->element_count()) != want ||
      argmax->element_type() != ffi::DataType::S32 || out->element_type() != features.element_type())
    return Invalid("roi_pool: bad output buffers");
  Parallel par(pool);
  const bool ok = DispatchFloat(features.element_type(), [&](auto tag) {
    using T = decltype(tag);
    RoiPoolForward<T>(par, a, reinterpret_cast<const T*>(features.untyped_data()),
                      reinterpret_cast<const float*>(boxes.untyped_data()),
                      reinterpret_cast<const int32_t*>(idx.untyped_data()), reinterpret_cast<T*>(out->untyped_data()),
                      reinterpret_cast<int32_t*>(argmax->untyped_data()));
  });
  return ok ? ffi::Error::Success() : Invalid("roi_pool: features must be float32, bfloat16 or float16");
}

ffi::Error RoiPoolBwdImpl(ffi::ThreadPool pool, ffi::AnyBuffer grad, ffi::AnyBuffer idx, ffi::AnyBuffer argmax,
                          ffi::Result<ffi::AnyBuffer> gfeat) {
  const auto fd = gfeat->dimensions();
  if (fd.size() < 4) return Invalid("roi_pool_bwd: bad features rank");
  RoiArgs a;
  a.batch = LeadingSize(fd, 4);
  a.n = fd[fd.size() - 4];
  a.h = fd[fd.size() - 3];
  a.w = fd[fd.size() - 2];
  a.c = fd[fd.size() - 1];
  const auto ad = argmax.dimensions();
  if (ad.size() < 4 || ad.back() != a.c || LeadingSize(ad, 4) != a.batch)
    return Invalid("roi_pool_bwd: argmax " + DimsStr(ad) + " does not match features " + DimsStr(fd));
  a.k = ad[ad.size() - 4];
  a.ph = static_cast<int>(ad[ad.size() - 3]);
  a.pw = static_cast<int>(ad[ad.size() - 2]);
  if (static_cast<int64_t>(idx.element_count()) != a.batch * a.k || grad.element_count() != argmax.element_count() ||
      grad.element_type() != gfeat->element_type())
    return Invalid("roi_pool_bwd: inconsistent buffers");
  Parallel par(pool);
  const bool ok = DispatchFloat(grad.element_type(), [&](auto tag) {
    using T = decltype(tag);
    RoiPoolBackward<T>(par, a, reinterpret_cast<const T*>(grad.untyped_data()),
                       reinterpret_cast<const int32_t*>(idx.untyped_data()),
                       reinterpret_cast<const int32_t*>(argmax.untyped_data()),
                       reinterpret_cast<T*>(gfeat->untyped_data()));
  });
  return ok ? ffi::Error::Success() : Invalid("roi_pool_bwd: unsupported dtype");
}

}  // namespace
}  // namespace research_ops

namespace ro = research_ops;

// Forward and backward RoIAlign take the same three buffers and attributes and return one buffer.
#define RESEARCH_ROI_ALIGN_BINDING                                                              \
  ro::ffi::Ffi::Bind()                                                                          \
      .Ctx<ro::ffi::ThreadPool>()                                                               \
      .Arg<ro::ffi::AnyBuffer>()                                                                \
      .Arg<ro::ffi::AnyBuffer>()                                                                \
      .Arg<ro::ffi::AnyBuffer>()                                                                \
      .Ret<ro::ffi::AnyBuffer>()                                                                \
      .Attr<int32_t>("pooled_h")                                                                \
      .Attr<int32_t>("pooled_w")                                                                \
      .Attr<float>("spatial_scale")                                                             \
      .Attr<int32_t>("sampling_ratio")                                                          \
      .Attr<bool>("aligned")                                                                    \
      .Attr<int32_t>("mode")

XLA_FFI_DEFINE_HANDLER_SYMBOL(ResearchRoiAlignFwd, ro::RoiAlignFwdImpl,
                              RESEARCH_ROI_ALIGN_BINDING);

XLA_FFI_DEFINE_HANDLER_SYMBOL(ResearchRoiAlignBwd, ro::RoiAlignBwdImpl,
                              RESEARCH_ROI_ALIGN_BINDING);

XLA_FFI_DEFINE_HANDLER_SYMBOL(ResearchRoiPoolFwd, ro::RoiPoolFwdImpl,
                              ro::ffi::Ffi::Bind()
                                  .Ctx<ro::ffi::ThreadPool>()
                                  .Arg<ro::ffi::AnyBuffer>()
                                  .Arg<ro::ffi::AnyBuffer>()
                                  .Arg<ro::ffi::AnyBuffer>()
                                  .Ret<ro::ffi::AnyBuffer>()
                                  .Ret<ro::ffi::AnyBuffer>()
                                  .Attr<int32_t>("pooled_h")
                                  .Attr<int32_t>("pooled_w")
                                  .Attr<float>("spatial_scale"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(ResearchRoiPoolBwd, ro::RoiPoolBwdImpl,
                              ro::ffi::Ffi::Bind()
                                  .Ctx<ro::ffi::ThreadPool>()
                                  .Arg<ro::ffi::AnyBuffer>()
                                  .Arg<ro::ffi::AnyBuffer>()
                                  .Arg<ro::ffi::AnyBuffer>()
                                  .Ret<ro::ffi::AnyBuffer>());
