/* ncis-deploy: C API of the one-launch iterative Gaussian smoothing kernel (gaussian_smooth.cu).
 *
 * Plain C, no CUDA include: the TensorRT plugin and other host code compile against this header with any C++
 * compiler and link the object built from gaussian_smooth.cu. `ncis_stream_t` is layout-identical to
 * `cudaStream_t` / `CUstream` (all three are `struct CUstream_st*`), so a caller passes its stream unchanged.
 *
 * Semantics: exactly `ncis_deploy.model.smoothing.smooth_iterative` (reflect padding, separable Gaussian along H then
 * W, `iterations` times) on a contiguous NCHW tensor, computed in float whatever the I/O type.
 */
#ifndef NCIS_GAUSSIAN_SMOOTH_H
#define NCIS_GAUSSIAN_SMOOTH_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct CUstream_st* ncis_stream_t;

enum ncis_gs_dtype { NCIS_GS_FLOAT32 = 0, NCIS_GS_FLOAT16 = 1 };

/* Return codes: 0 success; > 0 a cudaError_t from a launch or copy; < 0 an argument problem below. */
enum ncis_gs_status {
    NCIS_GS_OK = 0,
    NCIS_GS_ERR_DTYPE = -1,          /* dtype is not one of ncis_gs_dtype */
    NCIS_GS_ERR_SHAPE = -2,          /* H or W < 2 (reflection of one pixel is undefined), or a size < 0 / too large */
    NCIS_GS_ERR_KERNEL_SIZE = -3,    /* kernel_size not odd, < 1, or its radius does not fit in shared memory */
    NCIS_GS_ERR_SIGMA = -4,          /* sigma not a finite number > 0 */
    NCIS_GS_ERR_ITERATIONS = -5,     /* iterations < 0 */
    NCIS_GS_ERR_WORKSPACE = -6,      /* the plan needs a workspace (see ncis_gaussian_smooth_workspace) */
    NCIS_GS_ERR_ALIASING = -7        /* in == out: the kernel reads neighbouring tiles' halos, it cannot run in place */
};

/* Bytes of scratch ncis_gaussian_smooth needs for this problem (0 for every T * radius that fits one launch). */
size_t ncis_gaussian_smooth_workspace(int dtype, long long planes, int height, int width, int kernel_size,
                                      int iterations);

/* out = `iterations` reflect-padded Gaussian smoothings of in. `planes` = N * C; in and out contiguous NCHW, not
 * overlapping. Everything is enqueued on `stream`; nothing synchronises. */
int ncis_gaussian_smooth(const void* in, void* out, int dtype, long long planes, int height, int width,
                         int kernel_size, double sigma, int iterations, void* workspace, size_t workspace_bytes,
                         ncis_stream_t stream);

/* A static, human-readable message for a status code (CUDA codes get the CUDA runtime's own text). */
const char* ncis_gaussian_smooth_status_string(int status);

#ifdef __cplusplus
}
#endif

#endif /* NCIS_GAUSSIAN_SMOOTH_H */
