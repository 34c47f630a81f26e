// Native XLA:CPU kernels for stride-1 NHWC/HWIO convolutions, as XLA FFI custom calls (see
// jaxsr/cpu/native.py, which builds and registers them). x is read as zero outside the image.
//
// jaxsr_conv_kernel_grad, the kernel gradient:
//
//   dw[a, b, c, o] = sum over n, i, j of x[n, i + a - pt, j + b - pl, c] * g[n, i, j, o]
//
// XLA:CPU computes this product (a matrix product whose contraction runs over every output pixel
// and whose result is only kh*kw*C x O) at about half its speed for other products of the same
// size, and only after copying shifted views of x and g into stacks. Here every (image row, tap)
// pair is a small product of two blocks that already lie contiguously in memory: a run of pixels
// of one input row (pixels x C) and the matching run of one cotangent row (pixels x O). Nothing is
// copied; the sums run in AVX-512 registers.
//
// jaxsr_conv_forward, the convolution itself (and, given the flipped kernel, its input gradient):
//
//   out[n, i, j, o] = sum over a, b, c of x[n, i + a - pt, j + b - pl, c] * w[a, b, c, o]
//
// with w packed by the caller as (O / 64, kh, kw, C, 64) so that each 64-wide block of output
// channels reads its weights contiguously (in HWIO order a block's rows lie O floats apart, which
// maps them onto a few cache sets: 2-3x slower at 256-512 channels). A tile of 6 output pixels
// (any pixels: a tile may span rows and images) by 64 output channels is summed in 24 registers.
// XLA:CPU's Eigen convolution runs these shapes at 255-305 GFLOP/s on a 2-core AVX-512 machine,
// this kernel at 300-320.
//
// Threads: output channels are cut into 64-wide blocks and rows (pixels) into chunks; XLA's
// intra-op pool threads claim (block, chunk) tasks, the calling thread too. Kernel-gradient chunks
// after the first sum into private buffers that are added at the end, so the result never depends
// on timing; forward tasks write disjoint outputs.
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

// Tasks 0..count-1 claimed by the calling thread and XLA's intra-op pool threads.
struct TaskQueue {
  virtual ~TaskQueue() = default;
  virtual void Task(int64_t t) const = 0;

  int64_t count = 0;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  std::mutex mu;
  std::condition_variable finished;

  void Work() {
    for (int64_t t; (t = next.fetch_add(1)) < count;) {
      Task(t);
      if (done.fetch_add(1) + 1 == count) {
        std::lock_guard<std::mutex> lock(mu);
        finished.notify_all();
      }
    }
  }
};

// Returns when every task of q is done.
void RunAll(ffi::ThreadPool& pool, const std::shared_ptr<TaskQueue>& q) {
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  for (int64_t i = 1; i < std::min(threads, q->count); ++i) pool.Schedule([q] { q->Work(); });
  q->Work();
  std::unique_lock<std::mutex> lock(q->mu);
  q->finished.wait(lock, [&] { return q->done.load() == q->count; });
}

// The 16-lane mask of the last register of a block `width` channels wide.
inline __mmask16 TailMask(int64_t width) {
  return static_cast<__mmask16>(width % kLanes ? (1u << (width % kLanes)) - 1 : 0xFFFF);
}

// The geometry both kernels share: input x (n, h, wd, c); output, or cotangent, (n, ho, wo, o);
// kh x kw taps; x read at row i + a - pt, column j + b - pl.
struct ConvShape {
  int64_t n, h, wd, c, ho, wo, o, kh, kw, pt, pl;
};

template <typename Dims>
ConvShape ShapeOf(const Dims& dx, const Dims& dout, int64_t kh, int64_t kw, int64_t pad_top, int64_t pad_left) {
  return {dx[0], dx[1], dx[2], dx[3], dout[1], dout[2], dout[3], kh, kw, pad_top, pad_left};
}

// ----------------------------------------------------------------------------- kernel gradient

struct KernelGradProblem : TaskQueue, ConvShape {
  const float* x;
  const float* g;
  float* dw;
  int64_t o_blocks, row_chunks, rows, rows_per_chunk;
  std::vector<std::unique_ptr<float[]>> partial;  // row chunk k >= 1 sums into partial[k - 1]

