// jaxsr_conv_kernel_grad: the kernel gradient of a stride-1 NHWC convolution on XLA:CPU, as an
// XLA FFI custom call (see jaxsr/cpu/native.py, which builds and registers it).
//
//   dw[a, b, c, o] = sum over n, i, j of x[n, i + a - pt, j + b - pl, c] * g[n, i, j, o]
//
// with x read as zero outside the image. XLA:CPU computes this product (a matrix product whose
// contraction runs over every output pixel and whose result is only kh*kw*C x O) at about half
// its speed for other products of the same size, and only after copying shifted views of x and g
// into stacks. Here every (image row, tap) pair is a small product of two blocks that already
// lie contiguously in memory: a run of pixels of one input row (pixels x C) and the matching run
// of one cotangent row (pixels x O). Nothing is copied; the sums run in AVX-512 registers.
//
// Threads: output channels are cut into 64-wide blocks and output rows into chunks; XLA's
// intra-op pool threads claim (block, chunk) tasks, the calling thread too. Chunks after the first
// sum into private buffers that are added at the end, so the result never depends on timing.
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kLanes = 16;  // floats in a zmm register
constexpr int64_t kBlockO = 64;  // output channels per task (four registers)
constexpr int64_t kGroupBytes = 512 * 1024;  // input + cotangent pixels of one group of rows

// One contiguous run of pixels: `len` rows of A (input pixels x C) and of B (cotangent pixels x O).
struct Run {
  const float* a;
  const float* b;
  int64_t len;
};

// C[r, 16v + l] += sum over runs and k < len of A[k * lda + r] * B[k * ldb + 16v + l], for r < MR,
// v < NV (A offset by `a_off` channels). The sums stay in registers across all runs; the last
// register of each row is masked with `tail` (columns past O).
template <int MR, int NV>
inline void Micro(const Run* runs, int64_t nruns, int64_t a_off, int64_t lda, int64_t ldb, float* c,
                  int64_t ldc, __mmask16 tail) {
  __m512 acc[MR][NV];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
  for (int64_t q = 0; q < nruns; ++q) {
    const float* a = runs[q].a + a_off;
    const float* b = runs[q].b;
    const int64_t len = runs[q].len;
    for (int64_t k = 0; k < len; ++k) {
      const float* bk = b + k * ldb;
      __m512 bv[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v)
        bv[v] = v == NV - 1 ? _mm512_maskz_loadu_ps(tail, bk + kLanes * v) : _mm512_loadu_ps(bk + kLanes * v);
      const float* ak = a + k * lda;
#pragma GCC unroll 16
      for (int r = 0; r < MR; ++r) {
        const __m512 av = _mm512_set1_ps(ak[r]);
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(av, bv[v], acc[r][v]);
      }
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
    float* cr = c + r * ldc;
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      const __mmask16 m = v == NV - 1 ? tail : static_cast<__mmask16>(0xFFFF);
      _mm512_mask_storeu_ps(cr + kLanes * v, m,
                            _mm512_add_ps(_mm512_maskz_loadu_ps(m, cr + kLanes * v), acc[r][v]));
    }
  }
}

// All input channels against one block of output columns, over a list of pixel runs.
template <int NV>
void Rows(const Run* runs, int64_t nruns, int64_t c, int64_t o, float* dw, __mmask16 tail) {
  // MR rows of C per pass: as many as the 32 registers allow beside the NV row of B
  constexpr int MR = NV == 4 ? 6 : NV == 3 ? 8 : NV == 2 ? 12 : 16;
  int64_t r = 0;
  for (; r + MR <= c; r += MR) Micro<MR, NV>(runs, nruns, r, c, o, dw + r * o, o, tail);
  switch (c - r) {
#define JAXSR_CASE(n) \
  case n:             \
    if constexpr (n < MR) Micro<n, NV>(runs, nruns, r, c, o, dw + r * o, o, tail); \
    break;
    JAXSR_CASE(1) JAXSR_CASE(2) JAXSR_CASE(3) JAXSR_CASE(4) JAXSR_CASE(5) JAXSR_CASE(6) JAXSR_CASE(7)
    JAXSR_CASE(8) JAXSR_CASE(9) JAXSR_CASE(10) JAXSR_CASE(11) JAXSR_CASE(12) JAXSR_CASE(13)
    JAXSR_CASE(14) JAXSR_CASE(15)
#undef JAXSR_CASE
    default:
      break;
  }
}

struct Problem {
  const float* x;
  const float* g;
  float* dw;
  int64_t n, h, w, c, ho, wo, o, kh, kw, pt, pl;
  int64_t o_blocks, row_chunks, rows, rows_per_chunk;
  std::vector<std::unique_ptr<float[]>> partial;  // row chunk k >= 1 sums into partial[k - 1]
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  std::mutex mu;
  std::condition_variable finished;

