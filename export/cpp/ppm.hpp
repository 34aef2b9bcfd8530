// Header-only reader/writer for binary Netpbm images: PGM (P5, grey) and PPM (P6, RGB), 8 or 16 bit, plus the
// conversions to and from the purifier's input layout (float32 NCHW in [0, 1]). No dependencies beyond the C++17
// standard library, so the example builds anywhere TensorRT does. Tested on the CPU by tests/test_kernels.py
// (export/cpp/tests/ppm_roundtrip.cpp).
#ifndef NCIS_PPM_HPP
#define NCIS_PPM_HPP

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

namespace ppm {

struct Image {
    int width = 0, height = 0, channels = 0;  // channels: 1 (P5) or 3 (P6)
    int maxval = 255;                         // 1..65535; > 255 means two bytes per sample, big-endian
    std::vector<uint16_t> data;               // interleaved: (y * width + x) * channels + c
};

namespace detail {
// Next header integer, skipping whitespace and '#' comments (which run to the end of the line).
inline bool header_int(std::istream& in, long& value) {
    int c = in.get();
    while (c != EOF) {
        if (c == '#') {
            while (c != EOF && c != '\n' && c != '\r') c = in.get();
        } else if (!std::isspace(c)) {
            break;
        }
        c = in.get();
    }
    if (c == EOF || !std::isdigit(c)) return false;
    value = 0;
    while (c != EOF && std::isdigit(c)) {
        value = value * 10 + (c - '0');
        if (value > 1L << 30) return false;
        c = in.get();
    }
    // exactly one whitespace character ends the header token (before maxval's binary data this matters)
    return c != EOF && std::isspace(c);
}
}  // namespace detail

inline bool read(const std::string& path, Image& img, std::string& error) {
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        error = "cannot open " + path;
        return false;
    }
    char magic[2] = {0, 0};
    in.read(magic, 2);
    if (!in || magic[0] != 'P' || (magic[1] != '5' && magic[1] != '6')) {
        error = path + " is not a binary PGM/PPM (P5/P6) file";
        return false;
    }
    long w = 0, h = 0, maxval = 0;
    if (!detail::header_int(in, w) || !detail::header_int(in, h) || !detail::header_int(in, maxval) || w < 1 ||
        h < 1 || maxval < 1 || maxval > 65535) {
        error = path + ": bad PGM/PPM header (width, height, maxval 1..65535)";
        return false;
    }
    img.width = static_cast<int>(w);
    img.height = static_cast<int>(h);
    img.channels = magic[1] == '6' ? 3 : 1;
    img.maxval = static_cast<int>(maxval);
    const size_t n = static_cast<size_t>(w) * static_cast<size_t>(h) * static_cast<size_t>(img.channels);
    const size_t bytes_per = maxval > 255 ? 2 : 1;
    std::vector<unsigned char> raw(n * bytes_per);
    in.read(reinterpret_cast<char*>(raw.data()), static_cast<std::streamsize>(raw.size()));
    if (static_cast<size_t>(in.gcount()) != raw.size()) {
        error = path + ": truncated pixel data";
        return false;
    }
    img.data.resize(n);
    for (size_t i = 0; i < n; ++i) {
        const unsigned v = bytes_per == 2 ? (raw[2 * i] << 8) | raw[2 * i + 1] : raw[i];
        if (v > static_cast<unsigned>(maxval)) {
            error = path + ": a sample exceeds maxval";
            return false;
        }
        img.data[i] = static_cast<uint16_t>(v);
    }
    return true;
}

inline bool write(const std::string& path, const Image& img, std::string& error) {
    if ((img.channels != 1 && img.channels != 3) || img.width < 1 || img.height < 1 || img.maxval < 1 ||
        img.maxval > 65535 || img.data.size() != static_cast<size_t>(img.width) * img.height * img.channels) {
        error = "invalid image for " + path;
        return false;
    }
    std::ofstream out(path, std::ios::binary);
    if (!out) {
        error = "cannot write " + path;
        return false;
    }
    out << (img.channels == 3 ? "P6" : "P5") << "\n" << img.width << " " << img.height << "\n" << img.maxval << "\n";
    std::vector<unsigned char> raw;
    raw.reserve(img.data.size() * 2);
    for (uint16_t v : img.data) {
        if (img.maxval > 255) raw.push_back(static_cast<unsigned char>(v >> 8));
        raw.push_back(static_cast<unsigned char>(v & 0xff));
    }
    out.write(reinterpret_cast<const char*>(raw.data()), static_cast<std::streamsize>(raw.size()));
    if (!out) {
        error = "write error on " + path;
        return false;
    }
    return true;
}

// Image -> planar float [3, H, W] in [0, 1] (grey is replicated to three channels, as the purifier wants RGB).
inline std::vector<float> to_chw(const Image& img) {
    const size_t hw = static_cast<size_t>(img.width) * img.height;
    std::vector<float> chw(3 * hw);
    for (size_t p = 0; p < hw; ++p)
        for (int c = 0; c < 3; ++c)
            chw[c * hw + p] = static_cast<float>(img.data[p * img.channels + (img.channels == 3 ? c : 0)]) / img.maxval;
    return chw;
}

// Planar float [3, H, W] -> image with `channels` (1: the mean of the three) and `maxval`, clamped and rounded.
inline Image from_chw(const std::vector<float>& chw, int width, int height, int channels, int maxval) {
    Image img;
    img.width = width;
    img.height = height;
    img.channels = channels;
    img.maxval = maxval;
    const size_t hw = static_cast<size_t>(width) * height;
    img.data.resize(hw * channels);
    auto quantise = [maxval](float v) {
        const float c = std::min(1.0f, std::max(0.0f, v));  // NaN would compare false: clamped to 0 by max()
        return static_cast<uint16_t>(std::lround(c * maxval));
    };
    for (size_t p = 0; p < hw; ++p) {
        if (channels == 3) {
            for (int c = 0; c < 3; ++c) img.data[p * 3 + c] = quantise(chw[c * hw + p]);
        } else {
            img.data[p] = quantise((chw[p] + chw[hw + p] + chw[2 * hw + p]) / 3.0f);
        }
    }
    return img;
}

}  // namespace ppm

#endif  // NCIS_PPM_HPP
