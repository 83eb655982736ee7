// CPU kernels for the sparse parts of a TopK dictionary's training step, called from JAX through XLA's FFI.
//
// XLA's CPU backend runs a row-wise top-k, a scatter-add of rows and a gather of rows on one core, a few times
// slower than the memory allows. These do the same work over every core; the tests compare each with the
// operation it stands in for (jax.lax.top_k, and the pure-jnp paths of kernels/sparse_decode.py):
//   interp_top_k          values and indices of the k largest entries of each row, largest first, ties to the
//                         lower index (as jax.lax.top_k); NaN entries come only after every other entry
//   interp_scatter_rows   out[M, D] = 0; out[idx[n, j]] += w[n, j] * rows[n]; out-of-range ids are dropped
//   interp_gather_dot     out[N, k] = <rows[n], table[idx[n, j]]>; out-of-range ids give 0
// Every buffer is float32 (indices int32), row-major. Each output is summed in a fixed order by one thread, so a
// result does not change from call to call.

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

int thread_count(int64_t work_items) {
  unsigned hw = std::thread::hardware_concurrency();
  int64_t n = hw == 0 ? 1 : static_cast<int64_t>(hw);
  if (const char* env = std::getenv("INTERP_CPU_THREADS")) n = std::max<long>(1, std::atol(env));
  return static_cast<int>(std::max<int64_t>(1, std::min(n, work_items)));
}

// Runs body(t, lo, hi) for T contiguous chunks of [0, n), the first on the calling thread.
template <typename Body>
void parallel_chunks(int64_t n, int64_t min_per_thread, Body body) {
  int T = thread_count(std::max<int64_t>(1, n / std::max<int64_t>(1, min_per_thread)));
  if (T <= 1) {
    body(0, 0, n);
    return;
  }
  std::vector<std::thread> pool;
  pool.reserve(T - 1);
  for (int t = 1; t < T; ++t) {
    pool.emplace_back([=, &body] { body(t, n * t / T, n * (t + 1) / T); });
  }
  body(0, 0, n / T);
  for (auto& th : pool) th.join();
}

typedef float f32x16 __attribute__((vector_size(64)));
typedef int32_t i32x16 __attribute__((vector_size(64)));