  void Task(int64_t t) const {
    const int64_t ob = t % o_blocks, chunk = t / o_blocks;
    const int64_t o0 = ob * kBlockO, width = std::min(kBlockO, o - o0);
    const int64_t nv = (width + kLanes - 1) / kLanes;
    const __mmask16 tail = static_cast<__mmask16>(width % kLanes ? (1u << (width % kLanes)) - 1 : 0xFFFF);
    float* out = chunk == 0 ? dw : partial[chunk - 1].get();
    const int64_t r0 = chunk * rows_per_chunk, r1 = std::min(rows, r0 + rows_per_chunk);
    // Rows in groups whose pixels (input and cotangent) stay in the core's L2 cache while every
    // tap and channel block passes over them; the sums of a group stay in registers.
    const int64_t group = std::max<int64_t>(1, kGroupBytes / std::max<int64_t>(1, wo * (c + width) * 4));
    std::vector<Run> runs;
    runs.reserve(group);
    for (int64_t g0 = r0; g0 < r1; g0 += group) {
      const int64_t g1 = std::min(r1, g0 + group);
      for (int64_t ta = 0; ta < kh; ++ta) {
        for (int64_t tb = 0; tb < kw; ++tb) {
          // output columns j whose input column j + tb - pl lies inside the image
          const int64_t j0 = std::max<int64_t>(0, pl - tb), j1 = std::min<int64_t>(wo, w + pl - tb);
          if (j1 <= j0) continue;
          runs.clear();
          for (int64_t row = g0; row < g1; ++row) {  // row = (image, output row)
            const int64_t img = row / ho, i = row % ho, xr = i + ta - pt;
            if (xr < 0 || xr >= h) continue;
            runs.push_back({x + ((img * h + xr) * w + j0 + tb - pl) * c, g + ((img * ho + i) * wo + j0) * o + o0, j1 - j0});
          }
          if (runs.empty()) continue;
          float* d = out + (ta * kw + tb) * c * o + o0;
          const int64_t nr = static_cast<int64_t>(runs.size());
          switch (nv) {
            case 1: Rows<1>(runs.data(), nr, c, o, d, tail); break;
            case 2: Rows<2>(runs.data(), nr, c, o, d, tail); break;
            case 3: Rows<3>(runs.data(), nr, c, o, d, tail); break;
            default: Rows<4>(runs.data(), nr, c, o, d, tail); break;
          }
        }
      }
    }
  }

  int64_t tasks() const { return o_blocks * row_chunks; }

  void Work() {
    for (int64_t t; (t = next.fetch_add(1)) < tasks();) {
      Task(t);
      if (done.fetch_add(1) + 1 == tasks()) {
        std::lock_guard<std::mutex> lock(mu);
        finished.notify_all();
      }
    }
  }
};

ffi::Error KernelGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> g,
                      ffi::ResultBuffer<ffi::F32> dw, int64_t pad_top, int64_t pad_left) {
  auto dx = x.dimensions();
  auto dg = g.dimensions();
  auto dk = dw->dimensions();
  if (dx.size() != 4 || dg.size() != 4 || dk.size() != 4)
    return ffi::Error::InvalidArgument("jaxsr_conv_kernel_grad: x, g and dw must be 4-D (NHWC, NHWC, HWIO)");
  if (dg[0] != dx[0] || dk[2] != dx[3] || dk[3] != dg[3] || pad_top < 0 || pad_left < 0)
    return ffi::Error::InvalidArgument("jaxsr_conv_kernel_grad: shapes do not fit one convolution");
  auto p = std::make_shared<Problem>();
  p->x = x.typed_data();
  p->g = g.typed_data();
  p->dw = dw->typed_data();
  p->n = dx[0], p->h = dx[1], p->w = dx[2], p->c = dx[3];
  p->ho = dg[1], p->wo = dg[2], p->o = dg[3];
  p->kh = dk[0], p->kw = dk[1], p->pt = pad_top, p->pl = pad_left;
  const int64_t size = p->kh * p->kw * p->c * p->o;
  std::memset(p->dw, 0, sizeof(float) * size);
  p->rows = p->n * p->ho;
  if (size == 0 || p->rows == 0 || p->wo == 0) return ffi::Error::Success();
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  p->o_blocks = (p->o + kBlockO - 1) / kBlockO;
  // enough row chunks that every thread gets a task; more only cost private buffers
  p->row_chunks = std::min(p->rows, std::max<int64_t>(1, (threads + p->o_blocks - 1) / p->o_blocks));
  p->rows_per_chunk = (p->rows + p->row_chunks - 1) / p->row_chunks;
  p->row_chunks = (p->rows + p->rows_per_chunk - 1) / p->rows_per_chunk;
  for (int64_t k = 1; k < p->row_chunks; ++k) {
    p->partial.emplace_back(new float[size]);
    std::memset(p->partial.back().get(), 0, sizeof(float) * size);
  }
  for (int64_t i = 1; i < std::min(threads, p->tasks()); ++i) pool.Schedule([p] { p->Work(); });
  p->Work();
  {
    std::unique_lock<std::mutex> lock(p->mu);
    p->finished.wait(lock, [&] { return p->done.load() == p->tasks(); });
  }
  for (const auto& part : p->partial) {
    const float* s = part.get();
    for (int64_t e = 0; e < size; ++e) p->dw[e] += s[e];
  }
  return ffi::Error::Success();
}

}  // namespace

// 1 when this CPU runs the AVX-512 code above (the Python side checks before registering).
extern "C" int jaxsr_native_supported() { return __builtin_cpu_supports("avx512f") ? 1 : 0; }

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxsr_conv_kernel_grad, KernelGrad,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("pad_top")
                                  .Attr<int64_t>("pad_left"));
