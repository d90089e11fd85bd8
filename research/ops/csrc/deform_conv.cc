// Deformable convolution v1/v2 (Dai et al. 2017; Zhu et al. 2019), channels-last CPU kernels.
//
// deform_im2col: columns[b, ho, wo, (i*kw + j)*Cin + c] = mask * bilinear(x[b, :, :, c], y, x) at
//   y = ho*sh - ph + i*dh + dy, x = wo*sw - pw + j*dw + dx (zero padding; a sample with y <= -1, y >= H, ...
//   is 0 and each corner outside the image contributes 0). XLA does the GEMM with the weight.
// deform_col2im: the backward of deform_im2col: x, offset and mask gradients from the column gradient.
// Both take `row_offset` (one int32 per image): the call covers output rows [row_offset, row_offset + Ho) of
// a larger output, so the caller can work in row chunks whose column buffers stay small.
//   Offset/mask gradients are parallel over output rows; the x gradient is parallel over stripes of input
//   rows (each stripe owns its rows: deterministic, no atomics). A sample exactly at -1 or at H is outside
//   in the forward pass and gets a zero offset gradient (torchvision differs there: its issue 6885).
#include <cmath>

#include "common.h"

namespace research_ops {
namespace {

struct ConvArgs {
  int64_t batch, h, w, cin, ho, wo;
  int kh, kw, sh, sw, ph, pw, dh, dw, og;
  int64_t cg() const { return cin / og; }
  int64_t kk() const { return static_cast<int64_t>(kh) * kw; }
};

struct Sample {  // bilinear sample with zero padding: corner q at (y0 + (q>>1), x0 + (q&1)), weight w[q]
  bool inside;
  int y0, x0;
  float ly, lx;
  float w[4];
  bool ok[4];
};

inline Sample MakeSample(float y, float x, int64_t H, int64_t W) {
  Sample s;
  s.inside = y > -1.f && y < static_cast<float>(H) && x > -1.f && x < static_cast<float>(W);
  if (!s.inside) return s;
  const float fy = std::floor(y), fx = std::floor(x);
  s.y0 = static_cast<int>(fy);
  s.x0 = static_cast<int>(fx);
  s.ly = y - fy;
  s.lx = x - fx;
  const float hy = 1.f - s.ly, hx = 1.f - s.lx;
  s.w[0] = hy * hx;
  s.w[1] = hy * s.lx;
  s.w[2] = s.ly * hx;
  s.w[3] = s.ly * s.lx;
  const bool y0ok = s.y0 >= 0, y1ok = s.y0 + 1 <= H - 1, x0ok = s.x0 >= 0, x1ok = s.x0 + 1 <= W - 1;
  s.ok[0] = y0ok && x0ok;
  s.ok[1] = y0ok && x1ok;
  s.ok[2] = y1ok && x0ok;
  s.ok[3] = y1ok && x1ok;
  return s;
}

ffi::Error ReadConv(const char* op, ffi::AnyBuffer::Dimensions xd, ffi::AnyBuffer offset, ffi::AnyBuffer mask,
                    int32_t kh, int32_t kw, int32_t sh, int32_t sw, int32_t ph, int32_t pw, int32_t dh, int32_t dw,
                    int32_t og, ConvArgs& a) {
  const auto od = offset.dimensions();
  const auto md = mask.dimensions();
  if (xd.size() < 3 || od.size() != xd.size() || md.size() != xd.size())
    return Invalid(std::string(op) + ": bad ranks x " + DimsStr(xd) + ", offset " + DimsStr(od) + ", mask " +
                   DimsStr(md));
  if (offset.element_type() != ffi::DataType::F32 || mask.element_type() != ffi::DataType::F32)
    return Invalid(std::string(op) + ": offset and mask must be float32");
  a.batch = LeadingSize(xd, 3);
  a.h = xd[xd.size() - 3];
  a.w = xd[xd.size() - 2];
  a.cin = xd[xd.size() - 1];
  a.ho = od[od.size() - 3];
  a.wo = od[od.size() - 2];
  a.kh = kh, a.kw = kw, a.sh = sh, a.sw = sw, a.ph = ph, a.pw = pw, a.dh = dh, a.dw = dw, a.og = og;
  if (og <= 0 || a.cin % og != 0 || LeadingSize(od, 3) != a.batch || LeadingSize(md, 3) != a.batch ||
      od.back() != 2 * og * a.kk() || md.back() != og * a.kk() || md[md.size() - 3] != a.ho ||
      md[md.size() - 2] != a.wo)
    return Invalid(std::string(op) + ": inconsistent shapes x " + DimsStr(xd) + ", offset " + DimsStr(od) +
                   ", mask " + DimsStr(md));
  return ffi::Error::Success();
}

template <typename T>
void Im2Col(Parallel& par, const ConvArgs& a, const T* x, const float* offset, const float* mask,
            const int32_t* row_offset, T* cols) {
  const int64_t cg = a.cg(), kk = a.kk();
  par.For(a.batch * a.ho, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> acc(cg);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / a.ho, oy = row % a.ho + row_offset[b];
      const T* xb = x + b * a.h * a.w * a.cin;
      for (int64_t ox = 0; ox < a.wo; ++ox) {
        const int64_t pix = row * a.wo + ox;
        const float* off = offset + pix * 2 * a.og * kk;
        const float* msk = mask + pix * a.og * kk;
        T* dst_pix = cols + pix * kk * a.cin;
        for (int g = 0; g < a.og; ++g) {
          for (int i = 0; i < a.kh; ++i) {
            for (int j = 0; j < a.kw; ++j) {
              const int64_t t = (static_cast<int64_t>(g) * a.kh + i) * a.kw + j;
              const float y = static_cast<float>(oy * a.sh - a.ph + i * a.dh) + off[2 * t];
              const float xx = static_cast<float>(ox * a.sw - a.pw + j * a.dw) + off[2 * t + 1];
              const Sample s = MakeSample(y, xx, a.h, a.w);
              T* dst = dst_pix + (i * a.kw + j) * a.cin + g * cg;
              std::fill(acc.begin(), acc.end(), 0.f);
              if (s.inside) {
                const float m = msk[t];
                for (int q = 0; q < 4; ++q) {
                  if (!s.ok[q]) continue;
                  const T* src = xb + ((s.y0 + (q >> 1)) * a.w + s.x0 + (q & 1)) * a.cin + g * cg;
                  Axpy(m * s.w[q], src, acc.data(), cg);
                }
              }
              for (int64_t c = 0; c < cg; ++c) dst[c] = FromFloat<T>(acc[c]);
            }
          }
        }
      }
    }
  });
}

