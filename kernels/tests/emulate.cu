// CPU emulation of the one-launch Gaussian smoothing kernel: the tile algorithm of gaussian_smooth.cuh, run by this
// host program block by block, phase by phase, thread by thread, exactly as gaussian_smooth.cu's kernels run it on
// a GPU (the same `ncis_gs::phase` function, the same launch plan, the same radius specialisations). A barrier is
// the end of a phase's loop over all threads. Built by nvcc as host code; no GPU involved:
//
//   nvcc -std=c++17 -O2 -I ncis_deploy/csrc kernels/tests/emulate.cu -o emulate
//
//   emulate run IN OUT N C H W KERNEL_SIZE SIGMA ITERATIONS [--half] [--reverse] [--generic] [--check-reflection]
//       IN: N*C*H*W float32 (raw, native byte order); OUT: the result as float32. --half: float16 I/O (input
//       rounded to half here, output written back as float32). --reverse: threads in reverse order (a result that
//       depends on the order is a race). --generic: the run-time-radius code path even for radius 1..3.
//       --check-reflection: after every pass, compare every out-of-image buffer value with the in-image value at
//       its reflected index (the reference's per-iteration re-padding) bit for bit.
//       Prints one JSON line of counters.
//   emulate plan KERNEL_SIZE ITERATIONS       the launch plan as JSON (kernels.py must agree with it)
//   emulate half IN OUT                       float32 -> float16 -> float32 with the host conversions
//
// Shared memory and the output start poisoned with NaN: a value read before it is written, or an output never
// written, shows up as NaN in the result.
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "gaussian_smooth.cuh"

using ncis_gs::half_t;

