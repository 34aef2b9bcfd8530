// TensorRT plugin NcisGaussianSmooth: see NcisGaussianSmoothPlugin.h. The CUDA work is one call to the launcher of
// ncis_deploy/csrc/gaussian_smooth.cu (C API in gaussian_smooth.h), on TensorRT's stream.
//
// Shared-library entry points for IPluginRegistry::loadLibrary() / trtexec --dynamicPlugins / the engine's
// serialised plugin libraries (TensorRT 10): getCreators() lists the IPluginCreatorV3One creators, setLoggerFinder()
// gives the library TensorRT's logger. The creator is not registered statically (no REGISTER_TENSORRT_PLUGIN), so
// loading the library twice cannot register it twice, and the library needs no link against libnvinfer.
#include "NcisGaussianSmoothPlugin.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <new>
#include <sstream>

#include "gaussian_smooth.h"

using namespace nvinfer1;

namespace {

ILoggerFinder* gLoggerFinder{nullptr};

void logError(std::string const& msg) noexcept {
    std::string const line = std::string(ncis::kPluginName) + ": " + msg;
    ILogger* logger = gLoggerFinder != nullptr ? gLoggerFinder->findLogger() : nullptr;
    if (logger != nullptr)
        logger->log(ILogger::Severity::kERROR, line.c_str());
    else
        std::fprintf(stderr, "[E] %s\n", line.c_str());
}

// One numeric field of any integer/float width as double (the ONNX parser's choice of width is not ours).
bool readNumber(PluginField const& f, double& out) {
    if (f.data == nullptr || f.length < 1) return false;
    switch (f.type) {
        case PluginFieldType::kINT8: out = *static_cast<int8_t const*>(f.data); return true;
        case PluginFieldType::kINT16: out = *static_cast<int16_t const*>(f.data); return true;
        case PluginFieldType::kINT32: out = *static_cast<int32_t const*>(f.data); return true;
        case PluginFieldType::kINT64: out = static_cast<double>(*static_cast<int64_t const*>(f.data)); return true;
        case PluginFieldType::kFLOAT32: out = *static_cast<float const*>(f.data); return true;
        case PluginFieldType::kFLOAT64: out = *static_cast<double const*>(f.data); return true;
        default: return false;
    }
}

constexpr int32_t kMaxKernelSize = 31;  // gaussian_smooth.cuh kMaxRadius = 15

}  // namespace

namespace ncis {

bool parseParams(PluginFieldCollection const* fc, GaussianSmoothParams& params, std::string& error) {
    bool seen[3] = {false, false, false};
    double values[3] = {0.0, 0.0, 0.0};
    char const* names[3] = {"kernel_size", "sigma", "iterations"};
    for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i) {
        PluginField const& f = fc->fields[i];
        for (int k = 0; k < 3; ++k) {
            if (f.name == nullptr || std::strcmp(f.name, names[k]) != 0) continue;
            if (!readNumber(f, values[k])) {
                error = std::string("attribute '") + names[k] + "' is not a number";
                return false;
            }
            seen[k] = true;
        }
    }
    for (int k = 0; k < 3; ++k)
        if (!seen[k]) {
            error = std::string("attribute '") + names[k] + "' is missing";
            return false;
        }
    double const k = values[0], sigma = values[1], t = values[2];
    if (k != std::floor(k) || k < 1 || k > kMaxKernelSize || static_cast<int64_t>(k) % 2 == 0) {
        error = "kernel_size must be an odd integer in [1, 31]";
        return false;
    }
    if (!(sigma > 0.0) || !std::isfinite(sigma)) {
        error = "sigma must be a finite number > 0";
        return false;
    }
    if (t != std::floor(t) || t < 0 || t > 1e6) {
        error = "iterations must be an integer >= 0";
        return false;
    }
    params.kernelSize = static_cast<int32_t>(k);
    params.sigma = sigma;
    params.iterations = static_cast<int32_t>(t);
    return true;
}

// ------------------------------------------------------------------------------------------------------ plugin
GaussianSmoothPlugin::GaussianSmoothPlugin(GaussianSmoothParams const& params) : mParams(params) {
    std::ostringstream id;
    id.precision(17);
    id << "k" << mParams.kernelSize << "_s" << mParams.sigma << "_t" << mParams.iterations;
    mId = id.str();
}

