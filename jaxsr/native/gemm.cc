// jaxsr_gemm: a float32 matrix product for XLA:CPU as an FFI custom call, computed with the
// cblas_sgemm of an OpenBLAS (the one numpy ships, loaded privately and set to one thread; see
// jaxsr/cpu_gemm.py). XLA:CPU's own dot ran 1.3-3x slower than OpenBLAS on the products the
// convolution gradients reduce to.
//
// Threads: OpenBLAS's own pool, spinning beside XLA's, made whole training steps 30% slower.
// Instead the output is cut into row or column blocks that XLA's intra-op pool threads claim one
// at a time, each computed by a single-threaded sgemm. The calling thread claims blocks too, so a
// busy pool only means fewer helpers, never a wait on queued work.
//
// The sgemm entry point is handed over at run time (jaxsr_set_sgemm), so this file links
// against nothing but the C++ runtime.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <cstdlib>
#include <memory>
#include <mutex>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// cblas_sgemm with 64-bit integers (OpenBLAS built with INTERFACE64, as numpy's is).
using Sgemm64 = void (*)(int order, int trans_a, int trans_b, int64_t m, int64_t n, int64_t k,
                         float alpha, const float* a, int64_t lda, const float* b, int64_t ldb,
                         float beta, float* c, int64_t ldc);
// ... and with 32-bit integers (a plain LP64 OpenBLAS).
using Sgemm32 = void (*)(int order, int trans_a, int trans_b, int32_t m, int32_t n, int32_t k,
                         float alpha, const float* a, int32_t lda, const float* b, int32_t ldb,
                         float beta, float* c, int32_t ldc);

void* g_sgemm = nullptr;
bool g_ilp64 = true;

constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;
// A block is at least this many output rows (or columns): thinner ones waste sgemm's packing.
constexpr int64_t kMinBlock = 64;

// C (m x n, row-major) = op(A) op(B), one block of rows [r0, r1) or columns [c0, c1) at a time.
struct Product {
  const float* a;
  const float* b;
  float* c;
  int64_t m, n, k, lda, ldb;
  bool ta, tb, by_rows;
  int64_t blocks, step;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  std::mutex mu;
  std::condition_variable finished;

  void Block(int64_t i) const {
    const int64_t lo = i * step, hi = std::min(lo + step, by_rows ? m : n);
    const float *pa = a, *pb = b;
    float* pc = c;
    int64_t rows = m, cols = n;
    if (by_rows) {  // rows lo..hi of op(A): rows of A, or columns of A when transposed
      pa += ta ? lo : lo * lda;
      pc += lo * n;
      rows = hi - lo;
    } else {  // columns lo..hi of op(B): columns of B, or rows of B when transposed
      pb += tb ? lo * ldb : lo;
      pc += lo;
      cols = hi - lo;
    }
    const int opa = ta ? kTrans : kNoTrans, opb = tb ? kTrans : kNoTrans;
    if (g_ilp64) {
      reinterpret_cast<Sgemm64>(g_sgemm)(kRowMajor, opa, opb, rows, cols, k, 1.0f, pa, lda, pb, ldb,
                                         0.0f, pc, n);
    } else {
      reinterpret_cast<Sgemm32>(g_sgemm)(kRowMajor, opa, opb, static_cast<int32_t>(rows),
                                         static_cast<int32_t>(cols), static_cast<int32_t>(k), 1.0f,
                                         pa, static_cast<int32_t>(lda), pb,
                                         static_cast<int32_t>(ldb), 0.0f, pc,
                                         static_cast<int32_t>(n));
    }
  }

  // Claims and computes blocks until none is left.
  void Work() {
    for (int64_t i; (i = next.fetch_add(1)) < blocks;) {
      Block(i);
      if (done.fetch_add(1) + 1 == blocks) {
        std::lock_guard<std::mutex> lock(mu);
        finished.notify_all();
      }
    }
  }
};

ffi::Error Gemm(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b,
                ffi::ResultBuffer<ffi::F32> c, bool transpose_a, bool transpose_b) {
  if (g_sgemm == nullptr) return ffi::Error::Internal("jaxsr_gemm: no sgemm was registered");
  auto da = a.dimensions();
  auto db = b.dimensions();
  if (da.size() != 2 || db.size() != 2)
    return ffi::Error::InvalidArgument("jaxsr_gemm: operands must be matrices");
  const int64_t m = transpose_a ? da[1] : da[0], k = transpose_a ? da[0] : da[1];
  const int64_t kb = transpose_b ? db[1] : db[0], n = transpose_b ? db[0] : db[1];
  if (k != kb) return ffi::Error::InvalidArgument("jaxsr_gemm: contracted sizes differ");
  float* out = c->typed_data();
  if (m == 0 || n == 0) return ffi::Error::Success();
  if (k == 0) {  // BLAS may leave C untouched when there is nothing to sum
    std::memset(out, 0, sizeof(float) * m * n);
    return ffi::Error::Success();
  }
  if (!g_ilp64 && std::max({m, n, k, da[1], db[1]}) > INT32_MAX)
    return ffi::Error::InvalidArgument("jaxsr_gemm: sizes exceed a 32-bit BLAS");

  auto product = std::make_shared<Product>();
  Product& p = *product;
  p.a = a.typed_data();
  p.b = b.typed_data();
  p.c = out;
  p.m = m, p.n = n, p.k = k, p.lda = da[1], p.ldb = db[1];
  p.ta = transpose_a, p.tb = transpose_b;
  p.by_rows = m >= n;
  const int64_t extent = p.by_rows ? m : n;
  int64_t threads = std::max<int64_t>(1, pool.num_threads());
  if (const char* e = std::getenv("JAXSR_GEMM_THREADS")) threads = std::atoi(e);
  // a block per thread, or two when big enough, so that a helper starting late still gets work
  p.blocks = extent >= 2 * threads * kMinBlock ? 2 * threads : std::max<int64_t>(1, std::min(threads, extent / kMinBlock));
  p.step = (extent + p.blocks - 1) / p.blocks;
  p.blocks = (extent + p.step - 1) / p.step;
  for (int64_t i = 1; i < std::min(threads, p.blocks); ++i)
    pool.Schedule([product] { product->Work(); });
  p.Work();
  // what is left is being computed by helpers that already claimed it
  std::unique_lock<std::mutex> lock(p.mu);
  p.finished.wait(lock, [&] { return p.done.load() == p.blocks; });
  return ffi::Error::Success();
}

}  // namespace

extern "C" void jaxsr_set_sgemm(void* sgemm, int ilp64) {
  g_sgemm = sgemm;
  g_ilp64 = ilp64 != 0;
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxsr_gemm, Gemm,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<bool>("transpose_a")
                                  .Attr<bool>("transpose_b"));
