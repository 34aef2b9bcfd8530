// ncis_purify_ov: purify one PPM/PGM image with an ncis-deploy ONNX purifier through OpenVINO's C++ API.
//
//   ncis_purify_ov MODEL.onnx IN.ppm OUT.ppm [--device CPU] [--precision f32|bf16] [--threads N]
//                  [--raw-out OUT.f32]
//
// MODEL.onnx is what `ncis-deploy export` writes (purifier.onnx): input float32 [N, 3, H, W] in [0, 1], output the
// same shape. A fixed-size export takes only images of its size; a --dynamic-hw export takes any size. The model is
// reshaped to [1, 3, H, W] of the image before it is compiled, so OpenVINO plans for one static shape.
// --raw-out also writes the float32 output as it came from the model (little-endian [1, 3, H, W], no header): a
// PPM holds 8 or 16 bits per sample, the raw file is what a parity check compares.
// Exit status: 0 done, 2 bad command line, 1 anything else (unreadable image, wrong model, OpenVINO error); every
// error is one line "error: ..." on stderr. Outputs are written under a temporary name and renamed into place, so a
// failed run leaves no half-written file.
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <openvino/frontend/manager.hpp>
#include <openvino/op/ops.hpp>
#include <openvino/openvino.hpp>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "ppm.hpp"

namespace {

// ncis_deploy.exporters.manifest.BF16_NODES_KEY: ONNX metadata_props, which OpenVINO's ONNX reader keeps under
// the model's "framework" rt_info
const char* const kBf16NodesKey = "ncis_deploy.bf16_nodes";

std::set<std::string> split_names(const std::string& list) {
    std::set<std::string> names;
    std::stringstream in(list);
    for (std::string name; std::getline(in, name, ',');) names.insert(name);
    return names;
}

// The ops of the ONNX nodes `names` typed bf16 (an ONNX node keeps its name in OpenVINO, its parts as "name/..."),
// a Convert on every float edge into or out of them; how many ops were typed. The Python runner's
// runners.openvino.type_bf16
size_t type_bf16(const std::shared_ptr<ov::Model>& model, const std::set<std::string>& names) {
    std::set<const ov::Node*> typed;
    for (const auto& op : model->get_ops()) {
        const std::string& name = op->get_friendly_name();
        if (names.count(name.substr(0, name.find('/'))) && !ov::is_type<ov::op::v0::Parameter>(op) &&
            !ov::is_type<ov::op::v0::Result>(op) && !ov::is_type<ov::op::v0::Constant>(op))
            typed.insert(op.get());
    }
    for (const auto& op : model->get_ordered_ops()) {
        const bool inside = typed.count(op.get()) > 0;
        const bool shape_of = ov::is_type<ov::op::v0::ShapeOf>(op) || ov::is_type<ov::op::v3::ShapeOf>(op);
        for (auto& port : op->inputs()) {
            const ov::Output<ov::Node> src = port.get_source_output();
            if ((typed.count(src.get_node()) > 0) == inside || src.get_element_type() != ov::element::f32 || shape_of)
                continue;
            port.replace_source_output(
                std::make_shared<ov::op::v0::Convert>(src, inside ? ov::element::bf16 : ov::element::f32));
        }
    }
    model->validate_nodes_and_infer_types();
    return typed.size();
}

struct Args {
    std::string model, input, output, rawOut;
    std::string device = "CPU";
    std::string precision = "f32";
    int threads = 0;  // 0: OpenVINO's default (all physical cores)
};

const char* const kUsage =
    "usage: ncis_purify_ov MODEL.onnx IN.ppm|pgm OUT.ppm|pgm [--device CPU] [--precision f32|bf16] "
    "[--threads N] [--raw-out OUT.f32]";

[[noreturn]] void fail(const std::string& msg, int code = 1) {
    std::fprintf(stderr, "error: %s\n", msg.c_str());
    std::exit(code);
}

[[noreturn]] void usage_error(const std::string& msg) {
    std::fprintf(stderr, "error: %s\n%s\n", msg.c_str(), kUsage);
    std::exit(2);
}

Args parse(int argc, char** argv) {
    Args a;
    std::vector<std::string> positional;
    for (int i = 1; i < argc; ++i) {
        const std::string k = argv[i];
        auto value = [&]() -> std::string {
            if (i + 1 >= argc) usage_error(k + " needs a value");
            return argv[++i];
        };
        if (k == "--device") a.device = value();
        else if (k == "--precision") a.precision = value();
        else if (k == "--raw-out") a.rawOut = value();
        else if (k == "--threads") {
            const std::string v = value();
            char* end = nullptr;
            const long n = std::strtol(v.c_str(), &end, 10);
            if (v.empty() || *end != '\0' || n < 1 || n > 1024) usage_error("--threads must be a positive integer, got " + v);
            a.threads = static_cast<int>(n);
        } else if (k == "-h" || k == "--help") {
            std::printf("%s\n", kUsage);
            std::exit(0);
        } else if (k.size() > 1 && k[0] == '-') usage_error("unknown option " + k);
        else positional.push_back(k);
    }
    if (positional.size() != 3)
        usage_error("expected MODEL.onnx IN.ppm OUT.ppm, got " + std::to_string(positional.size()) + " file argument(s)");
    a.model = positional[0];
    a.input = positional[1];
    a.output = positional[2];
    if (a.precision != "f32" && a.precision != "bf16")
        usage_error("--precision must be f32 or bf16, got " + a.precision);
    return a;
}

// OpenVINO's messages start with "Exception from <source file>:<line>:" and "Check '...' failed at ..." lines that
// mean nothing to a user; keep the lines that say what is wrong, joined into one.
std::string ov_message(const std::exception& e) {
    std::istringstream in(e.what());
    std::string line, out;
    while (std::getline(in, line)) {
        if (line.empty() || line.rfind("Exception from ", 0) == 0 || line.rfind("Check '", 0) == 0) continue;
        out += (out.empty() ? "" : " ") + line;
    }
    return out.empty() ? e.what() : out;
}

// Write through a temporary file and rename it into place: a reader never sees a half-written output.
template <typename WriteFn>
void write_atomically(const std::string& path, WriteFn write) {
    const std::string tmp = path + ".tmp" + std::to_string(getpid());
    std::string error;
    if (!write(tmp, error)) {
        std::remove(tmp.c_str());
        fail("cannot write " + path);
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0) {
        std::remove(tmp.c_str());
        fail("cannot write " + path);
    }
}

bool write_raw(const std::string& path, const std::vector<float>& data, std::string& error) {
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size() * sizeof(float)));
    out.close();
    if (!out) error = "cannot write " + path;
    return static_cast<bool>(out);
}