IPluginCapability* GaussianSmoothPlugin::getCapabilityInterface(PluginCapabilityType type) noexcept {
    switch (type) {
        case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
        case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
        case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
    }
    return nullptr;
}

IPluginV3* GaussianSmoothPlugin::clone() noexcept {
    try {
        return new GaussianSmoothPlugin(mParams);
    } catch (std::exception const& e) {
        logError(std::string("clone failed: ") + e.what());
        return nullptr;
    }
}

char const* GaussianSmoothPlugin::getPluginName() const noexcept { return kPluginName; }
char const* GaussianSmoothPlugin::getPluginVersion() const noexcept { return kPluginVersion; }
char const* GaussianSmoothPlugin::getPluginNamespace() const noexcept { return kPluginNamespace; }

int32_t GaussianSmoothPlugin::configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs,
                                              DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept {
    if (nbInputs != 1 || nbOutputs != 1 || in[0].desc.dims.nbDims != 4) {
        logError("expects one [N, C, H, W] input and one output");
        return -1;
    }
    (void)out;
    // the profile's smallest H, W must be reflectable (a dynamic dim reports its lower bound in `min`)
    if (in[0].min.nbDims == 4 && (in[0].min.d[2] == 1 || in[0].min.d[3] == 1)) {
        logError("H and W must be >= 2 in every optimization profile (reflection of one pixel is undefined)");
        return -1;
    }
    return 0;
}

int32_t GaussianSmoothPlugin::getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes,
                                                 int32_t nbInputs) const noexcept {
    if (nbInputs != 1 || nbOutputs != 1) return -1;
    outputTypes[0] = inputTypes[0];
    return 0;
}

int32_t GaussianSmoothPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* shapeInputs,
                                              int32_t nbShapeInputs, DimsExprs* outputs, int32_t nbOutputs,
                                              IExprBuilder& exprBuilder) noexcept {
    (void)shapeInputs;
    (void)nbShapeInputs;
    (void)exprBuilder;
    if (nbInputs != 1 || nbOutputs != 1 || inputs[0].nbDims != 4) return -1;
    outputs[0] = inputs[0];  // smoothing keeps the shape
    return 0;
}

bool GaussianSmoothPlugin::supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* inOut,
                                                     int32_t nbInputs, int32_t nbOutputs) noexcept {
    if (nbInputs != 1 || nbOutputs != 1 || pos < 0 || pos > 1) return false;
    PluginTensorDesc const& desc = inOut[pos].desc;
    if (desc.format != TensorFormat::kLINEAR) return false;
    if (pos == 0) return desc.type == DataType::kFLOAT || desc.type == DataType::kHALF;
    return desc.type == inOut[0].desc.type;  // the output has the input's type
}

int32_t GaussianSmoothPlugin::getNbOutputs() const noexcept { return 1; }

size_t GaussianSmoothPlugin::getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
                                              DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept {
    (void)outputs;
    (void)nbOutputs;
    if (nbInputs != 1 || inputs[0].max.nbDims != 4) return 0;
    Dims const& d = inputs[0].max;  // enough for every shape of the profile: the need grows with N*C*H*W
    int const dtype = inputs[0].desc.type == DataType::kHALF ? NCIS_GS_FLOAT16 : NCIS_GS_FLOAT32;
    return ncis_gaussian_smooth_workspace(dtype, static_cast<long long>(d.d[0] * d.d[1]), static_cast<int>(d.d[2]),
                                          static_cast<int>(d.d[3]), mParams.kernelSize, mParams.iterations);
}

char const* GaussianSmoothPlugin::getTimingCacheID() noexcept { return mId.c_str(); }
char const* GaussianSmoothPlugin::getMetadataString() noexcept { return mId.c_str(); }

int32_t GaussianSmoothPlugin::onShapeChange(PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out,
                                            int32_t nbOutputs) noexcept {
    (void)out;
    if (nbInputs != 1 || nbOutputs != 1 || in[0].dims.nbDims != 4 || in[0].dims.d[2] < 2 || in[0].dims.d[3] < 2) {
        logError("needs a [N, C, H, W] input with H, W >= 2");
        return -1;
    }
    return 0;
}

