// ncis-deploy: the one-launch iterative Gaussian smoothing kernels and their host launcher.
//
// The algorithm lives in gaussian_smooth.cuh (shared with the CPU emulator); this file only instantiates it as
// `extern "C"` kernels -- plain names that NVRTC/cuModuleGetFunction find without name mangling -- and, for C++
// callers (the TensorRT plugin, the C++ example), the launcher declared in gaussian_smooth.h. NVRTC compiles this
// same file for the Python binding; it sees __CUDACC_RTC__ and skips the host part, which needs the CUDA runtime.
//
// Kernel names: ncis_gs_<f32|f16>_r<R>, R = the radius the kernel is specialised for (1..3, i.e. 3/5/7 taps,
// fully unrolled) or 0 for any radius. Signature (all scalars, so every binding can pass them):
//   (const IO* in, IO* out, int planes, int height, int width, int radius, double sigma, int iterations)
// launched with kThreads threads, smem_bytes(iterations * radius, radius) bytes of dynamic shared memory and any
// grid size (blocks loop over the num_tiles() tiles; a grid of num_tiles() blocks is the natural choice).

#include "gaussian_smooth.cuh"

namespace ncis_gs {

template <typename IO, int RC>
__device__ __forceinline__ void run_tiles(const Args<IO>& a) {
    extern __shared__ float smem[];
    const long long tiles = num_tiles(a.planes, a.h, a.w);
    const int phases = num_phases(a.iterations);
    for (long long b = blockIdx.x; b < tiles; b += gridDim.x) {
        const Tile t = make_tile(a, b, smem);
        for (int ph = 0; ph < phases; ++ph) {
            phase<IO, RC>(a, t, ph, (int)threadIdx.x, (int)blockDim.x);
            __syncthreads();  // phase ph + 1 reads what every thread wrote in phase ph; the next tile reuses smem
        }
    }
}

}  // namespace ncis_gs

#define NCIS_GS_KERNEL(NAME, IO, RC)                                                                             \
    extern "C" __global__ void __launch_bounds__(ncis_gs::kThreads)                                            \
        NAME(const IO* __restrict__ in, IO* __restrict__ out, int planes, int h, int w, int radius, double sigma, \
             int iterations) {                                                                                  \
        ncis_gs::run_tiles<IO, RC>(ncis_gs::Args<IO>{in, out, planes, h, w, radius, sigma, iterations});       \
    }

NCIS_GS_KERNEL(ncis_gs_f32_r0, float, 0)
NCIS_GS_KERNEL(ncis_gs_f32_r1, float, 1)
NCIS_GS_KERNEL(ncis_gs_f32_r2, float, 2)
NCIS_GS_KERNEL(ncis_gs_f32_r3, float, 3)
NCIS_GS_KERNEL(ncis_gs_f16_r0, ncis_gs::half_t, 0)
NCIS_GS_KERNEL(ncis_gs_f16_r1, ncis_gs::half_t, 1)
NCIS_GS_KERNEL(ncis_gs_f16_r2, ncis_gs::half_t, 2)
NCIS_GS_KERNEL(ncis_gs_f16_r3, ncis_gs::half_t, 3)

#if !defined(__CUDACC_RTC__)
// ------------------------------------------------------------------------------------------------ host launcher
#include <cuda_runtime.h>

#include <climits>
#include <cmath>
#include <cstdint>

#include "gaussian_smooth.h"