template <typename T>
void Col2Im(Parallel& par, const ConvArgs& a, const T* gcols, const T* x, const float* offset, const float* mask,
            const int32_t* row_offset, float* gx, float* goffset, float* gmask) {
  const int64_t cg = a.cg(), kk = a.kk();
  // offset and mask gradients: parallel over output rows
  par.For(a.batch * a.ho, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / a.ho, oy = row % a.ho + row_offset[b];
      const T* xb = x + b * a.h * a.w * a.cin;
      for (int64_t ox = 0; ox < a.wo; ++ox) {
        const int64_t pix = row * a.wo + ox;
        const float* off = offset + pix * 2 * a.og * kk;
        const float* msk = mask + pix * a.og * kk;
        float* goff = goffset + pix * 2 * a.og * kk;
        float* gm = gmask + pix * a.og * kk;
        const T* gpix = gcols + pix * kk * a.cin;
        for (int g = 0; g < a.og; ++g) {
          for (int i = 0; i < a.kh; ++i) {
            for (int j = 0; j < a.kw; ++j) {
              const int64_t t = (static_cast<int64_t>(g) * a.kh + i) * a.kw + j;
              const float y = static_cast<float>(oy * a.sh - a.ph + i * a.dh) + off[2 * t];
              const float xx = static_cast<float>(ox * a.sw - a.pw + j * a.dw) + off[2 * t + 1];
              const Sample s = MakeSample(y, xx, a.h, a.w);
              if (!s.inside) {
                goff[2 * t] = goff[2 * t + 1] = gm[t] = 0.f;
                continue;
              }
              const T* gc = gpix + (i * a.kw + j) * a.cin + g * cg;
              float d[4] = {0.f, 0.f, 0.f, 0.f};
              for (int q = 0; q < 4; ++q) {
                if (!s.ok[q]) continue;
                const T* src = xb + ((s.y0 + (q >> 1)) * a.w + s.x0 + (q & 1)) * a.cin + g * cg;
                float dot = 0.f;
                for (int64_t c = 0; c < cg; ++c) dot += ToFloat(gc[c]) * ToFloat(src[c]);
                d[q] = dot;
              }
              const float m = msk[t];
              const float hy = 1.f - s.ly, hx = 1.f - s.lx;
              gm[t] = s.w[0] * d[0] + s.w[1] * d[1] + s.w[2] * d[2] + s.w[3] * d[3];
              goff[2 * t] = m * (hx * (d[2] - d[0]) + s.lx * (d[3] - d[1]));
              goff[2 * t + 1] = m * (hy * (d[1] - d[0]) + s.ly * (d[3] - d[2]));
            }
          }
        }
      }
    }
  });
  // x gradient (accumulated into gx): parallel over stripes of input rows; every stripe visits the samples
  // of its images
  const int64_t rows = a.batch * a.h, row_elems = a.w * a.cin;
  float* g32 = gx;
  const int64_t stripes = std::min<int64_t>(rows, 4 * par.threads());
  par.For(stripes, 1, [&](int64_t sb, int64_t se) {
    for (int64_t st = sb; st < se; ++st) {
      const int64_t r0 = rows * st / stripes, r1 = rows * (st + 1) / stripes;
      for (int64_t b = r0 / a.h; b <= (r1 - 1) / a.h; ++b) {
        const int64_t lo = std::max(r0 - b * a.h, int64_t{0}), hi = std::min(r1 - b * a.h, a.h);  // local rows
        float* gxb = g32 + b * a.h * row_elems;
        for (int64_t oy = 0; oy < a.ho; ++oy) {
          for (int64_t ox = 0; ox < a.wo; ++ox) {
            const int64_t pix = (b * a.ho + oy) * a.wo + ox;
            const float* off = offset + pix * 2 * a.og * kk;
            const float* msk = mask + pix * a.og * kk;
            const T* gpix = gcols + pix * kk * a.cin;
            for (int g = 0; g < a.og; ++g) {
              for (int i = 0; i < a.kh; ++i) {
                for (int j = 0; j < a.kw; ++j) {
                  const int64_t t = (static_cast<int64_t>(g) * a.kh + i) * a.kw + j;
                  const float y = static_cast<float>((oy + row_offset[b]) * a.sh - a.ph + i * a.dh) + off[2 * t];
                  if (!(y > -1.f && y < static_cast<float>(a.h))) continue;
                  const int64_t y0 = static_cast<int64_t>(std::floor(y));
                  if (y0 + 1 < lo || y0 >= hi) continue;
                  const float xx = static_cast<float>(ox * a.sw - a.pw + j * a.dw) + off[2 * t + 1];
                  const Sample s = MakeSample(y, xx, a.h, a.w);
                  if (!s.inside) continue;
                  const float m = msk[t];
                  const T* gc = gpix + (i * a.kw + j) * a.cin + g * cg;
                  for (int q = 0; q < 4; ++q) {
                    const int64_t yy = s.y0 + (q >> 1);
                    if (!s.ok[q] || yy < lo || yy >= hi) continue;
                    float* dst = gxb + (yy * a.w + s.x0 + (q & 1)) * a.cin + g * cg;
                    Axpy(m * s.w[q], gc, dst, cg);
                  }
                }
              }
            }
          }
        }
      }
    }
  });
}

