// ncis_purify: purify one PPM/PGM image with an ncis-deploy TensorRT engine, from C++, without Python.
//
//   ncis_purify --engine purifier.engine --input photo.ppm --output clean.ppm
//               [--plugin-lib libncis_trt_plugins.so] [--allow-engine-host-code] [--device 0]
//
// --plugin-lib: the NcisGaussianSmooth plugin library, needed for engines exported with `--smoothing plugin`
// (not needed when the engine was built version-compatible with the library serialised into it; that case also
// needs --allow-engine-host-code). The engine's input is float32 [N, 3, H, W] in [0, 1]; a fixed-size engine only
// takes images of its size (export with --dynamic-hw for any size). Exit code 0 on success, 1 on any error.
//
// Written against the TensorRT 10 C++ API (IRuntime, ICudaEngine, IExecutionContext::enqueueV3); see README.md for
// what was and was not verified.
#include <NvInferRuntime.h>
#include <cuda_runtime_api.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "ppm.hpp"

namespace {

class Logger : public nvinfer1::ILogger {
public:
    void log(Severity severity, nvinfer1::AsciiChar const* msg) noexcept override {
        if (severity <= Severity::kWARNING)
            std::fprintf(stderr, "[TensorRT %s] %s\n", severity <= Severity::kERROR ? "error" : "warning", msg);
    }
};

struct Args {
    std::string engine, input, output, pluginLib;
    bool allowHostCode = false;
    int device = 0;
};

[[noreturn]] void fail(std::string const& msg) {
    std::fprintf(stderr, "error: %s\n", msg.c_str());
    std::exit(1);
}

void check(cudaError_t err, char const* what) {
    if (err != cudaSuccess) fail(std::string(what) + ": " + cudaGetErrorString(err));
}

Args parse(int argc, char** argv) {
    Args a;
    for (int i = 1; i < argc; ++i) {
        std::string const k = argv[i];
        auto value = [&]() -> std::string {
            if (i + 1 >= argc) fail(k + " needs a value");
            return argv[++i];
        };
        if (k == "--engine") a.engine = value();
        else if (k == "--input") a.input = value();
        else if (k == "--output") a.output = value();
        else if (k == "--plugin-lib") a.pluginLib = value();
        else if (k == "--allow-engine-host-code") a.allowHostCode = true;
        else if (k == "--device") a.device = std::atoi(value().c_str());
        else if (k == "-h" || k == "--help") {
            std::printf("usage: ncis_purify --engine E --input IN.ppm|pgm --output OUT.ppm|pgm "
                        "[--plugin-lib LIB.so] [--allow-engine-host-code] [--device N]\n");
            std::exit(0);
        } else fail("unknown argument " + k + " (see --help)");
    }
    if (a.engine.empty() || a.input.empty() || a.output.empty()) fail("--engine, --input and --output are required");
    return a;
}

std::vector<char> readFile(std::string const& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) fail("cannot open " + path);
    return std::vector<char>(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

// TensorRT 10 objects are released with delete.
template <typename T>
struct Deleter {
    void operator()(T* p) const noexcept { delete p; }
};
template <typename T>
using Ptr = std::unique_ptr<T, Deleter<T>>;

}  // namespace

int main(int argc, char** argv) {
    Args const args = parse(argc, argv);
    ppm::Image image;
    std::string error;
    if (!ppm::read(args.input, image, error)) fail(error);
    if (image.width < 2 || image.height < 2) fail("the image must be at least 2x2 pixels");

    check(cudaSetDevice(args.device), "cudaSetDevice");
    Logger logger;
    Ptr<nvinfer1::IRuntime> runtime{nvinfer1::createInferRuntime(logger)};
    if (!runtime) fail("cannot create the TensorRT runtime");
    if (!args.pluginLib.empty() && runtime->getPluginRegistry().loadLibrary(args.pluginLib.c_str()) == nullptr)
        fail("TensorRT could not load the plugin library " + args.pluginLib);
    if (args.allowHostCode) runtime->setEngineHostCodeAllowed(true);

    std::vector<char> const blob = readFile(args.engine);
    Ptr<nvinfer1::ICudaEngine> engine{runtime->deserializeCudaEngine(blob.data(), blob.size())};
    if (!engine)
        fail("cannot deserialize " + args.engine + " (built by another TensorRT version or GPU? an engine exported "
             "with --smoothing plugin needs --plugin-lib)");

    // The purifier has one input and one output, both float32 (an FP16 engine still has float32 I/O).
    std::string inputName, outputName;
    for (int32_t i = 0; i < engine->getNbIOTensors(); ++i) {
        char const* name = engine->getIOTensorName(i);
        if (engine->getTensorDataType(name) != nvinfer1::DataType::kFLOAT)
            fail(std::string("tensor ") + name + " is not float32; this is not an ncis-deploy purifier engine");
        (engine->getTensorIOMode(name) == nvinfer1::TensorIOMode::kINPUT ? inputName : outputName) = name;
    }
    if (inputName.empty() || outputName.empty()) fail("the engine needs one input and one output");

    nvinfer1::Dims const declared = engine->getTensorShape(inputName.c_str());
    if (declared.nbDims != 4 || declared.d[1] != 3) fail("the engine input is not [N, 3, H, W]");
    if ((declared.d[2] >= 0 && declared.d[2] != image.height) || (declared.d[3] >= 0 && declared.d[3] != image.width))
        fail("the engine takes " + std::to_string(declared.d[3]) + "x" + std::to_string(declared.d[2]) +
             " images, this one is " + std::to_string(image.width) + "x" + std::to_string(image.height) +
             "; resize it or export with --dynamic-hw");

    Ptr<nvinfer1::IExecutionContext> context{engine->createExecutionContext()};
    if (!context) fail("cannot create an execution context");
    nvinfer1::Dims shape{};
    shape.nbDims = 4;
    shape.d[0] = 1;
    shape.d[1] = 3;
    shape.d[2] = image.height;
    shape.d[3] = image.width;
    if (!context->setInputShape(inputName.c_str(), shape))
        fail("the engine's optimization profile does not cover batch 1 at " + std::to_string(image.width) + "x" +
             std::to_string(image.height));

    std::vector<float> const host = ppm::to_chw(image);
    std::vector<float> result(host.size());
    size_t const bytes = host.size() * sizeof(float);
    void* dIn = nullptr;
    void* dOut = nullptr;
    cudaStream_t stream = nullptr;
    check(cudaStreamCreate(&stream), "cudaStreamCreate");
    check(cudaMalloc(&dIn, bytes), "cudaMalloc");
    check(cudaMalloc(&dOut, bytes), "cudaMalloc");
    check(cudaMemcpyAsync(dIn, host.data(), bytes, cudaMemcpyHostToDevice, stream), "cudaMemcpyAsync H2D");
    if (!context->setTensorAddress(inputName.c_str(), dIn) || !context->setTensorAddress(outputName.c_str(), dOut))
        fail("setTensorAddress failed");
    if (!context->enqueueV3(stream)) fail("TensorRT could not run the engine (see the messages above)");
    check(cudaMemcpyAsync(result.data(), dOut, bytes, cudaMemcpyDeviceToHost, stream), "cudaMemcpyAsync D2H");
    check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
    check(cudaFree(dIn), "cudaFree");
    check(cudaFree(dOut), "cudaFree");
    check(cudaStreamDestroy(stream), "cudaStreamDestroy");

    bool const grey = args.output.size() > 4 && args.output.compare(args.output.size() - 4, 4, ".pgm") == 0;
    if (!ppm::write(args.output, ppm::from_chw(result, image.width, image.height, grey ? 1 : 3, image.maxval), error))
        fail(error);
    std::printf("purified %s (%dx%d) -> %s\n", args.input.c_str(), image.width, image.height, args.output.c_str());
    return 0;
}
