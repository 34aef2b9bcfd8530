// ppm.hpp on the CPU: read IN, convert to the purifier's float CHW layout and back, write OUT with IN's channels
// and maxval. A lossless round trip proves the reader, both conversions and the writer agree (tests/test_kernels.py
// feeds it Pillow-written files, 16-bit files with comments, and broken files).
//
//   ppm_roundtrip IN OUT      exit 0, or 1 with "error: ..." on stderr
#include <cstdio>
#include <string>

#include "ppm.hpp"

int main(int argc, char** argv) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: ppm_roundtrip IN OUT\n");
        return 2;
    }
    ppm::Image img;
    std::string error;
    if (!ppm::read(argv[1], img, error)) {
        std::fprintf(stderr, "error: %s\n", error.c_str());
        return 1;
    }
    const ppm::Image back = ppm::from_chw(ppm::to_chw(img), img.width, img.height, img.channels, img.maxval);
    if (!ppm::write(argv[2], back, error)) {
        std::fprintf(stderr, "error: %s\n", error.c_str());
        return 1;
    }
    std::printf("%dx%d channels=%d maxval=%d\n", img.width, img.height, img.channels, img.maxval);
    return 0;
}