ffi::Error CheckRowOffset(const char* op, ffi::AnyBuffer row_offset, const ConvArgs& a) {
  if (row_offset.element_type() != ffi::DataType::S32 ||
      static_cast<int64_t>(row_offset.element_count()) != a.batch)
    return Invalid(std::string(op) + ": row_offset must be int32 with one entry per image, got " +
                   DimsStr(row_offset.dimensions()));
  return ffi::Error::Success();
}

ffi::Error Im2ColImpl(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer offset, ffi::AnyBuffer mask,
                      ffi::AnyBuffer row_offset, ffi::Result<ffi::AnyBuffer> cols, int32_t kh, int32_t kw, int32_t sh, int32_t sw, int32_t ph,
                      int32_t pw, int32_t dh, int32_t dw, int32_t og) {
  ConvArgs a;
  if (auto e = ReadConv("deform_im2col", x.dimensions(), offset, mask, kh, kw, sh, sw, ph, pw, dh, dw, og, a);
      !e.success())
    return e;
  if (auto e = CheckRowOffset("deform_im2col", row_offset, a); !e.success()) return e;
  if (cols->element_type() != x.element_type() ||
      static_cast<int64_t>(cols->element_count()) != a.batch * a.ho * a.wo * a.kk() * a.cin)
    return Invalid("deform_im2col: bad output buffer " + DimsStr(cols->dimensions()));
  Parallel par(pool);
  const bool ok = DispatchFloat(x.element_type(), [&](auto tag) {
    using T = decltype(tag);
    Im2Col<T>(par, a, reinterpret_cast<const T*>(x.untyped_data()), reinterpret_cast<const float*>(offset.untyped_data()),
              reinterpret_cast<const float*>(mask.untyped_data()),
              reinterpret_cast<const int32_t*>(row_offset.untyped_data()), reinterpret_cast<T*>(cols->untyped_data()));
  });
  return ok ? ffi::Error::Success() : Invalid("deform_im2col: x must be float32, bfloat16 or float16");
}

