// ncis-deploy: T iterations of separable, reflect-padded Gaussian smoothing in ONE launch -- the algorithm.
//
// Everything in this header is `__host__ __device__` and free of CUDA runtime calls, so that three compilers see
// the same code: nvcc for the kernels (gaussian_smooth.cu), NVRTC for the Python binding (ncis_deploy/kernels.py),
// and nvcc's host pass for the CPU emulation (kernels/tests/emulate.cu), which runs this very algorithm thread by
// thread on the CPU. kernels/README.md has the design with pictures; the short version:
//
// * One block owns a TILE_H x TILE_W tile of one image plane and stages the tile plus a halo of R = T * r pixels
//   (r = kernel radius) in shared memory, reading global memory once. Each of the 2T one-axis passes writes the
//   other of two float buffers (ping-pong), and the region it computes shrinks by r per side: after T iterations
//   exactly the tile is valid and is written out, once.
// * Borders. The reference (smooth_iterative) reflect-pads *every* iteration: out-of-image positions take the
//   current iteration's in-image values at the reflected index. We never re-pad. The halo is loaded once from the
//   infinitely reflected image (reflect index of any depth, so reflection of reflection for images smaller than
//   the halo is just the index formula) and every buffer position -- inside or outside the image -- is computed by
//   the same convolution. That is exact because the reflected extension x~ of an image is even about 0 and about
//   n-1 (hence 2(n-1)-periodic), and convolving an even function with a symmetric kernel keeps it even about the
//   same points: (g * x~)(-p) = (g * x~)(p). So after every pass the value computed at an out-of-image position IS
//   the current in-image value at its reflected index -- the reference's re-padding, for free, tile by tile, with
//   no communication between tiles. It holds even bitwise, not only in exact arithmetic: the pass sums symmetric
//   pairs, acc = g0*c + sum_d g_d*(x[-d] + x[+d]), and a mirrored position sees the same pairs swapped, which IEEE
//   addition does not notice. The emulator checks that bitwise claim after every pass.
// * Registers: a pass computes STRIP consecutive outputs per thread from a sliding window, so shared memory is read
//   (STRIP + 2r) / STRIP times per output instead of (2r + 1) times. The radius is a template parameter for the
//   common small kernels (3, 5, 7 taps: fully unrolled, no register moves) and a run-time value otherwise.
// * Float accumulation whatever the I/O type (float32 or IEEE float16, converted on load and store).

#ifndef NCIS_GAUSSIAN_SMOOTH_CUH
#define NCIS_GAUSSIAN_SMOOTH_CUH

#if !defined(__CUDACC_RTC__)
#include <cmath>
#include <cstring>
#endif

#if defined(__CUDACC__)
#define NCIS_HD __host__ __device__ __forceinline__
#else
#define NCIS_HD inline
#endif