namespace {

struct Options {
    bool half = false, reverse = false, generic = false, check_reflection = false;
};

struct Counters {
    long long blocks = 0, reflection_checks = 0, reflection_mismatches = 0;
};

bool read_floats(const char* path, std::vector<float>& v) {
    FILE* f = std::fopen(path, "rb");
    if (!f) return false;
    const size_t got = std::fread(v.data(), sizeof(float), v.size(), f);
    const bool extra = std::fgetc(f) != EOF;
    std::fclose(f);
    return got == v.size() && !extra;
}

bool write_floats(const char* path, const std::vector<float>& v) {
    FILE* f = std::fopen(path, "wb");
    if (!f) return false;
    const size_t put = std::fwrite(v.data(), sizeof(float), v.size(), f);
    return std::fclose(f) == 0 && put == v.size();
}

float to_float(float v) { return v; }
float to_float(half_t v) { return ncis_gs::half_bits_to_float(v.bits); }
void from_float(float v, float* p) { *p = v; }
void from_float(float v, half_t* p) { p->bits = ncis_gs::float_to_half_bits(v); }
template <typename IO> IO poison();
template <> float poison<float>() { return std::numeric_limits<float>::quiet_NaN(); }
template <> half_t poison<half_t>() { return half_t{0x7e00}; }

// Every out-of-image value of `buf` in region g vs the in-image value at its reflected index, when that is in g too.
template <typename IO>
void check_reflection(const ncis_gs::Args<IO>& a, const ncis_gs::Tile& t, const float* buf, ncis_gs::Region g,
                      Counters& c) {
    const int oy = t.y0 - t.halo, ox = t.x0 - t.halo;
    for (int by = g.r0; by < g.r1; ++by)
        for (int bx = g.c0; bx < g.c1; ++bx) {
            const int gy = oy + by, gx = ox + bx;
            const int sy = ncis_gs::reflect(gy, a.h) - oy, sx = ncis_gs::reflect(gx, a.w) - ox;
            if ((sy == by && sx == bx) || sy < g.r0 || sy >= g.r1 || sx < g.c0 || sx >= g.c1) continue;
            ++c.reflection_checks;
            if (std::memcmp(&buf[by * t.stride + bx], &buf[sy * t.stride + sx], sizeof(float)) != 0)
                ++c.reflection_mismatches;
        }
}

// One launch: every tile of the grid in turn, each through all phases with every thread (the kernel's run_tiles).
template <typename IO, int RC>
void launch(const ncis_gs::Args<IO>& a, const Options& o, Counters& c) {
    const long long tiles = ncis_gs::num_tiles(a.planes, a.h, a.w);
    const int halo = a.iterations * a.radius;
    std::vector<float> smem((size_t)ncis_gs::smem_bytes(halo, a.radius) / sizeof(float));
    const int threads = ncis_gs::kThreads, phases = ncis_gs::num_phases(a.iterations);
    for (long long b = 0; b < tiles; ++b) {
        std::fill(smem.begin(), smem.end(), std::numeric_limits<float>::quiet_NaN());
        const ncis_gs::Tile t = ncis_gs::make_tile(a, b, smem.data());
        for (int ph = 0; ph < phases; ++ph) {
            for (int k = 0; k < threads; ++k) ncis_gs::phase<IO, RC>(a, t, ph, o.reverse ? threads - 1 - k : k, threads);
            if (o.check_reflection && ph > 0 && ph < phases - 1)
                check_reflection(a, t, (ph & 1) ? t.buf1 : t.buf0, ncis_gs::pass_region(t, a.radius, ph), c);
        }
        ++c.blocks;
    }
}

template <typename IO>
void launch_dispatch(const ncis_gs::Args<IO>& a, const Options& o, Counters& c) {
    switch (o.generic ? 0 : a.radius) {  // the same specialisations as gaussian_smooth.cu's kernel_for()
        case 1: launch<IO, 1>(a, o, c); break;
        case 2: launch<IO, 2>(a, o, c); break;
        case 3: launch<IO, 3>(a, o, c); break;
        default: launch<IO, 0>(a, o, c); break;
    }
}

// The whole plan, as ncis_gaussian_smooth runs it: launches alternate between `out` and a workspace.
template <typename IO>
int run(const std::vector<float>& input, std::vector<float>& output, int planes, int h, int w, int kernel_size,
        double sigma, int iterations, const Options& o) {
    const size_t n = input.size();
    std::vector<IO> in(n), out(n, poison<IO>()), work(n, poison<IO>());
    for (size_t i = 0; i < n; ++i) from_float(input[i], &in[i]);
    const int radius = kernel_size / 2;
    const ncis_gs::Plan p = ncis_gs::plan(radius, iterations);
    if (p.launches < 0) {
        std::fprintf(stderr, "kernel_size %d does not fit (radius <= %d)\n", kernel_size, ncis_gs::kMaxRadius);
        return 2;
    }
    Counters c;
    if (p.launches == 0) out = in;
    const IO* src = in.data();
    for (int i = 0; i < p.launches; ++i) {
        IO* dst = ((p.launches - 1 - i) % 2 == 0) ? out.data() : work.data();
        const ncis_gs::Args<IO> a{src, dst, planes, h, w, radius, sigma, ncis_gs::launch_iterations(p, iterations, i)};
        launch_dispatch(a, o, c);
        src = dst;
    }
    long long unwritten = 0;
    for (size_t i = 0; i < n; ++i) {
        output[i] = to_float(out[i]);
        if (output[i] != output[i]) ++unwritten;
    }
    std::printf("{\"launches\": %d, \"blocks\": %lld, \"reflection_checks\": %lld, \"reflection_mismatches\": %lld, "
                "\"nan_outputs\": %lld}\n",
                p.launches, c.blocks, c.reflection_checks, c.reflection_mismatches, unwritten);
    return 0;
}

int usage() {
    std::fprintf(stderr,
                 "usage: emulate run IN OUT N C H W KERNEL_SIZE SIGMA ITERATIONS [--half] [--reverse] [--generic] "
                 "[--check-reflection]\n       emulate plan KERNEL_SIZE ITERATIONS\n       emulate half IN OUT\n");
    return 2;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 2) return usage();
    const std::string cmd = argv[1];
    if (cmd == "plan" && argc == 4) {
        const int k = std::atoi(argv[2]), iterations = std::atoi(argv[3]), r = k / 2;
        const ncis_gs::Plan p = ncis_gs::plan(r, iterations);
        std::printf("{\"launches\": %d, \"iterations\": [", p.launches);
        for (int i = 0; i < p.launches; ++i)
            std::printf("%s%d", i ? ", " : "", ncis_gs::launch_iterations(p, iterations, i));
        std::printf("], \"smem_bytes\": [");
        for (int i = 0; i < p.launches; ++i)
            std::printf("%s%d", i ? ", " : "", ncis_gs::smem_bytes(ncis_gs::launch_iterations(p, iterations, i) * r, r));
        std::printf("]}\n");
        return 0;
    }
    if (cmd == "half" && argc == 4) {
        FILE* f = std::fopen(argv[2], "rb");
        if (!f) return 2;
        std::vector<float> v;
        float x;
        while (std::fread(&x, sizeof x, 1, f) == 1) v.push_back(ncis_gs::half_bits_to_float(ncis_gs::float_to_half_bits(x)));
        std::fclose(f);
        return write_floats(argv[3], v) ? 0 : 2;
    }
    if (cmd != "run" || argc < 11) return usage();
    Options o;
    for (int i = 11; i < argc; ++i) {
        const std::string flag = argv[i];
        if (flag == "--half") o.half = true;
        else if (flag == "--reverse") o.reverse = true;
        else if (flag == "--generic") o.generic = true;
        else if (flag == "--check-reflection") o.check_reflection = true;
        else return usage();
    }
    const long long n = std::atoll(argv[4]), ch = std::atoll(argv[5]);
    const int h = std::atoi(argv[6]), w = std::atoi(argv[7]), k = std::atoi(argv[8]), iterations = std::atoi(argv[10]);
    const double sigma = std::atof(argv[9]);
    if (n < 0 || ch < 0 || h < 2 || w < 2 || k < 1 || k % 2 == 0 || !(sigma > 0) || iterations < 0) {
        std::fprintf(stderr, "bad arguments (H, W >= 2; odd kernel_size; sigma > 0; iterations >= 0)\n");
        return 2;
    }
    std::vector<float> input((size_t)(n * ch * h * w)), output(input.size());
    if (!read_floats(argv[2], input)) {
        std::fprintf(stderr, "cannot read %zu float32 values from %s\n", input.size(), argv[2]);
        return 2;
    }
    const int planes = (int)(n * ch);
    const int rc = o.half ? run<half_t>(input, output, planes, h, w, k, sigma, iterations, o)
                          : run<float>(input, output, planes, h, w, k, sigma, iterations, o);
    if (rc != 0) return rc;
    return write_floats(argv[3], output) ? 0 : 2;
}