inline f32x16 load16(const float* p) {
  f32x16 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// How many of mx[0..n) are >= t (n a multiple of 16).
inline int64_t count_at_least(const float* mx, int64_t n, float t) {
  f32x16 tv = {};
  tv += t;
  i32x16 acc = {};
  for (int64_t g = 0; g < n; g += 16) acc += (load16(mx + g) >= tv);  // true lanes are -1
  int64_t s = 0;
  for (int l = 0; l < 16; ++l) s -= acc[l];
  return s;
}

// A value t such that at least k of the n group maxima are >= t, by bisection, stopping once few more than k
// are; -inf when fewer than k maxima are finite. Any such t works below: the k largest entries of the row are
// all >= t, and each lies in a group whose maximum is >= t.
inline float threshold(const float* mx, int64_t n_real, int64_t n, int64_t k) {
  const float inf = __builtin_inff();
  float lo = inf, hi = -inf;
  for (int64_t g = 0; g < n_real; ++g) {
    float v = mx[g];
    if (v > -inf && v < lo) lo = v;
    if (v > hi) hi = v;
  }
  if (lo == inf || count_at_least(mx, n, lo) < k) return -inf;
  if (count_at_least(mx, n, hi) >= k) return hi;
  for (int it = 0; it < 32; ++it) {
    float mid = lo + (hi - lo) * 0.5f;
    if (!(mid > lo && mid < hi)) break;
    int64_t c = count_at_least(mx, n, mid);
    if (c >= k) {
      lo = mid;
      if (c <= k + k / 8) break;
    } else {
      hi = mid;
    }
  }
  return lo;
}

struct Candidate {
  float v;
  int32_t i;
};

inline bool before(const Candidate& a, const Candidate& b) {  // larger first, then lower index
  return a.v > b.v || (a.v == b.v && a.i < b.i);
}

// The row is cut into chunks of kQ vectors of 16; group (chunk c, lane l) holds the kQ entries of lane l, so one
// pass of vector maxima gives 16 group maxima at a time. Entries past the last whole chunk are groups of one.
constexpr int64_t kQ = 32;
constexpr int64_t kChunk = 16 * kQ;

struct TopKScratch {
  std::vector<float> mx;
  std::vector<Candidate> cand;
};

void top_k_row(const float* x, int64_t width, int64_t k, float* vals, int32_t* idx, TopKScratch& s) {
  const float inf = __builtin_inff();
  int64_t nc = width / kChunk, tail = width - nc * kChunk;
  int64_t n_real = 16 * nc + tail, n = (n_real + 15) / 16 * 16;
  s.mx.resize(n);
  float* mx = s.mx.data();
  f32x16 ninf = {};
  ninf -= inf;
  for (int64_t c = 0; c < nc; ++c) {
    const float* p = x + c * kChunk;
    f32x16 m = ninf;
    for (int64_t q = 0; q < kQ; ++q) {
      f32x16 a = load16(p + 16 * q);
      m = a > m ? a : m;  // NaN never wins
    }
    std::memcpy(mx + 16 * c, &m, sizeof m);
  }
  for (int64_t e = 0; e < tail; ++e) {
    float v = x[nc * kChunk + e];
    mx[16 * nc + e] = v == v ? v : -inf;
  }
  for (int64_t g = n_real; g < n; ++g) mx[g] = -inf;
  float t = threshold(mx, n_real, n, k);
  s.cand.clear();
  for (int64_t g = 0; g < n_real; ++g) {
    if (!(mx[g] >= t)) continue;
    if (g < 16 * nc) {
      int64_t base = (g / 16) * kChunk + g % 16;
      for (int64_t q = 0; q < kQ; ++q) {
        float v = x[base + 16 * q];
        if (v >= t) s.cand.push_back({v, static_cast<int32_t>(base + 16 * q)});
      }
    } else {
      int64_t e = nc * kChunk + (g - 16 * nc);
      if (x[e] >= t) s.cand.push_back({x[e], static_cast<int32_t>(e)});
    }
  }
  if (static_cast<int64_t>(s.cand.size()) < k) {
    // fewer than k entries that are not NaN: the rest are the lowest-indexed NaN entries, after them
    for (int64_t e = 0; e < width; ++e)
      if (x[e] != x[e]) s.cand.push_back({x[e], static_cast<int32_t>(e)});
    std::stable_sort(s.cand.begin(), s.cand.end(), [](const Candidate& a, const Candidate& b) {
      bool an = a.v != a.v, bn = b.v != b.v;
      if (an || bn) return !an && bn;
      return before(a, b);
    });
  } else {
    std::partial_sort(s.cand.begin(), s.cand.begin() + k, s.cand.end(), before);
  }
  for (int64_t j = 0; j < k; ++j) {
    vals[j] = s.cand[j].v;
    idx[j] = s.cand[j].i;
  }
}

ffi::Error TopK(ffi::Buffer<ffi::F32> x, ffi::ResultBuffer<ffi::F32> values, ffi::ResultBuffer<ffi::S32> indices) {
  auto dims = x.dimensions();
  if (dims.size() != 2) return ffi::Error::InvalidArgument("interp_top_k: x must be [rows, width]");
  int64_t rows = dims[0], width = dims[1];
  auto out_dims = values->dimensions();
  if (out_dims.size() != 2 || out_dims[0] != rows) return ffi::Error::InvalidArgument("interp_top_k: bad output");
  int64_t k = out_dims[1];
  if (k < 1 || k > width) return ffi::Error::InvalidArgument("interp_top_k: k must be in [1, width]");
  const float* px = x.typed_data();
  float* pv = values->typed_data();
  int32_t* pi = indices->typed_data();
  parallel_chunks(rows, 64, [&](int, int64_t lo, int64_t hi) {
    TopKScratch scratch;
    for (int64_t r = lo; r < hi; ++r) top_k_row(px + r * width, width, k, pv + r * k, pi + r * k, scratch);
  });
  return ffi::Error::Success();
}

// rows read or written at random are asked for this many updates ahead
constexpr int64_t kAhead = 3;

inline void prefetch_row(const float* p, int64_t d) {
  for (int64_t c = 0; c < d; c += 16) __builtin_prefetch(p + c);
}

// sixteen running sums in a fixed order, so the loop vectorizes without reassociation flags
inline float dot(const float* __restrict a, const float* __restrict b, int64_t d) {
  float acc[16] = {0};
  int64_t c = 0;
  for (; c + 16 <= d; c += 16)
    for (int q = 0; q < 16; ++q) acc[q] += a[c + q] * b[c + q];
  for (; c < d; ++c) acc[c % 16] += a[c] * b[c];
  float s = 0.f;
  for (int q = 0; q < 16; ++q) s += acc[q];
  return s;
}

inline void axpy(float* __restrict out, const float* __restrict row, float w, int64_t d) {
  for (int64_t c = 0; c < d; ++c) out[c] += w * row[c];
}

ffi::Error ScatterRows(ffi::Buffer<ffi::F32> weights, ffi::Buffer<ffi::F32> rows, ffi::Buffer<ffi::S32> indices,
                       ffi::ResultBuffer<ffi::F32> out) {
  auto wd = weights.dimensions();
  auto rd = rows.dimensions();
  auto od = out->dimensions();
  if (wd.size() != 2 || rd.size() != 2 || od.size() != 2 || rd[0] != wd[0] || od[1] != rd[1] ||
      indices.dimensions().size() != 2 || indices.dimensions()[0] != wd[0] || indices.dimensions()[1] != wd[1])
    return ffi::Error::InvalidArgument("interp_scatter_rows: expected weights [N,k], rows [N,D], indices [N,k], "
                                       "out [M,D]");
  int64_t N = wd[0], k = wd[1], D = rd[1], M = od[0];
  const float* pw = weights.typed_data();
  const float* pr = rows.typed_data();
  const int32_t* pi = indices.typed_data();
  float* po = out->typed_data();
  // Each thread owns a range of output rows, chosen so the ranges receive about equal numbers of updates
  // (a trained dictionary's latents fire very unevenly), and walks every update in (n, j) order.
  std::vector<int64_t> count(M + 1, 0);
  for (int64_t e = 0; e < N * k; ++e) {
    int32_t m = pi[e];
    if (m >= 0 && m < M) ++count[m];
  }
  int64_t total = 0;
  for (int64_t m = 0; m < M; ++m) total += count[m];
  int T = thread_count(std::max<int64_t>(1, (total * D) / (1 << 18)));
  std::vector<int64_t> bound(T + 1, M);
  bound[0] = 0;
  {
    int64_t acc = 0, t = 1;
    for (int64_t m = 0; m < M && t < T; ++m) {
      acc += count[m];
      while (t < T && acc * T >= total * t) bound[t++] = m + 1;
    }
  }
  parallel_chunks(T, 1, [&](int, int64_t t_lo, int64_t t_hi) {
    std::vector<int64_t> mine;
    for (int64_t t = t_lo; t < t_hi; ++t) {
      int64_t lo = bound[t], hi = bound[t + 1];
      std::memset(po + lo * D, 0, sizeof(float) * (hi - lo) * D);
      mine.clear();
      for (int64_t e = 0; e < N * k; ++e)
        if (pi[e] >= lo && pi[e] < hi) mine.push_back(e);
      int64_t count_mine = static_cast<int64_t>(mine.size());
      for (int64_t q = 0; q < count_mine; ++q) {
        if (q + kAhead < count_mine) prefetch_row(po + pi[mine[q + kAhead]] * D, D);
        int64_t e = mine[q];
        axpy(po + pi[e] * D, pr + (e / k) * D, pw[e], D);
      }
    }
  });
  return ffi::Error::Success();
}

ffi::Error GatherDot(ffi::Buffer<ffi::F32> rows, ffi::Buffer<ffi::S32> indices, ffi::Buffer<ffi::F32> table,
                     ffi::ResultBuffer<ffi::F32> out) {
  auto rd = rows.dimensions();
  auto id = indices.dimensions();
  auto td = table.dimensions();
  auto od = out->dimensions();
  if (rd.size() != 2 || id.size() != 2 || td.size() != 2 || od.size() != 2 || id[0] != rd[0] || td[1] != rd[1] ||
      od[0] != id[0] || od[1] != id[1])
    return ffi::Error::InvalidArgument("interp_gather_dot: expected rows [N,D], indices [N,k], table [M,D], "
                                       "out [N,k]");
  int64_t N = rd[0], D = rd[1], k = id[1], M = td[0];
  const float* pr = rows.typed_data();
  const int32_t* pi = indices.typed_data();
  const float* pt = table.typed_data();
  float* po = out->typed_data();
  parallel_chunks(N, 16, [&](int, int64_t lo, int64_t hi) {
    for (int64_t e = lo * k; e < hi * k; ++e) {
      if (e + kAhead < hi * k) {
        int64_t ahead = pi[e + kAhead];
        if (ahead >= 0 && ahead < M) prefetch_row(pt + ahead * D, D);
      }
      int64_t m = pi[e];
      po[e] = m >= 0 && m < M ? dot(pr + (e / k) * D, pt + m * D, D) : 0.f;
    }
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(interp_top_k, TopK,
                              ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>().Ret<
                                  ffi::Buffer<ffi::S32>>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(interp_scatter_rows, ScatterRows,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(interp_gather_dot, GatherDot,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