namespace ncis_gs {

// ------------------------------------------------------------------------------------------------ configuration
// kernels.py mirrors these four numbers for its launch plan; a CPU test compares its plan with plan() below.
constexpr int kTileH = 32;           // output rows per block
constexpr int kTileW = 64;           // output columns per block (a power of two: cheap index math in load/store)
constexpr int kThreads = 256;        // threads per block
constexpr int kStrip = 8;            // consecutive outputs per thread in a pass (register window)
// Dynamic shared memory per block. 48 KB is the limit every launch path gets without an opt-in attribute, so the
// NVRTC binding, the plugin and the runtime launcher share one plan. It fits a halo R = T * r <= 15; a larger R is
// split into several launches (see plan()). Raising it (cudaFuncSetAttribute) is a tuning lever for the GPU session.
constexpr int kSmemBudget = 48 * 1024;
constexpr int kMaxRadius = 15;       // r whose single-iteration halo still fits kSmemBudget (kernel_size <= 31)

static_assert(kStrip <= kTileH && kStrip <= kTileW, "a pass region is never shorter than one strip");

// --------------------------------------------------------------------------------------------------- index math
// Source index of position p under repeated reflection about 0 and n-1 ("reflect" mode of NumPy/PyTorch: the border
// pixel is not repeated), for ANY p: the extension is 2(n-1)-periodic. Same as smoothing.reflect_index. n >= 2.
NCIS_HD int reflect(int p, int n) {
    if (p >= 0 && p < n) return p;  // the common case, without a division
    const int period = 2 * (n - 1);
    int m = p % period;
    if (m < 0) m += period;
    return m < n ? m : period - m;
}

NCIS_HD int min_i(int a, int b) { return a < b ? a : b; }
NCIS_HD int ceil_div(int a, int b) { return (a + b - 1) / b; }

// Shared-memory geometry for a halo R: two float buffers of (kTileH + 2R) rows, a row stride that is odd (so the
// W pass, where neighbouring threads take neighbouring rows, hits 32 different banks), then the r + 1 half-taps.
NCIS_HD int buf_h(int halo) { return kTileH + 2 * halo; }
NCIS_HD int buf_w(int halo) { return kTileW + 2 * halo; }
NCIS_HD int buf_stride(int halo) { return buf_w(halo) | 1; }
NCIS_HD int smem_bytes(int halo, int radius) {
    return (2 * buf_h(halo) * buf_stride(halo) + radius + 1) * (int)sizeof(float);
}

// ---------------------------------------------------------------------------------------------------- the plan
// T iterations run as `launches` kernel launches of `iters[i]` iterations each (as equal as possible), the fewest
// launches whose halo fits kSmemBudget. Iterating is associative, so a split changes only rounding at the seams.
constexpr int kMaxLaunches = 64;
struct Plan {
    int launches;                 // 0: iterations == 0 (a copy); -1: the radius alone does not fit
    int per_launch;               // the most iterations in one launch
};

NCIS_HD Plan plan(int radius, int iterations) {
    Plan p{0, 0};
    if (iterations <= 0) return p;
    if (radius > kMaxRadius || smem_bytes(radius, radius) > kSmemBudget) { p.launches = -1; return p; }
    int t_max = 1;
    while (t_max < iterations && smem_bytes((t_max + 1) * radius, radius) <= kSmemBudget) ++t_max;
    p.launches = ceil_div(iterations, t_max);
    p.per_launch = ceil_div(iterations, p.launches);
    return p;
}

// Iterations done by launch i of the plan (the first `iterations % launches` launches do one more).
NCIS_HD int launch_iterations(Plan p, int iterations, int i) {
    const int base = iterations / p.launches, extra = iterations % p.launches;
    return base + (i < extra ? 1 : 0);
}

// ---------------------------------------------------------------------------------------------------- I/O types
// float16 as raw IEEE bits: no cuda_fp16.h, so NVRTC needs no CUDA include path and the host emulator has its
// own exact conversion (round to nearest even), checked against PyTorch by the CPU tests.
struct half_t {
    unsigned short bits;
};

NCIS_HD float half_bits_to_float(unsigned short h) {
#if defined(__CUDA_ARCH__)
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
#else
    const unsigned int sign = (unsigned int)(h & 0x8000u) << 16;
    const unsigned int e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0) {  // zero or subnormal: m * 2^-24, exact in float
        const float v = (float)m * 5.9604644775390625e-8f;
        return sign ? -v : v;
    }
    const unsigned int bits = sign | (e == 31 ? (0x7f800000u | (m << 13)) : (((e + 112u) << 23) | (m << 13)));
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
#endif
}

NCIS_HD unsigned short float_to_half_bits(float f) {
#if defined(__CUDA_ARCH__)
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
#else
    unsigned int x;
    std::memcpy(&x, &f, sizeof x);
    const unsigned int sign = (x >> 16) & 0x8000u, mag = x & 0x7fffffffu;
    if (mag >= 0x7f800000u) return (unsigned short)(sign | (mag > 0x7f800000u ? 0x7e00u : 0x7c00u));
    if (mag >= 0x477ff000u) return (unsigned short)(sign | 0x7c00u);  // >= 65520 rounds to infinity
    if (mag < 0x33000001u) return (unsigned short)sign;              // <= 2^-25: rounds (ties to even) to 0
    const unsigned int e = mag >> 23, m = (mag & 0x7fffffu) | 0x800000u;
    unsigned int h, rem, halfway;
    if (e < 113) {  // half subnormal: m * 2^(e-150) / 2^-24 = m >> (126 - e), rounded
        const unsigned int shift = 126u - e;  // 14 .. 24 here
        h = m >> shift;
        rem = m & ((1u << shift) - 1u);
        halfway = 1u << (shift - 1u);
    } else {
        h = ((e - 112u) << 10) | ((mag & 0x7fffffu) >> 13);
        rem = mag & 0x1fffu;
        halfway = 0x1000u;
    }
    if (rem > halfway || (rem == halfway && (h & 1u))) ++h;  // a carry into the exponent is the right answer
    return (unsigned short)(sign | h);
#endif
}