int32_t GaussianSmoothPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc,
                                      void const* const* inputs, void* const* outputs, void* workspace,
                                      cudaStream_t stream) noexcept {
    (void)outputDesc;
    Dims const& d = inputDesc[0].dims;
    int const dtype = inputDesc[0].type == DataType::kHALF ? NCIS_GS_FLOAT16 : NCIS_GS_FLOAT32;
    long long const planes = static_cast<long long>(d.d[0] * d.d[1]);
    int const h = static_cast<int>(d.d[2]), w = static_cast<int>(d.d[3]);
    // getWorkspaceSize() reserved this much (or more, for the profile's largest shape)
    size_t const need = ncis_gaussian_smooth_workspace(dtype, planes, h, w, mParams.kernelSize, mParams.iterations);
    int const status = ncis_gaussian_smooth(inputs[0], outputs[0], dtype, planes, h, w, mParams.kernelSize,
                                            mParams.sigma, mParams.iterations, workspace, need,
                                            reinterpret_cast<ncis_stream_t>(stream));
    if (status != NCIS_GS_OK) {
        logError(std::string("enqueue failed: ") + ncis_gaussian_smooth_status_string(status));
        return status;
    }
    return 0;
}

IPluginV3* GaussianSmoothPlugin::attachToContext(IPluginResourceContext* context) noexcept {
    (void)context;  // no per-context resources
    return clone();
}

PluginFieldCollection const* GaussianSmoothPlugin::getFieldsToSerialize() noexcept {
    // What the engine stores and hands back to createPlugin(..., kRUNTIME). sigma goes out as float64, so the
    // runtime plugin smooths with exactly the value the build used.
    mFields.clear();
    mFields.emplace_back("kernel_size", &mParams.kernelSize, PluginFieldType::kINT32, 1);
    mFields.emplace_back("sigma", &mParams.sigma, PluginFieldType::kFLOAT64, 1);
    mFields.emplace_back("iterations", &mParams.iterations, PluginFieldType::kINT32, 1);
    mFieldCollection.nbFields = static_cast<int32_t>(mFields.size());
    mFieldCollection.fields = mFields.data();
    return &mFieldCollection;
}

// ----------------------------------------------------------------------------------------------------- creator
GaussianSmoothPluginCreator::GaussianSmoothPluginCreator() {
    // The types the ONNX parser converts the node's attributes to: ONNX ints are int64 and floats float32.
    mFieldNames.emplace_back("kernel_size", nullptr, PluginFieldType::kINT32, 1);
    mFieldNames.emplace_back("sigma", nullptr, PluginFieldType::kFLOAT32, 1);
    mFieldNames.emplace_back("iterations", nullptr, PluginFieldType::kINT32, 1);
    mFieldCollection.nbFields = static_cast<int32_t>(mFieldNames.size());
    mFieldCollection.fields = mFieldNames.data();
}

char const* GaussianSmoothPluginCreator::getPluginName() const noexcept { return kPluginName; }
char const* GaussianSmoothPluginCreator::getPluginVersion() const noexcept { return kPluginVersion; }
char const* GaussianSmoothPluginCreator::getPluginNamespace() const noexcept { return kPluginNamespace; }
PluginFieldCollection const* GaussianSmoothPluginCreator::getFieldNames() noexcept { return &mFieldCollection; }

IPluginV3* GaussianSmoothPluginCreator::createPlugin(char const* name, PluginFieldCollection const* fc,
                                                     TensorRTPhase phase) noexcept {
    (void)phase;  // build and runtime take the same three fields
    GaussianSmoothParams params;
    std::string error;
    if (!parseParams(fc, params, error)) {
        logError(std::string("node '") + (name != nullptr ? name : "?") + "': " + error);
        return nullptr;
    }
    try {
        return new GaussianSmoothPlugin(params);
    } catch (std::exception const& e) {
        logError(std::string("createPlugin failed: ") + e.what());
        return nullptr;
    }
}

}  // namespace ncis

// ------------------------------------------------------------------------------------------- library entry points
#define NCIS_PLUGIN_EXPORT __attribute__((visibility("default")))

extern "C" NCIS_PLUGIN_EXPORT void setLoggerFinder(ILoggerFinder* finder) { gLoggerFinder = finder; }

extern "C" NCIS_PLUGIN_EXPORT IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) {
    static ncis::GaussianSmoothPluginCreator creator;
    static IPluginCreatorInterface* const creators[] = {&creator};
    nbCreators = 1;
    return creators;
}