namespace {

template <typename IO>
using KernelFn = void (*)(const IO*, IO*, int, int, int, int, double, int);

KernelFn<float> kernel_for(float*, int radius) {
    switch (radius) {
        case 1: return ncis_gs_f32_r1;
        case 2: return ncis_gs_f32_r2;
        case 3: return ncis_gs_f32_r3;
        default: return ncis_gs_f32_r0;
    }
}

KernelFn<ncis_gs::half_t> kernel_for(ncis_gs::half_t*, int radius) {
    switch (radius) {
        case 1: return ncis_gs_f16_r1;
        case 2: return ncis_gs_f16_r2;
        case 3: return ncis_gs_f16_r3;
        default: return ncis_gs_f16_r0;
    }
}

// The whole plan for one I/O type: launch after launch, alternating between `out` and the workspace so that the
// last launch writes `out` and no launch reads the buffer it writes.
template <typename IO>
int run(const IO* in, IO* out, IO* work, int planes, int h, int w, int radius, double sigma, int iterations,
        cudaStream_t stream) {
    const ncis_gs::Plan p = ncis_gs::plan(radius, iterations);
    const long long tiles = ncis_gs::num_tiles(planes, h, w);
    const unsigned grid = (unsigned)(tiles < INT_MAX ? tiles : INT_MAX);  // blocks loop over the rest
    const KernelFn<IO> kernel = kernel_for(static_cast<IO*>(nullptr), radius);
    const IO* src = in;
    for (int i = 0; i < p.launches; ++i) {
        IO* dst = ((p.launches - 1 - i) % 2 == 0) ? out : work;
        const int t = ncis_gs::launch_iterations(p, iterations, i);
        const size_t smem = (size_t)ncis_gs::smem_bytes(t * radius, radius);
        kernel<<<grid, ncis_gs::kThreads, smem, stream>>>(src, dst, planes, h, w, radius, sigma, t);
        const cudaError_t err = cudaGetLastError();
        if (err != cudaSuccess) return (int)err;
        src = dst;
    }
    return NCIS_GS_OK;
}

int validate(int dtype, long long planes, int h, int w, int kernel_size, int iterations) {
    if (dtype != NCIS_GS_FLOAT32 && dtype != NCIS_GS_FLOAT16) return NCIS_GS_ERR_DTYPE;
    if (h < 2 || w < 2 || planes < 0 || planes > INT_MAX) return NCIS_GS_ERR_SHAPE;
    if (kernel_size < 1 || kernel_size % 2 == 0) return NCIS_GS_ERR_KERNEL_SIZE;
    if (iterations < 0) return NCIS_GS_ERR_ITERATIONS;
    if (ncis_gs::plan(kernel_size / 2, iterations).launches < 0) return NCIS_GS_ERR_KERNEL_SIZE;
    return NCIS_GS_OK;
}

size_t element_size(int dtype) { return dtype == NCIS_GS_FLOAT16 ? 2 : 4; }

}  // namespace

extern "C" size_t ncis_gaussian_smooth_workspace(int dtype, long long planes, int height, int width, int kernel_size,
                                                 int iterations) {
    if (validate(dtype, planes, height, width, kernel_size, iterations) != NCIS_GS_OK) return 0;
    if (ncis_gs::plan(kernel_size / 2, iterations).launches <= 1) return 0;
    return (size_t)planes * (size_t)height * (size_t)width * element_size(dtype);
}

extern "C" int ncis_gaussian_smooth(const void* in, void* out, int dtype, long long planes, int height, int width,
                                    int kernel_size, double sigma, int iterations, void* workspace,
                                    size_t workspace_bytes, ncis_stream_t stream) {
    const int bad = validate(dtype, planes, height, width, kernel_size, iterations);
    if (bad != NCIS_GS_OK) return bad;
    if (!(sigma > 0.0) || !std::isfinite(sigma)) return NCIS_GS_ERR_SIGMA;
    const size_t bytes = (size_t)planes * (size_t)height * (size_t)width * element_size(dtype);
    if (bytes == 0) return NCIS_GS_OK;
    const cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
    const uintptr_t a = reinterpret_cast<uintptr_t>(in), b = reinterpret_cast<uintptr_t>(out);
    if (a < b + bytes && b < a + bytes) return iterations == 0 && a == b ? NCIS_GS_OK : NCIS_GS_ERR_ALIASING;
    const ncis_gs::Plan p = ncis_gs::plan(kernel_size / 2, iterations);
    if (p.launches == 0) return (int)cudaMemcpyAsync(out, in, bytes, cudaMemcpyDeviceToDevice, s);
    if (p.launches > 1 && (workspace == nullptr || workspace_bytes < bytes)) return NCIS_GS_ERR_WORKSPACE;
    const int r = kernel_size / 2, n = (int)planes;
    if (dtype == NCIS_GS_FLOAT32)
        return run(static_cast<const float*>(in), static_cast<float*>(out), static_cast<float*>(workspace), n,
                   height, width, r, sigma, iterations, s);
    return run(static_cast<const ncis_gs::half_t*>(in), static_cast<ncis_gs::half_t*>(out),
               static_cast<ncis_gs::half_t*>(workspace), n, height, width, r, sigma, iterations, s);
}

extern "C" const char* ncis_gaussian_smooth_status_string(int status) {
    switch (status) {
        case NCIS_GS_OK: return "success";
        case NCIS_GS_ERR_DTYPE: return "unsupported dtype (float32 or float16 only)";
        case NCIS_GS_ERR_SHAPE: return "height and width must be >= 2 and N*C must fit in int32";
        case NCIS_GS_ERR_KERNEL_SIZE: return "kernel_size must be odd, >= 1 and <= 31 (radius <= 15)";
        case NCIS_GS_ERR_SIGMA: return "sigma must be a finite number > 0";
        case NCIS_GS_ERR_ITERATIONS: return "iterations must be >= 0";
        case NCIS_GS_ERR_WORKSPACE: return "this iterations * radius needs a workspace of N*C*H*W elements";
        case NCIS_GS_ERR_ALIASING: return "in and out overlap; the kernel cannot run in place";
        default: return status > 0 ? cudaGetErrorString(static_cast<cudaError_t>(status)) : "unknown status";
    }
}
#endif  // !__CUDACC_RTC__