NCIS_HD float load_f(const float* p) { return *p; }
NCIS_HD float load_f(const half_t* p) { return half_bits_to_float(p->bits); }
NCIS_HD void store_f(float* p, float v) { *p = v; }
NCIS_HD void store_f(half_t* p, float v) { p->bits = float_to_half_bits(v); }

// ------------------------------------------------------------------------------------------------------- taps
// Half of the symmetric kernel: tap(d) = g[r + d], d = 0..r, exactly as smoothing.gaussian_kernel1d computes the
// taps (float64 exp, normalised by the float64 sum over -r..r) and then cast to float, as smooth_iterative does.
NCIS_HD float tap(int d, int radius, double sigma) {
    double sum = 0.0;
    for (int j = -radius; j <= radius; ++j) {
        const double u = j / sigma;
        sum += exp(-0.5 * u * u);
    }
    const double u = d / sigma;
    return (float)(exp(-0.5 * u * u) / sum);
}

// --------------------------------------------------------------------------------------------- one block, one tile
template <typename IO>
struct Args {
    const IO* in;
    IO* out;
    int planes, h, w;   // planes = N * C
    int radius;         // r = kernel_size / 2
    double sigma;
    int iterations;     // T of this launch
};

struct Tile {
    long long plane_offset;  // plane * h * w
    int y0, x0;              // image coordinates of the tile's first output
    int halo, bh, bw, stride;
    float* buf0;             // loaded image, and the result of every W pass
    float* buf1;             // result of every H pass
    float* taps;             // r + 1 half-taps
};

NCIS_HD int tiles_x(int w) { return ceil_div(w, kTileW); }
NCIS_HD int tiles_y(int h) { return ceil_div(h, kTileH); }
NCIS_HD long long num_tiles(int planes, int h, int w) { return (long long)planes * tiles_y(h) * tiles_x(w); }

// Tile number b (x fastest, then y, then plane: neighbouring blocks share halos in L2) laid over `smem`.
template <typename IO>
NCIS_HD Tile make_tile(const Args<IO>& a, long long b, float* smem) {
    Tile t;
    const int tx = tiles_x(a.w), ty = tiles_y(a.h);
    const long long per_plane = (long long)tx * ty;
    const long long plane = b / per_plane;
    const int rest = (int)(b - plane * per_plane);
    t.plane_offset = plane * ((long long)a.h * a.w);
    t.y0 = (rest / tx) * kTileH;
    t.x0 = (rest % tx) * kTileW;
    t.halo = a.iterations * a.radius;
    t.bh = buf_h(t.halo);
    t.bw = buf_w(t.halo);
    t.stride = buf_stride(t.halo);
    t.buf0 = smem;
    t.buf1 = smem + t.bh * t.stride;
    t.taps = t.buf1 + t.bh * t.stride;
    return t;
}

// Phases: 0 load (+ taps), 1 .. 2T the passes (odd: along H, even: along W), 2T + 1 store. Every thread of the
// block runs every phase; a barrier separates phases (the kernel's __syncthreads, the emulator's loop order).
NCIS_HD int num_phases(int iterations) { return 2 * iterations + 2; }

// The buffer region pass `phase` writes: rows [r0, r1) x cols [c0, c1). Pass p of iteration it = (p + 1) / 2
// shrinks its own axis by it * r per side; an H pass keeps the columns the following W pass still reads.
struct Region {
    int r0, r1, c0, c1;
};
NCIS_HD Region pass_region(const Tile& t, int radius, int phase) {
    const int it = (phase + 1) / 2;
    const int rows = it * radius, cols = (phase & 1) ? (it - 1) * radius : it * radius;
    return Region{rows, t.bh - rows, cols, t.bw - cols};
}

