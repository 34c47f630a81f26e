"""The degradation y = (x ⊗ k)↓s and its adjoints in the formulations XLA:CPU runs fast.

`jaxsr.ops.degrade` and `jaxsr.ops.unfolding` express these operators once, with XLA's grouped
convolutions (what GPUs and TPUs run fastest); XLA:CPU runs those depthwise, dilated and
large-kernel convolutions slowly. The formulations here compute the same values up to float32
rounding, and the ops reach them only through `jaxsr.cpu.hook`: as the CPU branch of `method="auto"`
(chosen for the platform a program is compiled for) or where a caller names them (`method="fft"`,
a spec's `blur_method="fused"`, `jaxsr.ops.degrade.blur_downsample`).

  correlate_fft               a 'valid' correlation (the blur) through real FFTs
  blur_downsample             blur then downsample, evaluated only at the kept pixels; kernels
                              known to be outer products take `separable_blur_downsample`
  sfold_blur_fft              KXNet's blur then s-fold downsampling, the blur through FFTs
  kernel_gradient_fft         KXNet's K-step correlation through FFTs
  transposed_blur_fft         KXNet's transposed strided blur through FFTs

This module knows no downsampler: the callers pass `matrix(n, scale, downsampler)`, the (out, n)
float64 matrix of the downsampler along an axis of n pixels (`jaxsr.ops.degrade.downsampler_matrix`:
MATLAB's antialiased bicubic and the s-fold). Arguments are checked by the public functions in
`jaxsr.ops`, not here. Tests: tests/cpu/test_cpu_degrade.py.
"""
from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
# matrix(n, scale, downsampler) -> M (out, n) float64: output i along an axis of n pixels is
# sum_r M[i, r] x[r]. Passed as a module-level function, so it is a cache key.
Matrix = Callable[[int, int, str], np.ndarray]
_HIGHEST = jax.lax.Precision.HIGHEST


# --------------------------------------------------------------------------- blur through FFTs

def correlate_fft(padded: Array, kernels: Array) -> Array:
    """'valid' correlation of padded (N, H+k-1, W+k-1, C) images with (N, k, k) kernels via FFT:
    the blur after its reflect padding. XLA:CPU's depthwise convolution is slow for 21x21
    kernels; this is ~10x faster there.

    The flipped kernel sits in the corner of a zero canvas; circular convolution then equals
    linear convolution except in the first k-1 rows/columns, which are exactly the ones cropped.
    """
    size = kernels.shape[-1]
    hp, wp = padded.shape[1], padded.shape[2]
    h, w = hp - size + 1, wp - size + 1
    canvas = jnp.zeros((kernels.shape[0], hp, wp), padded.dtype).at[:, :size, :size].set(kernels[:, ::-1, ::-1])
    spectrum = jnp.fft.rfft2(padded, axes=(1, 2)) * jnp.fft.rfft2(canvas, axes=(1, 2))[..., None]
    full = jnp.fft.irfft2(spectrum, s=(hp, wp), axes=(1, 2))
    return full[:, size - 1:size - 1 + h, size - 1:size - 1 + w, :].astype(padded.dtype)


# --------------------------------------------------------------------------- blur + downsample at the kept pixels
#
# jaxsr's downsamplers both keep a stride-s grid of a linear function of the blurred image, so blur
# followed by downsampling is one linear operator, and most of a full-resolution blur is thrown
# away. Along one axis, output i of the downsampler reads blurred pixels r through the weights
# M[i, r] (s-fold: a single 1 at r = s*i; bicubic: MATLAB's antialiased taps, mirrored at the
# borders), and blurred pixel r is sum_a k[a] xpad[r + a] on the reflect-padded input. With
# m_i = M[i] restricted to its nonzero span [b_i, b_i + len_i), output (i, j) is therefore
#
#     lr[i, j] = sum_{a', b'} K_ij[a', b'] xpad[b_i + a', b_j + b'],     K_ij = (m_i ⊗ m_j) * k,
#
# a correlation with the full 2-D convolution of the outer product of the two patterns with the
# kernel. Away from the borders every output has the same pattern h, at b_i = s*i + off, so the
# bulk of the image is one stride-s correlation. It is computed in two steps:
#   - along W (the contiguous axis) the fixed taps h are applied once to every row (a cheap,
#     separable prefilter), so the per-image part only needs the kernel's columns;
#   - along H the composed kernel (h * k along H, (len + k - 1) x k taps) is evaluated at the
#     kept rows only (a prefilter along the leading axis would stream len rows per output row).
# Outputs whose pattern differs (bicubic's first and last outputs per axis, where MATLAB mirrors
# the *blurred* image) use their own pattern: along W as per-output stacks of k columns, along H
# as their own composed kernel over a window of rows. The result equals blur-then-downsample up to
# float32 rounding, for any kernel.