std::string dim_text(const ov::Dimension& d) { return d.is_static() ? std::to_string(d.get_length()) : "?"; }

}  // namespace

int main(int argc, char** argv) {
    const Args args = parse(argc, argv);
    ppm::Image image;
    std::string error;
    if (!ppm::read(args.input, image, error)) fail(error);
    if (image.width < 2 || image.height < 2) fail("the image must be at least 2x2 pixels");
    const size_t H = static_cast<size_t>(image.height), W = static_cast<size_t>(image.width);

    std::vector<float> result;
    std::string bf16_scope = args.precision;
    try {
        ov::Core core;
        const std::vector<std::string> devices = core.get_available_devices();
        // GPU.1 is a GPU; AUTO:GPU,CPU / HETERO:... are virtual devices over the listed ones, left to OpenVINO
        const std::string family = args.device.substr(0, args.device.find_first_of(".:"));
        const bool virtual_device = family == "AUTO" || family == "HETERO" || family == "MULTI" || family == "BATCH";
        if (!virtual_device && std::none_of(devices.begin(), devices.end(), [&](const std::string& d) {
                return d == args.device || d.substr(0, d.find('.')) == family;
            })) {
            std::string list;
            for (const auto& d : devices) list += (list.empty() ? "" : ", ") + d;
            fail("OpenVINO device " + args.device + " is not available here (available: " + list + ")");
        }
        if (args.precision == "bf16") {
            const auto caps = core.get_property(args.device, ov::device::capabilities);
            if (std::find(caps.begin(), caps.end(), ov::device::capability::BF16) == caps.end())
                fail(args.device + " cannot run BF16 natively (on a CPU it needs AVX512-BF16 or AMX); "
                     "use --precision f32");
        }

        // The ONNX frontend directly, not core.read_model: on a file the ONNX frontend rejects, read_model goes on to
        // try the others, and the TensorFlow one prints parse errors of its own before the real message.
        if (!std::ifstream(args.model, std::ios::binary)) fail("cannot open " + args.model);
        ov::frontend::FrontEndManager frontends;
        const ov::frontend::FrontEnd::Ptr onnx = frontends.load_by_framework("onnx");
        std::shared_ptr<ov::Model> model;
        try {
            model = onnx->convert(onnx->load(args.model));
        } catch (const std::exception& e) {
            fail("cannot read " + args.model + " as an ONNX model: " + ov_message(e));
        }
        if (model->inputs().size() != 1 || model->outputs().size() != 1)
            fail(args.model + " has " + std::to_string(model->inputs().size()) + " inputs and " +
                 std::to_string(model->outputs().size()) +
                 " outputs; an ncis-deploy purifier has one of each (export it with `ncis-deploy export`)");
        const ov::Output<ov::Node> in = model->input();
        const ov::PartialShape declared = in.get_partial_shape();
        if (in.get_element_type() != ov::element::f32 || declared.rank().is_dynamic() ||
            declared.rank().get_length() != 4 || !declared[1].compatible(3))
            fail(args.model + " takes " + in.get_element_type().get_type_name() + " " + declared.to_string() +
                 ", not float32 [N, 3, H, W]: it is not an ncis-deploy purifier");
        if (!declared[2].compatible(image.height) || !declared[3].compatible(image.width))
            fail(args.model + " takes " + dim_text(declared[3]) + "x" + dim_text(declared[2]) +
                 " images, this one is " + std::to_string(W) + "x" + std::to_string(H) +
                 "; resize it or export with --dynamic-hw");
        const ov::Shape shape{1, 3, H, W};
        model->reshape(shape);

        // bf16: the nodes the export lists (each BSN pass) typed bf16, compiled with the f32 hint, so GS, the blind
        // baseline, their sum and the clip stay f32, as the Python openvino runner does; without the list (an older
        // export, or no BSN) OpenVINO's own bf16 hint, which rounds those too
        bool bf16_hint = args.precision == "bf16";
        if (bf16_hint && model->has_rt_info("framework", kBf16NodesKey) &&
            type_bf16(model, split_names(model->get_rt_info<std::string>("framework", kBf16NodesKey))) > 0) {
            bf16_hint = false;
            bf16_scope = "bf16 BSN";
        }
        ov::AnyMap config{ov::hint::inference_precision(bf16_hint ? ov::element::bf16 : ov::element::f32)};
        if (args.threads > 0) config.emplace(ov::inference_num_threads(args.threads));
        ov::CompiledModel compiled = core.compile_model(model, args.device, config);
        ov::InferRequest request = compiled.create_infer_request();

        std::vector<float> chw = ppm::to_chw(image);
        request.set_input_tensor(ov::Tensor(ov::element::f32, shape, chw.data()));  // wraps chw, no copy
        request.infer();
        const ov::Tensor out = request.get_output_tensor();
        if (out.get_element_type() != ov::element::f32 || out.get_shape() != shape)
            fail(args.model + " returned " + out.get_element_type().get_type_name() + " " +
                 out.get_shape().to_string() + ", expected float32 " + shape.to_string());
        const float* data = out.data<const float>();
        result.assign(data, data + out.get_size());
    } catch (const std::exception& e) {
        fail("OpenVINO: " + ov_message(e));
    }

    if (!args.rawOut.empty())
        write_atomically(args.rawOut, [&](const std::string& p, std::string& err) { return write_raw(p, result, err); });
    const bool grey = args.output.size() > 4 && args.output.compare(args.output.size() - 4, 4, ".pgm") == 0;
    const ppm::Image purified = ppm::from_chw(result, image.width, image.height, grey ? 1 : 3, image.maxval);
    write_atomically(args.output, [&](const std::string& p, std::string& err) { return ppm::write(p, purified, err); });
    std::printf("purified %s (%zux%zu) -> %s [OpenVINO %s, %s]\n", args.input.c_str(), W, H, args.output.c_str(),
                args.device.c_str(), bf16_scope.c_str());
    return 0;
}