// gx_in is aliased to gx (input_output_aliases): the x gradient is accumulated in place, in float32.
ffi::Error Col2ImImpl(ffi::ThreadPool pool, ffi::AnyBuffer gx_in, ffi::AnyBuffer gcols, ffi::AnyBuffer x,
                      ffi::AnyBuffer offset, ffi::AnyBuffer mask, ffi::AnyBuffer row_offset,
                      ffi::Result<ffi::AnyBuffer> gx, ffi::Result<ffi::AnyBuffer> goffset,
                      ffi::Result<ffi::AnyBuffer> gmask, int32_t kh, int32_t kw, int32_t sh, int32_t sw, int32_t ph,
                      int32_t pw, int32_t dh, int32_t dw, int32_t og) {
  ConvArgs a;
  if (auto e = ReadConv("deform_col2im", x.dimensions(), offset, mask, kh, kw, sh, sw, ph, pw, dh, dw, og, a);
      !e.success())
    return e;
  if (auto e = CheckRowOffset("deform_col2im", row_offset, a); !e.success()) return e;
  if (gx->untyped_data() != gx_in.untyped_data())
    return ffi::Error::Internal("deform_col2im: the x gradient accumulator must be aliased to the output");
  if (gcols.element_type() != x.element_type() || gx->element_type() != ffi::DataType::F32 ||
      static_cast<int64_t>(gcols.element_count()) != a.batch * a.ho * a.wo * a.kk() * a.cin ||
      gx->element_count() != x.element_count() || goffset->element_count() != offset.element_count() ||
      gmask->element_count() != mask.element_count() || goffset->element_type() != ffi::DataType::F32 ||
      gmask->element_type() != ffi::DataType::F32)
    return Invalid("deform_col2im: inconsistent buffers");
  Parallel par(pool);
  const bool ok = DispatchFloat(x.element_type(), [&](auto tag) {
    using T = decltype(tag);
    Col2Im<T>(par, a, reinterpret_cast<const T*>(gcols.untyped_data()), reinterpret_cast<const T*>(x.untyped_data()),
              reinterpret_cast<const float*>(offset.untyped_data()), reinterpret_cast<const float*>(mask.untyped_data()),
              reinterpret_cast<const int32_t*>(row_offset.untyped_data()),
              reinterpret_cast<float*>(gx->untyped_data()), reinterpret_cast<float*>(goffset->untyped_data()),
              reinterpret_cast<float*>(gmask->untyped_data()));
  });
  return ok ? ffi::Error::Success() : Invalid("deform_col2im: x must be float32, bfloat16 or float16");
}

}  // namespace
}  // namespace research_ops

namespace ro = research_ops;

#define RESEARCH_CONV_ATTRS             \
  .Attr<int32_t>("kh")                  \
      .Attr<int32_t>("kw")              \
      .Attr<int32_t>("stride_h")        \
      .Attr<int32_t>("stride_w")        \
      .Attr<int32_t>("pad_h")           \
      .Attr<int32_t>("pad_w")           \
      .Attr<int32_t>("dilation_h")      \
      .Attr<int32_t>("dilation_w")      \
      .Attr<int32_t>("offset_groups")

XLA_FFI_DEFINE_HANDLER_SYMBOL(ResearchDeformIm2Col, ro::Im2ColImpl,
                              ro::ffi::Ffi::Bind()
                                  .Ctx<ro::ffi::ThreadPool>()
                                  .Arg<ro::ffi::AnyBuffer>()
                                  .Arg<ro::ffi::AnyBuffer>()
                                  .Arg<ro::ffi::AnyBuffer>()
                                  .Arg<ro::ffi::AnyBuffer>()
                                  .Ret<ro::ffi::AnyBuffer>() RESEARCH_CONV_ATTRS);

XLA_FFI_DEFINE_HANDLER_SYMBOL(ResearchDeformCol2Im, ro::Col2ImImpl,
                              ro::ffi::Ffi::Bind()
                                  .Ctx<ro::ffi::ThreadPool>()
                                  .Arg<ro::ffi::AnyBuffer>()
                                  .Arg<ro::ffi::AnyBuffer>()
                                  .Arg<ro::ffi::AnyBuffer>()
                                  .Arg<ro::ffi::AnyBuffer>()
                                  .Arg<ro::ffi::AnyBuffer>()
                                  .Arg<ro::ffi::AnyBuffer>()
                                  .Ret<ro::ffi::AnyBuffer>()
                                  .Ret<ro::ffi::AnyBuffer>()
                                  .Ret<ro::ffi::AnyBuffer>() RESEARCH_CONV_ATTRS);