def sfold_blur_fft(padded: Array, kernels: Array, scale: int) -> Array:
    """KXNet's (X ⊗ K)↓s: `correlate_fft` of the reflect-padded images, then every s-th pixel
    (the s-fold downsampler keeps the top-left pixel of each s×s block)."""
    return correlate_fft(padded, kernels)[:, ::scale, ::scale, :]


def blur_downsample(images: Array, kernels: Array, scale: int, downsampler: str, matrix: Matrix,
                    separable: bool = False) -> Array:
    """`downsample(blur(images, kernels), scale, downsampler)` without the full-resolution blur.

    Evaluates the composed linear operator only at the kept output positions: the downsampler's
    fixed taps along W as a separable prefilter, the kernel composed with them along H, each at
    stride `scale`; the outputs at the borders, where bicubic mirrors the blurred image, use their
    own exact weights. Equal to the two-step path up to float32 rounding, for any kernel. For
    21x21 kernels at x4 this is ~10x fewer multiply-adds than the full-resolution blur alone.

    `separable`: the caller knows the kernels are outer products (`jaxsr.ops.degrade.degrade`
    sampled isotropic Gaussians); up to `SEPARABLE_MAX_SIDE` they take
    `separable_blur_downsample`. At scale 1 nothing is skipped: the blur is `correlate_fft`.
    """
    n, h, w, c = images.shape
    size = kernels.shape[-1]
    pad = size // 2
    if separable and max(h, w) <= SEPARABLE_MAX_SIDE:
        return separable_blur_downsample(images, *separable_factors(kernels), scale, downsampler, matrix)
    if scale == 1:
        x = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
        return correlate_fft(x, kernels.astype(x.dtype))
    # Images are processed in groups whose temporaries stay under _TEMP_BUDGET: the layout below
    # keeps ~2.5 padded copies of a group alive, and XLA:CPU takes larger temporaries from fresh
    # mmap'ed pages on every call (glibc maps blocks over 32 MiB), whose page faults cost as much
    # as the arithmetic here.
    per_image = 2.5 * (h + 2 * pad + 2 * size) * (w + 2 * pad + 2 * size) * c * images.dtype.itemsize
    groups = -(-n // max(1, int(_TEMP_BUDGET // per_image)))
    if groups == 1:
        return _blur_downsample(images, kernels, scale, downsampler, matrix)
    per_group = -(-n // groups)
    extra = groups * per_group - n  # zero images (and kernels) to fill the last group
    images = jnp.pad(images, ((0, extra), (0, 0), (0, 0), (0, 0))) if extra else images
    kernels = jnp.pad(kernels, ((0, extra), (0, 0), (0, 0))) if extra else kernels
    out = jax.lax.map(lambda ik: _blur_downsample(ik[0], ik[1], scale, downsampler, matrix),
                      (images.reshape(groups, per_group, h, w, c), kernels.reshape(groups, per_group, size, size)))
    return out.reshape((groups * per_group,) + out.shape[2:])[:n]


_TEMP_BUDGET = 24 * 2 ** 20  # bytes of temporaries per group of images in blur_downsample


def _blur_downsample(images: Array, kernels: Array, scale: int, downsampler: str, matrix: Matrix) -> Array:
    """blur_downsample for one group of images."""
    n, h, w, c = images.shape
    size = kernels.shape[-1]
    pad = size // 2
    ph, pw = _axis_plan(h, scale, size, downsampler, matrix), _axis_plan(w, scale, size, downsampler, matrix)
    (h0, h1), (w0, w1) = ph.regular, pw.regular
    nh, nw = h1 - h0, w1 - w0
    len_e = max([len(t) for _, t in ph.explicit], default=0) + size - 1  # rows of an explicit H window
    hq = nh + (len(ph.taps) + size - 2) // scale  # row blocks the regular H correlation reads
    wq = nw + (size - 1) // scale
    # Padded sizes the reads below need; zeros beyond the reflect padding are never used.
    rows = max([h + 2 * pad, ph.start + scale * hq] + [b + len_e for b, _ in ph.explicit])
    cols = max(w + 2 * pad, pw.start + scale * wq + len(pw.taps) - 1)

    # Layout (H, W, C*N): channel and image are the vectorised innermost axis (image fastest: the
    # transpose from NHWC then moves whole channels, ~3x faster than with the channel fastest).
    x = jnp.transpose(images, (1, 2, 3, 0)).reshape(h, w, c * n)
    x = _reflect_pad(x, pad, (rows - h - 2 * pad, cols - w - 2 * pad))
    k = jnp.tile(jnp.transpose(kernels.astype(x.dtype), (1, 2, 0)), (1, 1, c))  # (k, k, f), f = c*N + n

    # Along W: the shared pattern as a prefilter, and k-column stacks for the explicit outputs.
    y_reg = _prefilter(x, pw.taps, pw.start, scale * wq, axis=1) if nw else None
    y_exp = _column_stacks(x, pw.explicit, size) if pw.explicit else None
    n_exp_w = len(pw.explicit)

    # Along H, regular outputs: the composed kernel at stride `scale`.
    reg = exp_cols = None
    if nh:
        kh = _compose_rows([ph.taps], k, len(ph.taps) + size - 1)
        rows_reg = slice(ph.start, ph.start + scale * hq)
        if nw:
            reg = _strided_correlate(y_reg[rows_reg], kh, (scale, scale), (nh, nw))
        if n_exp_w:
            exp_cols = _strided_correlate(y_exp[rows_reg], kh, (scale, size), (nh, n_exp_w))
    top = _in_output_order(reg, exp_cols, pw, axis=1) if nh else None

    # Along H, explicit outputs: each its own composed kernel over its own window of rows, as
    # separate feature groups of one correlation with a single output row.
    side = None
    if ph.explicit:
        n_exp_h, f = len(ph.explicit), n * c
        ke = _compose_rows([t for _, t in ph.explicit], k, len_e)  # (len_e, k, n_exp_h * f)

        def windows(y):  # (len_e, cols, n_exp_h * f): output e's rows b_e .. b_e + len_e
            return jnp.concatenate([y[b:b + len_e] for b, _ in ph.explicit], axis=-1)

        parts_reg = parts_exp = None
        if nw:
            parts_reg = _strided_correlate(windows(y_reg), ke, (1, scale), (1, nw))[0]  # (nw, e*f)
        if n_exp_w:
            ye = windows(y_exp).reshape(len_e, n_exp_w, size, n_exp_h * f)
            parts_exp = jnp.einsum("ajbg,abg->jg", ye, ke, precision=_HIGHEST)
        side = _in_output_order(parts_reg, parts_exp, pw, axis=0)  # (out_w, e*f)
        side = jnp.transpose(side.reshape(pw.out, n_exp_h, f), (1, 0, 2))  # (n_exp_h, out_w, f)
    out = _in_output_order(top, side, ph, axis=0)
    return jnp.transpose(out.reshape(ph.out, pw.out, c, n), (3, 0, 1, 2))



class _AxisPlan(NamedTuple):
    out: int                # number of outputs along the axis
    regular: tuple          # (i0, i1): outputs i0 <= i < i1 share the pattern `taps`
    taps: tuple             # h, the shared pattern (float64 values)
    start: int              # b_{i0} in padded coordinates (output i reads from start + s*(i - i0))
    explicit: tuple         # the other outputs, in output order: ((b_i, m_i), ...)


@functools.lru_cache(maxsize=128)
def _axis_plan(n: int, scale: int, ksize: int, downsampler: str, matrix: Matrix) -> _AxisPlan:
    """Static (trace-time, NumPy float64) description of one axis of the fused operator."""
    m = matrix(n, scale, downsampler)
    out = m.shape[0]
    spans = []
    for row in m:
        nz = np.flatnonzero(row)
        spans.append((int(nz[0]), row[nz[0]:nz[-1] + 1]))
    mid = out // 2
    taps, offset = spans[mid][1], spans[mid][0] - scale * mid

    def is_regular(i):
        b, t = spans[i]
        return b == scale * i + offset and len(t) == len(taps) and bool(np.all(np.abs(t - taps) <= 1e-12))

    i0, i1 = mid, mid + 1  # the middle output defines the pattern, so it is regular
    while i0 > 0 and is_regular(i0 - 1):
        i0 -= 1
    while i1 < out and is_regular(i1):
        i1 += 1
    explicit = tuple((b, tuple(float(v) for v in t)) for i, (b, t) in enumerate(spans) if not i0 <= i < i1)
    return _AxisPlan(out, (i0, i1), tuple(float(t) for t in taps), scale * i0 + offset, explicit)



def _reflect_pad(x: Array, pad: int, tails: tuple[int, int]) -> Array:
    """jnp.pad(x, pad, mode="reflect") on the two leading axes, then `tails` zeros at their ends.

    Written as in-place updates of one buffer: XLA:CPU runs the reverse/concatenate form of
    jnp.pad as a slow elementwise select.
    """
    h, w = x.shape[:2]
    rest = (0,) * (x.ndim - 2)
    buf = jnp.zeros((h + 2 * pad + tails[0], w + 2 * pad + tails[1]) + x.shape[2:], x.dtype)
    buf = jax.lax.dynamic_update_slice(buf, x, (pad, pad) + rest)
    buf = jax.lax.dynamic_update_slice(buf, x[pad:0:-1], (0, pad) + rest)
    buf = jax.lax.dynamic_update_slice(buf, x[h - 2:h - 2 - pad:-1], (pad + h, pad) + rest)
    rows = h + 2 * pad
    buf = jax.lax.dynamic_update_slice(buf, buf[:rows, 2 * pad:pad:-1], (0, 0) + rest)
    buf = jax.lax.dynamic_update_slice(buf, buf[:rows, w + pad - 2:w - 2:-1], (0, pad + w) + rest)
    return buf


def _tree_sum(terms: list) -> Array:
    """Sum as a balanced tree. XLA:CPU keeps the association of a fused sum, so a left-to-right
    chain of multiply-adds becomes one serial dependency per vector register (latency-bound);
    a tree gives independent chains and runs ~3x faster."""
    while len(terms) > 1:
        terms = [terms[i] + terms[i + 1] if i + 1 < len(terms) else terms[i] for i in range(0, len(terms), 2)]
    return terms[0]


def _prefilter(x: Array, taps, start: int, count: int, axis: int) -> Array:
    """g[m] = sum_t taps[t] x[start + m + t] along `axis`, for m < count (one fused loop)."""
    terms = []
    for t, weight in enumerate(taps):
        if weight == 0.0:
            continue
        tap = jax.lax.slice_in_dim(x, start + t, start + t + count, axis=axis)
        terms.append(tap if weight == 1.0 else tap * jnp.asarray(weight, x.dtype))
    return _tree_sum(terms)


def _compose_rows(patterns, kernels: Array, rows: int) -> Array:
    """(rows, k, len(patterns) * f): for each pattern p, the full convolution of p with the kernels
    along their rows (zero rows appended up to `rows`), patterns side by side on the last axis."""
    ka = kernels.shape[0]
    toeplitz = np.zeros((len(patterns), rows, ka))
    for e, pattern in enumerate(patterns):
        for t, weight in enumerate(pattern):
            toeplitz[e, np.arange(ka) + t, np.arange(ka)] = weight
    out = jnp.einsum("epa,abf->pbef", jnp.asarray(toeplitz, kernels.dtype), kernels,
                     precision=_HIGHEST)
    return out.reshape(rows, kernels.shape[1], -1)


def _column_stacks(x: Array, explicit, ksize: int) -> Array:
    """(rows, len(explicit) * k, f): for each explicit output (b, m) along W, the k columns
    sum_t m[t] x[:, b + t + c], c < k. Outputs on one side share one fused loop (their patterns
    placed in a common window), so no per-output concatenation runs in the inner loop."""
    groups, current = [], []
    for b, m in explicit:  # split where the spans stop overlapping (the two image sides)
        if current and b > max(cb + len(cm) for cb, cm in current):
            groups.append(current)
            current = []
        current.append((b, m))
    groups.append(current)
    stacks = []
    for group in groups:
        lo = min(b for b, _ in group)
        width = max(b + len(m) for b, m in group) - lo
        weights = np.zeros((len(group), width))
        for j, (b, m) in enumerate(group):
            weights[j, b - lo:b - lo + len(m)] = m
        terms = []
        for t in range(width):
            if not weights[:, t].any():
                continue
            tap = jax.lax.slice_in_dim(x, lo + t, lo + t + ksize, axis=1)[:, None]  # (rows, 1, k, f)
            terms.append(tap * jnp.asarray(weights[:, t], x.dtype)[None, :, None, None])
        stacks.append(_tree_sum(terms))
    out = jnp.concatenate(stacks, axis=1) if len(stacks) > 1 else stacks[0]  # (rows, n_exp, k, f)
    return out.reshape(x.shape[0], -1, x.shape[-1])


def _strided_correlate(y: Array, w: Array, strides: tuple[int, int], counts: tuple[int, int]) -> Array:
    """out[u, v, f] = sum_{a, b} w[a, b, f] y[sh*u + a, sw*v + b, f] for u < nh, v < nw.

    y is viewed as (hq, sh, wq, sw, f) (a reshape, no copy), so tap (a, b) is the block
    [a // sh + u, a % sh, b // sw + v, b % sw] for all (u, v): every tap reads whole rows of f
    contiguous values. The loop over a stays a loop (each step one fused multiply-add over the b
    taps): unrolled, XLA:CPU fuses all taps into one loop body that runs several times slower.
    y should hold exactly sh*hq rows and sw*wq columns (hq = nh + (ka-1)//sh); extra rows/columns
    are never read, missing ones are zero-padded here (a copy).
    """
    (sh, sw), (nh, nw) = strides, counts
    ka, kb, f = w.shape
    hq, wq = nh + (ka - 1) // sh, nw + (kb - 1) // sw
    y = y[:sh * hq, :sw * wq]
    if y.shape[:2] != (sh * hq, sw * wq):
        y = jnp.pad(y, ((0, sh * hq - y.shape[0]), (0, sw * wq - y.shape[1]), (0, 0)))
    y = y.reshape(hq, sh, wq, sw, f)

    def row(a, acc):
        wa = jax.lax.dynamic_index_in_dim(w, a, 0, keepdims=False)  # (kb, f)
        terms = []
        for b in range(kb):
            start = (a // sh, a % sh, jnp.int32(b // sw), jnp.int32(b % sw), jnp.int32(0))
            terms.append(jax.lax.dynamic_slice(y, start, (nh, 1, nw, 1, f))[:, 0, :, 0] * wa[b])
        return acc + _tree_sum(terms)

    return jax.lax.fori_loop(0, ka, row, jnp.zeros((nh, nw, f), y.dtype))


def _in_output_order(regular, explicit, plan: _AxisPlan, axis: int) -> Array:
    """Concatenate the regular and explicit outputs of one axis in output order."""
    if explicit is None:
        return regular
    if regular is None:
        return explicit
    n_top = plan.regular[0]  # explicit outputs before the regular ones; the rest come after
    pieces = [jax.lax.slice_in_dim(explicit, 0, n_top, axis=axis), regular,
              jax.lax.slice_in_dim(explicit, n_top, explicit.shape[axis], axis=axis)]
    return jnp.concatenate([p for p in pieces if p.shape[axis]], axis=axis)




# --------------------------------------------------------------------------- separable kernels
#
# A kernel that is an outer product, k[a, b] = u[a] v[b] (every isotropic Gaussian), makes
# blur-then-downsample separable: along each axis, output i reads input p through
#
#     A[i, p] = sum_r M[i, r] sum_a u[a] [reflect(r + a - pad) = p],
#
# the downsampler's matrix M times the reflect-padded 1-D correlation. So lr = A_h X A_w^T per
# image and channel: two small matrix products, which run at matmul speed, instead of the 2-D
# correlation. A depends linearly on the taps, A = sum_a u[a] T[:, a, :], with T fixed per axis.


@functools.lru_cache(maxsize=64)
def _separable_basis(n: int, scale: int, ksize: int, downsampler: str, matrix: Matrix) -> np.ndarray:
    """T (out, k, n) float64: T[i, a, p] = sum_r M[i, r] [reflect(r + a - k // 2) = p]."""
    m = matrix(n, scale, downsampler)
    pad = ksize // 2
    r = np.arange(n)
    basis = np.zeros((m.shape[0], ksize, n))
    for a in range(ksize):
        src = np.abs(r + a - pad)  # numpy/jnp "reflect": -1 -> 1, n -> n - 2
        src = np.where(src > n - 1, 2 * (n - 1) - src, src)
        np.add.at(basis[:, a, :], (slice(None), src), m)  # column r of M lands on input src[r]
    return basis


def separable_blur_downsample(images: Array, taps_h: Array, taps_w: Array, scale: int, downsampler: str,
                              matrix: Matrix) -> Array:
    """`downsample(blur(images, k), scale, downsampler)` for separable kernels k[n] = outer(taps_h[n],
    taps_w[n]) (taps_h along H, taps_w along W, each (N, k)), as two matrix products per image.

    Equal to the 2-D paths up to float32 rounding. `blur_downsample` takes it for kernels the caller
    knows to be outer products: 2.2x the speed of the 2-D path at x4 on 256², more on smaller images
    (up to `SEPARABLE_MAX_SIDE`).
    """
    n, h, w, c = images.shape
    size = taps_h.shape[1]
    dtype = images.dtype
    hi = _HIGHEST

    def operator(taps, length):  # (N, out, length)
        basis = jnp.asarray(_separable_basis(length, scale, size, downsampler, matrix), dtype)
        return jnp.einsum("na,oap->nop", taps.astype(dtype), basis, precision=hi)

    a_h, a_w = operator(taps_h, h), operator(taps_w, w)
    # H first: X[n] is (H, W*C) as stored, so no transpose of the HR batch is needed.
    z = jax.lax.dot_general(a_h, images.reshape(n, h, w * c), (((2,), (1,)), ((0,), (0,))), precision=hi)
    z = z.reshape(n, a_h.shape[1], w, c)
    return jnp.einsum("nowc,nqw->noqc", z, a_w, precision=hi)


# `blur_downsample` takes the separable path up to this image side: its matrices are dense
# (out x side), so its cost grows with side^2 per axis against the 2-D path's side * k. Measured here (x4, 21x21
# kernels, separable / 2-D time): bicubic 0.10 at 96^2, 0.37 at 256^2, 0.52 at 512^2, 0.42 at 1024^2;
# s-fold 0.27, 0.78, 1.08, 0.92. Its fixed bases stay under 22 MB per axis.
SEPARABLE_MAX_SIDE = 1024


def separable_factors(kernels: Array) -> tuple[Array, Array]:
    """(taps_h, taps_w) with outer(taps_h[n], taps_w[n]) = kernels[n], for kernels that ARE
    rank-1 and sum to 1 (their marginals then are the factors). Nothing checks that here: the
    caller knows (`degrade` samples isotropic Gaussians)."""
    return jnp.sum(kernels, axis=2), jnp.sum(kernels, axis=1)


# --------------------------------------------------------------------------- KXNet's data-term gradients

def kernel_gradient_fft(padded: Array, residual: Array, size: int, scale: int) -> Array:
    """(N, size, size): tap (a, b) is sum X_pad[s·i + a, s·j + b, c] · R[i, j, c] over (i, j, c),
    the correlation of the reflect-padded X with R dilated by s (`jaxsr.ops.unfolding.kernel_gradient`
    before its normalisation), as a circular cross-correlation of X_pad with the zero-upsampled R
    through real FFTs; lags < size never wrap. XLA:CPU's grouped, dilated convolution is slow."""
    h, w = residual.shape[1:3]
    hp, wp = padded.shape[1:3]
    r_up = jnp.zeros_like(padded).at[:, :scale * h:scale, :scale * w:scale, :].set(residual)
    spec = jnp.fft.rfft2(padded, axes=(1, 2)) * jnp.conj(jnp.fft.rfft2(r_up, axes=(1, 2)))
    return jnp.fft.irfft2(jnp.sum(spec, axis=-1), s=(hp, wp), axes=(1, 2))[:, :size, :size]


def transposed_blur_fft(e: Array, kernels: Array, scale: int) -> Array:
    """`jaxsr.ops.unfolding.transposed_blur` (E dilated by s, convolved with K, cropped to s·h x s·w)
    through real FFTs on a canvas large enough that nothing wraps. e (N, h, w, C), kernels (N, k, k)
    of e's dtype -> (N, s·h, s·w, C)."""
    n, h, w, c = e.shape
    size = kernels.shape[-1]
    pad = size // 2
    hp, wp = scale * h + size - 1, scale * w + size - 1
    e_up = jnp.zeros((n, hp, wp, c), e.dtype).at[:, :scale * h:scale, :scale * w:scale, :].set(e)
    canvas = jnp.zeros((n, hp, wp), e.dtype).at[:, :size, :size].set(kernels)
    spec = jnp.fft.rfft2(e_up, axes=(1, 2)) * jnp.fft.rfft2(canvas, axes=(1, 2))[..., None]
    full = jnp.fft.irfft2(spec, s=(hp, wp), axes=(1, 2))
    return full[:, pad:pad + scale * h, pad:pad + scale * w, :].astype(e.dtype)
