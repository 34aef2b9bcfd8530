// TensorRT plugin NcisGaussianSmooth (version "1", namespace "ncis"): T iterations of reflect-padded Gaussian
// smoothing in one launch, the kernel of ncis_deploy/csrc/gaussian_smooth.cu, as an IPluginV3 for TensorRT 10+.
//
// ONNX: `export --smoothing plugin` writes one node per GS stage, op_type "NcisGaussianSmooth", domain
// "trt.plugins", attributes kernel_size (int), sigma (float), iterations (int), plugin_version "1",
// plugin_namespace "ncis". TensorRT's ONNX parser hands the non-plugin_* attributes to createPlugin() as plugin
// fields, typed as getFieldNames() declares them; createPlugin() also accepts the other integer/float widths.
//
// One input, one output: [N, C, H, W], float32 or float16 (linear layout), H, W >= 2, same type out. Build and
// runtime interfaces are one object (the usual IPluginV3One pattern); the only state is the three attributes.
//
// Status: written against the documented TensorRT 10 C++ API; NOT compiled or run in this project's workplace
// (no TensorRT there). kernels/README.md lists what is verified where.
#ifndef NCIS_GAUSSIAN_SMOOTH_PLUGIN_H
#define NCIS_GAUSSIAN_SMOOTH_PLUGIN_H

#include <NvInferRuntime.h>

#include <cstdint>
#include <string>
#include <vector>

namespace ncis {

constexpr char const* kPluginName = "NcisGaussianSmooth";
constexpr char const* kPluginVersion = "1";
constexpr char const* kPluginNamespace = "ncis";

struct GaussianSmoothParams {
    int32_t kernelSize{3};
    double sigma{1.0};  // from a float32 ONNX attribute at build time; serialised as float64 so runtime == build
    int32_t iterations{1};
};

class GaussianSmoothPlugin final : public nvinfer1::IPluginV3,
                                   public nvinfer1::IPluginV3OneCore,
                                   public nvinfer1::IPluginV3OneBuild,
                                   public nvinfer1::IPluginV3OneRuntime {
public:
    explicit GaussianSmoothPlugin(GaussianSmoothParams const& params);
    ~GaussianSmoothPlugin() override = default;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    // IPluginV3OneBuild
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
                            nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
                               nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
                            int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
                            nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                   int32_t nbOutputs) noexcept override;
    int32_t getNbOutputs() const noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
                            nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;
    char const* getTimingCacheID() noexcept override;
    char const* getMetadataString() noexcept override;

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
                          int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
                    void const* const* inputs, void* const* outputs, void* workspace,
                    cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

private:
    GaussianSmoothParams mParams;
    std::string mId;  // "k<kernel_size>_s<sigma>_t<iterations>": timing-cache ID and metadata
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

class GaussianSmoothPluginCreator final : public nvinfer1::IPluginCreatorV3One {
public:
    GaussianSmoothPluginCreator();
    ~GaussianSmoothPluginCreator() override = default;

    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    nvinfer1::IPluginV3* createPlugin(char const* name, nvinfer1::PluginFieldCollection const* fc,
                                      nvinfer1::TensorRTPhase phase) noexcept override;

private:
    std::vector<nvinfer1::PluginField> mFieldNames;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

// Parse and validate the three attributes (any integer / float field width); false with a message on error.
bool parseParams(nvinfer1::PluginFieldCollection const* fc, GaussianSmoothParams& params, std::string& error);

}  // namespace ncis

#endif  // NCIS_GAUSSIAN_SMOOTH_PLUGIN_H