  void Task(int64_t t) const override {
    const int64_t ob = t % o_blocks, chunk = t / o_blocks;
    const int64_t o0 = ob * kBlockO, width = std::min(kBlockO, o - o0);
    const int64_t nv = (width + kLanes - 1) / kLanes;
    const __mmask16 tail = TailMask(width);
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
          const int64_t j0 = std::max<int64_t>(0, pl - tb), j1 = std::min<int64_t>(wo, wd + pl - tb);
          if (j1 <= j0) continue;
          runs.clear();
          for (int64_t row = g0; row < g1; ++row) {  // row = (image, output row)
            const int64_t img = row / ho, i = row % ho, xr = i + ta - pt;
            if (xr < 0 || xr >= h) continue;
            runs.push_back({x + ((img * h + xr) * wd + j0 + tb - pl) * c, g + ((img * ho + i) * wo + j0) * o + o0, j1 - j0});
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
  auto p = std::make_shared<KernelGradProblem>();
  p->x = x.typed_data();
  p->g = g.typed_data();
  p->dw = dw->typed_data();
  static_cast<ConvShape&>(*p) = ShapeOf(dx, dg, dk[0], dk[1], pad_top, pad_left);
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
  p->count = p->o_blocks * p->row_chunks;
  RunAll(pool, p);
  for (const auto& part : p->partial) {
    const float* s = part.get();
    for (int64_t e = 0; e < size; ++e) p->dw[e] += s[e];
  }
  return ffi::Error::Success();
}

// ----------------------------------------------------------------------------- forward

// Output pixels per tile beside NV registers of output channels (MR x NV sums + NV weights fit
// the 32 registers).
constexpr int TileRows(int nv) { return nv == 4 ? 6 : nv == 3 ? 8 : nv == 2 ? 12 : 16; }
constexpr int kMaxTile = 16;
constexpr int64_t kChunkPixels = 48;  // a multiple of every TileRows, so chunks end on whole tiles

// out[r, 16v + l] = sum over taps t < nt and k < c of px[t][r][k] * wt[t][k * kBlockO + 16v + l],
// r < MR: px[t][r] points at the input pixel that tap t of output pixel r reads (or at zeros).
template <int MR, int NV>
inline void ForwardMicro(const float* const* px, const float* const* wt, int nt, int64_t c, float* out,
                         int64_t ldo, __mmask16 tail) {
  __m512 acc[MR][NV];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
  for (int t = 0; t < nt; ++t) {
    const float* const* pt = px + t * kMaxTile;
    const float* w = wt[t];
    const float* pr[MR];
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) pr[r] = pt[r];
    for (int64_t k = 0; k < c; ++k) {
      const float* wk = w + k * kBlockO;
      __m512 bv[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) bv[v] = _mm512_loadu_ps(wk + kLanes * v);  // packed: padded to 64
#pragma GCC unroll 16
      for (int r = 0; r < MR; ++r) {
        const __m512 av = _mm512_set1_ps(pr[r][k]);
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(av, bv[v], acc[r][v]);
      }
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      const __mmask16 m = v == NV - 1 ? tail : static_cast<__mmask16>(0xFFFF);
      _mm512_mask_storeu_ps(out + r * ldo + kLanes * v, m, acc[r][v]);
    }
  }
}

// A tile of m <= TileRows(NV) pixels.
template <int NV>
void ForwardTile(int m, const float* const* px, const float* const* wt, int nt, int64_t c, float* out,
                 int64_t ldo, __mmask16 tail) {
  constexpr int MR = TileRows(NV);
  switch (m) {
#define JAXSR_CASE(n) \
  case n:             \
    if constexpr (n <= MR) ForwardMicro<n, NV>(px, wt, nt, c, out, ldo, tail); \
    break;
    JAXSR_CASE(1) JAXSR_CASE(2) JAXSR_CASE(3) JAXSR_CASE(4) JAXSR_CASE(5) JAXSR_CASE(6) JAXSR_CASE(7)
    JAXSR_CASE(8) JAXSR_CASE(9) JAXSR_CASE(10) JAXSR_CASE(11) JAXSR_CASE(12) JAXSR_CASE(13)
    JAXSR_CASE(14) JAXSR_CASE(15) JAXSR_CASE(16)
#undef JAXSR_CASE
    default:
      break;
  }
}

struct ForwardProblem : TaskQueue, ConvShape {
  const float* x;
  const float* w;  // packed (o_blocks, kh, kw, c, 64)
  float* out;
  int64_t o_blocks, chunks, pixels, pixels_per_chunk;
  std::vector<float> zeros;  // what a tap outside the image reads: c zeros