// STRIP outputs along one axis (`step` 1: along a row; `stride`: down a column) from the window s[-r .. STRIP-1+r].
// The register arrays are indexed only by unrolled constants; with RC > 0 the radius loop unrolls too and the
// window shifts become register renames.
template <int RC>
NCIS_HD void strip(const float* s, float* d, int step, const float* taps, int radius, int skip) {
    const int r = RC > 0 ? RC : radius;
    float lo[kStrip], hi[kStrip], acc[kStrip];
    const float g0 = taps[0];
#pragma unroll
    for (int v = 0; v < kStrip; ++v) {
        const float c = s[v * step];
        lo[v] = c;
        hi[v] = c;
        acc[v] = g0 * c;
    }
#pragma unroll
    for (int k = 1; k <= r; ++k) {
        // lo[v] = s[(v - k) * step], hi[v] = s[(v + k) * step]: each step reads two new values
#pragma unroll
        for (int v = kStrip - 1; v > 0; --v) lo[v] = lo[v - 1];
        lo[0] = s[-k * step];
#pragma unroll
        for (int v = 0; v < kStrip - 1; ++v) hi[v] = hi[v + 1];
        hi[kStrip - 1] = s[(kStrip - 1 + k) * step];
        const float g = taps[k];
#pragma unroll
        for (int v = 0; v < kStrip; ++v) acc[v] += g * (lo[v] + hi[v]);  // pairs: bitwise mirror-symmetric
    }
#pragma unroll
    for (int v = 0; v < kStrip; ++v)
        if (v >= skip) d[v * step] = acc[v];
}

template <typename IO, int RC>
NCIS_HD void phase(const Args<IO>& a, const Tile& t, int ph, int tid, int nthreads) {
    const int r = a.radius;
    if (ph == 0) {  // stage tile + halo from the infinitely reflected image; threads 0..r also make the taps
        if (tid <= r) t.taps[tid] = tap(tid, r, a.sigma);
        const int n = t.bh * t.bw;
        for (int i = tid; i < n; i += nthreads) {
            const int by = i / t.bw, bx = i - (i / t.bw) * t.bw;
            const int gy = reflect(t.y0 - t.halo + by, a.h), gx = reflect(t.x0 - t.halo + bx, a.w);
            t.buf0[by * t.stride + bx] = load_f(a.in + t.plane_offset + (long long)gy * a.w + gx);
        }
        return;
    }
    if (ph == num_phases(a.iterations) - 1) {  // write the tile (the part inside the image)
        for (int i = tid; i < kTileH * kTileW; i += nthreads) {
            const int oy = i / kTileW, ox = i % kTileW;
            const int gy = t.y0 + oy, gx = t.x0 + ox;
            if (gy < a.h && gx < a.w)
                store_f(a.out + t.plane_offset + (long long)gy * a.w + gx,
                        t.buf0[(t.halo + oy) * t.stride + t.halo + ox]);
        }
        return;
    }
    const Region g = pass_region(t, r, ph);
    const int nrows = g.r1 - g.r0, ncols = g.c1 - g.c0;
    if (ph & 1) {  // along H: buf0 -> buf1; item = (strip of rows, column), neighbouring threads take columns
        const int items = ceil_div(nrows, kStrip) * ncols;
        for (int i = tid; i < items; i += nthreads) {
            const int col = g.c0 + i % ncols, start = g.r0 + (i / ncols) * kStrip;
            const int first = min_i(start, g.r1 - kStrip);  // the last strip slides back inside the region ...
            const int at = first * t.stride + col;
            strip<RC>(t.buf0 + at, t.buf1 + at, t.stride, t.taps, r, start - first);  // ... and skips the overlap
        }
    } else {  // along W: buf1 -> buf0; item = (strip of columns, row), neighbouring threads take rows (odd stride)
        const int items = ceil_div(ncols, kStrip) * nrows;
        for (int i = tid; i < items; i += nthreads) {
            const int row = g.r0 + i % nrows, start = g.c0 + (i / nrows) * kStrip;
            const int first = min_i(start, g.c1 - kStrip);
            const int at = row * t.stride + first;
            strip<RC>(t.buf1 + at, t.buf0 + at, 1, t.taps, r, start - first);
        }
    }
}

}  // namespace ncis_gs

#endif  // NCIS_GAUSSIAN_SMOOTH_CUH
