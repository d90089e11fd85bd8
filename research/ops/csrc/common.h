// Shared helpers for the research.ops CPU kernels: element types with float32 accumulation, a parallel
// loop on XLA's intra-op thread pool, and shape helpers for buffers with leading vmap dimensions.
#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace research_ops {

namespace ffi = xla::ffi;

// ---------------------------------------------------------------------------------------------------------
// element types: float32 / bfloat16 / float16 storage, float32 arithmetic
// ---------------------------------------------------------------------------------------------------------
struct bf16 {
  uint16_t bits;
};
struct f16 {
  uint16_t bits;
};

inline float ToFloat(float v) { return v; }
inline float ToFloat(bf16 v) {
  uint32_t u = static_cast<uint32_t>(v.bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}
inline float ToFloat(f16 v) {
  _Float16 h;
  std::memcpy(&h, &v.bits, sizeof(h));
  return static_cast<float>(h);
}

template <typename T>
inline T FromFloat(float v);
template <>
inline float FromFloat<float>(float v) {
  return v;
}
template <>
inline bf16 FromFloat<bf16>(float v) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof(u));
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{static_cast<uint16_t>((u >> 16) | 0x40)};  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
  return bf16{static_cast<uint16_t>(u >> 16)};
}
template <>
inline f16 FromFloat<f16>(float v) {
  _Float16 h = static_cast<_Float16>(v);
  f16 r;
  std::memcpy(&r.bits, &h, sizeof(h));
  return r;
}

// acc[c] += w * src[c * stride], float32 accumulation (stride 1 vectorises)
template <typename T>
inline void Axpy(float w, const T* __restrict src, float* __restrict acc, int64_t n) {
  for (int64_t c = 0; c < n; ++c) acc[c] += w * ToFloat(src[c]);
}
template <typename T>
inline void AxpyStrided(float w, const T* __restrict src, int64_t stride, float* __restrict acc, int64_t n) {
  for (int64_t c = 0; c < n; ++c) acc[c] += w * ToFloat(src[c * stride]);
}

// Calls fn<T>() for the element type of a floating buffer; false for unsupported types.
template <typename F>
bool DispatchFloat(ffi::DataType dt, F&& fn) {
  switch (dt) {
    case ffi::DataType::F32:
      fn(float{});
      return true;
    case ffi::DataType::BF16:
      fn(bf16{});
      return true;
    case ffi::DataType::F16:
      fn(f16{});
      return true;
    default:
      return false;
  }
}

inline ffi::Error Invalid(const std::string& msg) { return ffi::Error::InvalidArgument(msg); }

// Product of the leading (vmap) dimensions of a buffer with `inner_rank` trailing dimensions.
inline int64_t LeadingSize(ffi::AnyBuffer::Dimensions dims, int inner_rank) {
  int64_t n = 1;
  for (size_t i = 0; i + inner_rank < dims.size(); ++i) n *= dims[i];
  return n;
}
inline std::string DimsStr(ffi::AnyBuffer::Dimensions dims) {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "]";
}

// ---------------------------------------------------------------------------------------------------------
// ParallelFor: fn(begin, end) over [0, n) in chunks of `grain`, on XLA's intra-op thread pool.
// The calling thread works too and only waits for chunks already taken, so it cannot deadlock when the
// pool is busy (in the worst case the caller runs every chunk itself). Late helpers find no work left.
// ---------------------------------------------------------------------------------------------------------
class Parallel {
 public:
  explicit Parallel(ffi::ThreadPool pool) : pool_(pool), threads_(std::max<int64_t>(1, pool.num_threads())) {}
  int64_t threads() const { return threads_; }

  template <typename F>
  void For(int64_t n, int64_t grain, F&& fn) {
    if (n <= 0) return;
    grain = std::max<int64_t>(1, grain);
    const int64_t chunks = (n + grain - 1) / grain;
    if (threads_ <= 1 || chunks <= 1) {
      fn(int64_t{0}, n);
      return;
    }
    struct State {
      std::atomic<int64_t> next{0};
      std::atomic<int64_t> done{0};
      std::mutex mu;
      std::condition_variable cv;
      int64_t n = 0, grain = 1;
      std::function<void(int64_t, int64_t)> fn;
    };
    auto st = std::make_shared<State>();
    st->n = n;
    st->grain = grain;
    st->fn = std::forward<F>(fn);
    auto work = [](State& s) {
      for (;;) {
        const int64_t b = s.next.fetch_add(s.grain);
        if (b >= s.n) return;
        const int64_t e = std::min(b + s.grain, s.n);
        s.fn(b, e);
        if (s.done.fetch_add(e - b) + (e - b) == s.n) {
          std::lock_guard<std::mutex> lock(s.mu);
          s.cv.notify_all();
        }
      }
    };
    const int64_t helpers = std::min(threads_, chunks) - 1;
    for (int64_t t = 0; t < helpers; ++t) pool_.Schedule([st, work] { work(*st); });
    work(*st);
    std::unique_lock<std::mutex> lock(st->mu);
    st->cv.wait(lock, [&] { return st->done.load() == st->n; });
  }

  // Splits [0, n) into about 4 chunks per thread (dynamic load balancing).
  template <typename F>
  void ForBalanced(int64_t n, F&& fn) {
    For(n, std::max<int64_t>(1, n / (4 * threads_)), std::forward<F>(fn));
  }

 private:
  ffi::ThreadPool pool_;
  int64_t threads_;
};

}  // namespace research_ops