  template <int NV>
  void Pixels(int64_t ob, int64_t q0, int64_t q1) const {
    constexpr int MR = TileRows(NV);
    const int64_t o0 = ob * kBlockO;
    const __mmask16 tail = TailMask(std::min(kBlockO, o - o0));
    std::vector<const float*> px(kh * kw * kMaxTile);
    std::vector<const float*> wt(kh * kw);
    const int64_t plane = ho * wo;
    for (int64_t t0 = q0; t0 < q1; t0 += MR) {  // tiles of flattened output pixels (image, row, column)
      const int m = static_cast<int>(std::min<int64_t>(MR, q1 - t0));
      int64_t img[MR], oi[MR], oj[MR];
      for (int r = 0; r < m; ++r) {
        const int64_t q = t0 + r;
        img[r] = q / plane, oi[r] = q % plane / wo, oj[r] = q % wo;
      }
      int nt = 0;  // taps that read inside the image for at least one pixel of the tile
      for (int64_t a = 0; a < kh; ++a) {
        for (int64_t b = 0; b < kw; ++b) {
          bool any = false;
          for (int r = 0; r < m; ++r) {
            const int64_t xr = oi[r] + a - pt, xc = oj[r] + b - pl;
            const bool inside = xr >= 0 && xr < h && xc >= 0 && xc < wd;
            px[nt * kMaxTile + r] = inside ? x + ((img[r] * h + xr) * wd + xc) * c : zeros.data();
            any |= inside;
          }
          if (!any) continue;
          wt[nt++] = w + ((ob * kh + a) * kw + b) * c * kBlockO;
        }
      }
      ForwardTile<NV>(m, px.data(), wt.data(), nt, c, out + t0 * o + o0, o, tail);
    }
  }

  void Task(int64_t t) const override {
    const int64_t ob = t % o_blocks, chunk = t / o_blocks;
    const int64_t q0 = chunk * pixels_per_chunk, q1 = std::min(pixels, q0 + pixels_per_chunk);
    switch ((std::min(kBlockO, o - ob * kBlockO) + kLanes - 1) / kLanes) {
      case 1: Pixels<1>(ob, q0, q1); break;
      case 2: Pixels<2>(ob, q0, q1); break;
      case 3: Pixels<3>(ob, q0, q1); break;
      default: Pixels<4>(ob, q0, q1); break;
    }
  }
};

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                   ffi::ResultBuffer<ffi::F32> out, int64_t pad_top, int64_t pad_left) {
  auto dx = x.dimensions();
  auto dw = w.dimensions();
  auto dout = out->dimensions();
  if (dx.size() != 4 || dw.size() != 5 || dout.size() != 4)
    return ffi::Error::InvalidArgument("jaxsr_conv_forward: x, w and out must be NHWC, (O/64, kh, kw, C, 64), NHWC");
  if (dout[0] != dx[0] || dw[3] != dx[3] || dw[4] != kBlockO || dw[0] != (dout[3] + kBlockO - 1) / kBlockO ||
      pad_top < 0 || pad_left < 0)
    return ffi::Error::InvalidArgument("jaxsr_conv_forward: shapes do not fit one convolution");
  auto p = std::make_shared<ForwardProblem>();
  p->x = x.typed_data();
  p->w = w.typed_data();
  p->out = out->typed_data();
  static_cast<ConvShape&>(*p) = ShapeOf(dx, dout, dw[1], dw[2], pad_top, pad_left);
  p->pixels = p->n * p->ho * p->wo;
  if (p->pixels == 0 || p->o == 0) return ffi::Error::Success();
  if (p->c == 0 || p->kh == 0 || p->kw == 0) {
    std::memset(p->out, 0, sizeof(float) * p->pixels * p->o);
    return ffi::Error::Success();
  }
  p->zeros.assign(p->c, 0.0f);
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  p->o_blocks = (p->o + kBlockO - 1) / kBlockO;
  // about four tasks per thread, so that uneven tasks (border tiles skip taps) even out
  const int64_t want = std::max<int64_t>(1, (4 * threads + p->o_blocks - 1) / p->o_blocks);
  p->pixels_per_chunk = std::max<int64_t>(1, ((p->pixels + want - 1) / want + kChunkPixels - 1) / kChunkPixels) * kChunkPixels;
  p->chunks = (p->pixels + p->pixels_per_chunk - 1) / p->pixels_per_chunk;
  p->count = p->o_blocks * p->chunks;
  RunAll(pool, p);
  return ffi::Error::Success();
}

}  // namespace

// 1 when this CPU runs the AVX-512 code above (the Python side checks before registering).
extern "C" int jaxsr_native_supported() { return __builtin_cpu_supports("avx512f") ? 1 : 0; }

namespace {
// Both kernels take two f32 operands (x and the cotangent, or x and the packed kernel), return one,
// and read the padding as attributes.
auto ConvBinding() {
  return ffi::Ffi::Bind()
      .Ctx<ffi::ThreadPool>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Ret<ffi::Buffer<ffi::F32>>()
      .Attr<int64_t>("pad_top")
      .Attr<int64_t>("pad_left");
}
}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxsr_conv_kernel_grad, KernelGrad, ConvBinding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxsr_conv_forward, Forward, ConvBinding());
