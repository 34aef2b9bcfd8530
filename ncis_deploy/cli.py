"""The ``ncis-deploy`` command line: thin shells over library functions.

A :class:`~ncis_deploy.errors.UserError` becomes one line on stderr and its exit code (2, or 130 for Ctrl-C);
any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from pathlib import Path

import click

from ncis_deploy import __version__
from ncis_deploy.errors import UserError


def _setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("warning: %(message)s"))
    lg = logging.getLogger("ncis_deploy")
    lg.handlers[:] = [handler]
    lg.setLevel(logging.WARNING)
    lg.propagate = False


def user_errors(fn):
    """Run a command body; a UserError becomes a one-line message and its exit code, with no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        _setup_logging()
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("error: interrupted", err=True)
            sys.exit(130)

    return wrapper


def purifier_options(fn):
    """--preset / --config / --weights, shared by every command that loads a purifier."""
    fn = click.option("--weights", type=click.Path(dir_okay=True, path_type=Path), default=None,
                      help="BSN weights (.safetensors, or a directory written by `train`); default: the shipped ones.")(fn)
    fn = click.option("--config", "config_path", type=click.Path(path_type=Path), default=None,
                      help="Purifier config: a purifier.json file or a directory written by `train`.")(fn)
    fn = click.option("--preset", type=str, default=None,
                      help="Preset purifier: none, gs or ncis (default: ncis).")(fn)
    return fn


def resolve_purifier_source(preset, config_path, weights):
    if preset is not None and config_path is not None:
        raise UserError("give either --preset or --config, not both")
    return config_path if config_path is not None else preset


def write_outputs(report: dict, json_path: Path | None, plot_path: Path | None = None, plot_fn=None) -> None:
    """--json and --plot of a report command; an unwritable path is a user error."""
    from ncis_deploy.fileio import write_json

    if json_path:
        try:
            json_path.parent.mkdir(parents=True, exist_ok=True)
            write_json(json_path, report)
        except OSError as e:
            raise UserError(f"cannot write --json {json_path}: {e.strerror or e}") from None
        click.echo(f"  wrote {json_path}", err=True)
    if plot_path:
        plot_fn(report, plot_path)
        click.echo(f"  wrote {plot_path}", err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, "--version", prog_name="ncis-deploy")
def cli():
    """NCIS adversarial purification: train the blind-spot network, export the fused purifier to ONNX/TensorRT,
    benchmark every backend and evaluate robustness.

    Every command runs with zero arguments on the bundled defaults; `ncis-deploy COMMAND --help` explains it.
    """


# ------------------------------------------------------------------------------------------------------------ train
def _train_default(name: str):
    from ncis_deploy.train import TrainConfig

    return TrainConfig.__dataclass_fields__[name].default


def _d(name: str) -> str:
    """' (default: X)' from TrainConfig, the one place train's defaults live."""
    return f" (default: {_train_default(name)})"


@cli.command()
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="Folder of photos (searched recursively; jpg/png/webp/bmp). Default: the bundled scikit-image photos.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Output directory: purifier.json + bsn.safetensors (loadable by load_purifier), checkpoints, log."
                   + _d("out"))
@click.option("--steps", type=int, default=None, help="Optimizer steps in total." + _d("steps"))
@click.option("--crop", type=int, default=None, help="Square crop size in pixels." + _d("crop"))
@click.option("--batch", type=int, default=None, help="Crops per step." + _d("batch"))
@click.option("--layers", type=int, default=None, help="FBI-Net masked conv layers L." + _d("layers"))
@click.option("--filters", type=int, default=None, help="FBI-Net feature width F." + _d("filters"))
@click.option("--baseline", type=click.Choice(["mean4", "none"]), default=None,
              help="mean4: output = 4-neighbour mean + the network's correction (starts at that baseline); "
                   "none: plain FBI-Net." + _d("baseline"))
@click.option("--lr", type=float, default=None, help="Adam peak learning rate." + _d("lr"))
@click.option("--schedule", type=click.Choice(["cosine", "step"]), default=None,
              help="cosine: linear warm-up then cosine to zero; step: halved at 50% and 75%." + _d("schedule"))
@click.option("--warmup", type=int, default=None, help="Warm-up steps of the cosine schedule." + _d("warmup"))
@click.option("--seed", type=int, default=None, help="Seed for init, crops and noise." + _d("seed"))
@click.option("--device", type=str, default=None, help="cpu or cuda (AMP is used on cuda)." + _d("device"))
@click.option("--noise", type=float, default=None,
              help="Input-noise augmentation: std drawn from [0, NOISE]/255 per crop; 0 turns it off." + _d("noise"))
@click.option("--input", "input_kind", type=click.Choice(["raw", "gs", "mixed"]), default=None,
              help="What the network sees: raw noisy crops, Gaussian-smoothed ones (GS k3 σ1, T 1..5 per crop: what "
                   "the BSN stage of a GS+BSN purifier receives), or mixed (T 0..5)." + _d("input"))
@click.option("--target", type=click.Choice(["self", "clean"]), default=None,
              help="self: predict the input (plain self-supervised blind-spot loss); clean: predict the noise-free, "
                   "unsmoothed crop." + _d("target"))
@click.option("--augment/--no-augment", default=None,
              help="Flips, 90° rotations, channel permutations, brightness/contrast/colour jitter." + _d("augment"))
@click.option("--taps", type=click.Choice(["live", "dense"]), default=None,
              help="live: compute only the masks' live taps (faster, same function); dense: masked dense convs."
                   + _d("taps"))
@click.option("--eval-every", type=int, default=None, help="Hold-out PSNR every N steps." + _d("eval_every"))
@click.option("--checkpoint-every", type=int, default=None, help="Checkpoint every N steps." + _d("checkpoint_every"))
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint (exactly).")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None,
              help="Also write the run summary as JSON here.")
@click.pass_context
@user_errors
def train(ctx, resume, json_path, input_kind, **options):
    """Train the blind-spot network on a folder of photos (default: the bundled ones); no labels needed.

    Writes purifier.json + bsn.safetensors, train_log.jsonl (loss, learning rate, hold-out PSNR with the
    4-neighbour-mean and GS lines at step 0) and checkpoints. Ctrl-C finishes the current step, saves a checkpoint
    and exits 130; `--resume` continues it exactly.
    """
    from ncis_deploy.train import TrainConfig, train as run_train

    given = {k: v for k, v in {**options, "input": input_kind}.items() if v is not None}
    for k in ("data", "out"):
        if k in given:
            given[k] = str(given[k])
    cfg = TrainConfig(**given)
    names = {"input_kind": "input"}
    explicit = {names.get(k, k) for k in ctx.params
                if ctx.get_parameter_source(k) == click.core.ParameterSource.COMMANDLINE}
    summary = run_train(cfg, resume=resume, explicit=explicit)
    psnr, base = summary["holdout_psnr"], summary["holdout_baselines"]
    click.echo(f"trained {summary['steps']} steps in {summary['wall_s']:.1f} s ({summary['images_per_s']:.1f} img/s); "
               f"final loss {summary['final_loss']:.5f}; hold-out PSNR {psnr:.2f} dB at noise 8/255 "
               f"(4-neighbour mean {base['mean4']:.2f} dB, noisy {base['noisy']:.2f} dB); "
               f"purifier written to {summary['out']}")
    write_outputs(summary, json_path)


# ----------------------------------------------------------------------------------------------------------- purify
@cli.command()
@click.argument("inputs", nargs=-1, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=Path("purified"), show_default=True,
              help="Output directory for the purified PNGs.")
@purifier_options
@click.option("--backend", type=click.Choice(["torch", "onnxruntime", "tensorrt"]), default="torch", show_default=True,
              help="torch runs the purifier itself; onnxruntime / tensorrt run an exported artifact (--model).")
@click.option("--model", type=click.Path(path_type=Path), default=None,
              help="Exported artifact for onnxruntime (.onnx) or tensorrt (.engine) "
                   "[default: ncis_export/purifier.onnx or .engine].")
@click.option("--device", type=str, default="cpu", show_default=True,
              help="cpu, cuda or cuda:N; for onnxruntime also 'tensorrt' (its TensorRT execution provider).")
@click.option("--plugin-lib", "plugin_libs", type=click.Path(path_type=Path), multiple=True,
              help="TensorRT plugin library the engine needs (an `export --smoothing plugin` engine); repeatable.")
@user_errors
def purify(inputs, out, preset, config_path, weights, backend, model, device, plugin_libs):
    """Purify images (files or folders; default: the bundled hold-out photos) and write PNGs to --out."""
    from ncis_deploy.purify import purify_paths

    written = purify_paths(list(inputs), out, resolve_purifier_source(preset, config_path, weights), weights, device,
                           backend=backend, model=model, plugin_libraries=plugin_libs)
    click.echo(f"wrote {len(written)} purified image(s) to {out}")


# ----------------------------------------------------------------------------------------------------------- export
@cli.command()
@purifier_options
@click.option("--out", type=click.Path(path_type=Path), default=Path("ncis_export"), show_default=True,
              help="Export directory (replaced only by a complete export).")
@click.option("--height", type=int, default=224, show_default=True, help="Input height (the optimum with --dynamic-hw).")
@click.option("--width", type=int, default=224, show_default=True, help="Input width (the optimum with --dynamic-hw).")
@click.option("--dynamic-hw", is_flag=True, help="Any H, W >= 2 at run time (GS matrices built in-graph, still exact).")
@click.option("--batch", "batch_text", default="1:8:32", show_default=True,
              help="Batch range MIN:OPT:MAX for the TensorRT profile; the ONNX batch is always dynamic.")
@click.option("--opset", type=int, default=18, show_default=True, help="ONNX opset (>= 18).")
@click.option("--fp16", is_flag=True, help="Also write an FP16-typed ONNX (and build the engine from it); its error "
                                           "against FP32 is measured and recorded.")
@click.option("--tensorrt/--no-tensorrt", default=None,
              help="Build a TensorRT engine. Default: when tensorrt imports and a GPU is present.")
@click.option("--version-compatible", is_flag=True, help="Build a version-compatible TensorRT engine (lean runtime).")
@click.option("--workspace", "workspace_gib", type=float, default=4.0, show_default=True,
              help="TensorRT builder workspace limit in GiB.")
@click.option("--timing-cache", type=click.Path(path_type=Path), default=None,
              help="TensorRT timing cache, reused across builds [default: ~/.cache/ncis-deploy/tensorrt-timing.cache].")
@click.option("--classifier", type=click.Path(path_type=Path), default=None,
              help="Classifier ONNX: also write purifier+normalisation+classifier as one graph.")
@click.option("--classifier-mean", type=float, nargs=3, default=(0.485, 0.456, 0.406), show_default=True,
              help="Per-channel mean the classifier expects (inputs in [0, 1]).")
@click.option("--classifier-std", type=float, nargs=3, default=(0.229, 0.224, 0.225), show_default=True,
              help="Per-channel std the classifier expects.")
@click.option("--smoothing", type=click.Choice(["matmul", "plugin"]), default="matmul", show_default=True,
              help="How GS stages are exported: matmul = the exact GS matrices in standard ONNX ops (runs everywhere); "
                   "plugin = one TensorRT plugin node per GS stage (NcisGaussianSmooth, the one-launch CUDA kernel), "
                   "for TensorRT with --plugin-lib; checked on the CPU by the ONNX reference evaluator.")
@click.option("--plugin-lib", type=click.Path(path_type=Path), default=None,
              help="The NcisGaussianSmooth TensorRT plugin library (built from kernels/): loaded for the engine build, "
                   "recorded in the manifest.")
@click.option("--triton", is_flag=True,
              help="Also write a Triton Inference Server model repository (OUT/triton/): the purifier on ONNX Runtime, "
                   "the TensorRT plan when an engine was built, and with --classifier the classifier and a purifier -> "
                   "classifier ensemble; every config.pbtxt is validated (needs ncis-deploy[serve]). max_batch_size "
                   "is --batch MAX, the preferred batch --batch OPT.")
@click.option("--triton-instances", type=int, default=1, show_default=True,
              help="Model instances per model (instance_group count; per GPU on GPU nodes).")
@click.option("--triton-queue-delay-us", type=int, default=100, show_default=True,
              help="Dynamic batching: how long a request may wait for others to join its batch.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None, help="Also write the manifest here.")
@user_errors
def export(preset, config_path, weights, out, height, width, dynamic_hw, batch_text, opset, fp16, tensorrt,
           version_compatible, workspace_gib, timing_cache, classifier, classifier_mean, classifier_std, smoothing,
           plugin_lib, triton, triton_instances, triton_queue_delay_us, json_path):
    """Export the fused purifier to ONNX (and a TensorRT engine where possible), check that every artifact computes
    what PyTorch computes, and write manifest.json.

    With no arguments: the ncis preset at 224x224, dynamic batch, into ./ncis_export/.
    """
    from ncis_deploy.exporters.pipeline import ExportOptions, export as run_export, parse_batch

    opts = ExportOptions(source=resolve_purifier_source(preset, config_path, weights),
                         weights=str(weights) if weights else None, out=str(out), height=height, width=width,
                         dynamic_hw=dynamic_hw, batch=parse_batch(batch_text), opset=opset, fp16=fp16,
                         tensorrt=tensorrt, version_compatible=version_compatible, workspace_gib=workspace_gib,
                         timing_cache=str(timing_cache) if timing_cache else None,
                         classifier=str(classifier) if classifier else None,
                         classifier_mean=tuple(classifier_mean), classifier_std=tuple(classifier_std),
                         smoothing=smoothing, plugin_lib=str(plugin_lib) if plugin_lib else None, triton=triton,
                         triton_instances=triton_instances, triton_queue_delay_us=triton_queue_delay_us)
    m = run_export(opts, progress=lambda msg: click.echo(f"  {msg}", err=True))
    click.echo(render_manifest(m, out))
    write_outputs(m, json_path)


def render_manifest(m: dict, out: Path) -> str:
    lines = [f"export written to {out}/ in {m['export_seconds']} s", "", f"{'artifact':<28} {'bytes':>12}  sha256"]
    lines += [f"{a['file']:<28} {a['bytes']:>12,}  {a['sha256'][:16]}…" for a in m["artifacts"]]
    plugin = "plugin" in m
    title = "parity (reference evaluator)" if plugin else "parity (vs PyTorch, ORT CPU)"
    lines += ["", f"{title:<34} {'max abs':>10}"]
    for k in ("fp32", "fp16"):
        if k in m["parity"]:
            p = m["parity"][k]
            tol = f"(tolerance {p['tolerance']:g})" if p["tolerance"] else "(recorded)"
            vs = f" vs {p['reference']}" if plugin else ""
            lines.append(f"{k + ', ' + str(len(p['cases'])) + ' cases':<34} {p['max_abs']:>10.2e}  {tol}{vs}")
    if "classifier" in m["parity"]:
        c = m["parity"]["classifier"]
        if "skipped" in c:
            lines.append(f"{'classifier top-1 agreement':<34} {'skipped':>10}  ({c['skipped']})")
        else:
            lines.append(f"{'classifier top-1 agreement':<34} {c['top1_agreement']:>10.1%}  ({c['images']} images)")
    if plugin:
        lib = m["plugin"]["library"]
        lines += ["", f"GS as TensorRT plugin {m['plugin']['op_type']} (namespace {m['plugin']['plugin_namespace']!r}); "
                      + (f"library {lib['path']}" if lib else "no --plugin-lib given")]
    b = m.get("bsn_macs", {})
    if b.get("applicable"):
        lines += ["", f"BSN MACs at {b['input_shape']}: {b['macs_live_taps']:,} live taps vs {b['macs_dense']:,} dense "
                      f"({b['ratio']:.3f}x), outputs equal within {b['max_abs_diff_live_vs_dense']:.1e}"]
    t = m["tensorrt"]
    lines += ["", "TensorRT engine: " + ("built" if t["built"] else f"not built: {t['reason']}")]
    if "triton" in m:
        tr = m["triton"]
        lines += ["", f"Triton model repository {out}/{tr['directory']}/ (max_batch_size {tr['max_batch_size']}, "
                      f"{tr['instances']} instance(s), configs validated): "
                      + ", ".join(f"{x['name']} ({x['platform']})" for x in tr["models"])]
    return "\n".join(lines)

# ----------------------------------------------------------------------------------------------------------- doctor
@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of a table.")
@user_errors
def doctor(as_json):
    """Show which backends, ONNX Runtime execution providers and GPUs are really usable on this machine
    (each provider is checked on a live session, not just listed)."""
    from ncis_deploy.doctor import render, report

    r = report()
    click.echo(json.dumps(r, indent=2, default=str) if as_json else render(r))


# ------------------------------------------------------------------------------------------------------------ bench
@cli.command()
@click.argument("export_dir", required=False, type=click.Path(path_type=Path))
@click.option("--preset", type=str, default=None,
              help="Benchmark a preset (none, gs, ncis), exported in memory, instead of an export directory.")
@click.option("--backend", "backends", multiple=True, metavar="B",
              help="torch, onnxruntime or tensorrt, optionally with a device: torch:cpu, torch:cuda, onnxruntime:cpu, "
                   "onnxruntime:cuda, onnxruntime:tensorrt (its TensorRT provider). Repeatable. "
                   "[default: every backend usable here]")
@click.option("--batch", "batches", type=int, multiple=True, metavar="N",
              help="Batch size; repeatable. [default: 1 and 8]")
@click.option("--height", type=int, default=None, help="Image height [default: the export's, else 224].")
@click.option("--width", type=int, default=None, help="Image width [default: the export's, else 224].")
@click.option("--warmup", "warmup_ms", type=float, default=200.0, show_default=True, metavar="MS",
              help="Warm-up per case in milliseconds (at least one input-checked call).")
@click.option("--duration", "duration_s", type=float, default=None, metavar="S",
              help="Timed seconds per case, at least 3 iterations [default: 2].")
@click.option("--iterations", type=int, default=None, metavar="N",
              help="Exactly N timed iterations per case, instead of --duration.")
@click.option("--threads", type=int, default=None, help="CPU threads for torch and onnxruntime [default: their own].")
@click.option("--cuda-graph", is_flag=True, help="GPU: replay each query as a CUDA graph (trtexec --useCudaGraph).")
@click.option("--no-data-transfers", is_flag=True,
              help="GPU: input and output stay on the device, only compute is timed (trtexec --noDataTransfers).")
@click.option("--stages", is_flag=True, help="Also time GS and each BSN pass on their own (torch, onnxruntime).")
@click.option("--vs", type=str, default=None, metavar="B",
              help="Measure the backends interleaved with B in one run and report the throughput ratio per batch.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None,
              help="Write the report as JSON (its schema: --schema).")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), default=None,
              help="Write a PNG: latency vs batch per backend, and the stage breakdown.")
@click.option("--diffpure/--no-diffpure", default=True, show_default=True,
              help="Add the stand-in context row: a DiffPure-class UNet with random weights, one step timed at "
                   "batch 1, times --diffpure-steps.")
@click.option("--diffpure-width", type=int, default=256, show_default=True,
              help="Stand-in base channels; 256 is the full ~553M-parameter size.")
@click.option("--diffpure-size", type=int, default=256, show_default=True, help="Stand-in image size.")
@click.option("--diffpure-steps", type=int, default=150, show_default=True,
              help="Network evaluations per purified image (the multiplier).")
@click.option("--schema", "print_schema", is_flag=True, help="Print the JSON schema of the report and exit.")
@click.pass_context
@user_errors
def bench(ctx, export_dir, preset, backends, batches, height, width, warmup_ms, duration_s, iterations, threads,
          cuda_graph, no_data_transfers, stages, vs, json_path, plot_path, diffpure, diffpure_width, diffpure_size,
          diffpure_steps, print_schema):
    """Latency and throughput of the purifier on every backend, trtexec-style: throughput, latency min / mean /
    median / p90 / p95 / p99 / max, on GPU the H2D / compute / D2H split, peak memory, and a variance warning.

    With no arguments: the default export (./ncis_export, exported first if missing) on every backend usable here,
    batches 1 and 8, plus a stand-in DiffPure-class row for context. Prints a Markdown table.
    """
    from ncis_deploy.bench import BenchOptions, plot, render_markdown, run_bench
    from ncis_deploy.bench.schema import SCHEMA

    if print_schema:
        click.echo(json.dumps(SCHEMA, indent=2))
        return
    command = _command_line(ctx)
    opts = BenchOptions(export_dir=str(export_dir) if export_dir else None, preset=preset, backends=tuple(backends),
                        batches=tuple(batches) or (1, 8), height=height, width=width, warmup_ms=warmup_ms,
                        duration_s=duration_s, iterations=iterations, threads=threads, cuda_graph=cuda_graph,
                        data_transfers=not no_data_transfers, stages=stages, vs=vs, diffpure=diffpure,
                        diffpure_width=diffpure_width, diffpure_size=diffpure_size, diffpure_steps=diffpure_steps)
    report = run_bench(opts, progress=lambda msg: click.echo(f"  {msg}", err=True), command=command)
    click.echo(render_markdown(report))
    write_outputs(report, json_path, plot_path, plot)


def _command_line(ctx) -> str:
    """The command as typed (options given on the command line only), for the report."""
    import shlex

    words = ["ncis-deploy", ctx.info_name or "bench"]
    for p in ctx.command.params:
        if ctx.get_parameter_source(p.name) != click.core.ParameterSource.COMMANDLINE:
            continue
        v = ctx.params[p.name]
        if isinstance(p, click.Argument):
            words.append(str(v))
        elif p.is_flag:
            words.append(p.opts[0] if v or not p.secondary_opts else p.secondary_opts[0])
        else:
            for item in (v if p.multiple else [v]):
                words += [p.opts[0], str(item)]
    return shlex.join(words)


# ------------------------------------------------------------------------------------------------------------- eval
def _require_matplotlib() -> None:
    """Fail before a long run, not after it, when --plot cannot be honoured."""
    import importlib.util

    from ncis_deploy.errors import missing_package

    if importlib.util.find_spec("matplotlib") is None:
        raise missing_package("matplotlib", "plots")


def _parse_eps(text: str, option: str = "--eps") -> float:
    """'8/255', '0.0314' or '8' (read as 8/255 only with the /255: a bare 8 is out of range and says so)."""
    try:
        if "/" in text:
            num, den = text.split("/", 1)
            return float(num) / float(den)
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise UserError(f"{option} {text!r} is not a number or a fraction like 8/255") from None


@cli.command(name="eval")
@click.option("--classifier", default="efficientnet-lite0", show_default=True,
              help="efficientnet-lite0, an import path package.module:factory, a TorchScript file or an .onnx file "
                   "(ONNX: clean, parity and transfer only; no gradients).")
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="Folder with one sub-folder per class index (e.g. 281/ or 281_tabby/). Default: the bundled "
                   "photos, labelled by the undefended clean top-1 (reported as agreement).")
@click.option("--labels", type=click.Path(path_type=Path), default=None, help="CSV of path,label (paths relative to it).")
@click.option("--preset", "presets", multiple=True, help="Preset(s) or purifier dirs to evaluate (repeatable). "
              "Default: none, gs, ncis.")
@click.option("--weights", type=click.Path(path_type=Path), default=None, help="BSN weights for presets with a BSN.")
@click.option("--attack", "attacks", multiple=True,
              help="fgsm, pgd, pgd-l2, mifgsm (purifier-blind); transfer; adaptive, bpda (adaptive). Repeatable. "
                   "Default: pgd, transfer (when there is a surrogate: --surrogate, or the built-in ghost ensemble "
                   "for efficientnet-lite0) and adaptive.")
@click.option("--eps", "eps_text", multiple=True,
              help="ℓ∞ radius of purifier-blind and transfer attacks, e.g. 8/255 (repeatable). Default: 2/255, "
                   "4/255, 8/255, 16/255 (the sweep: 8/255).")
@click.option("--adaptive-eps", "adaptive_eps_text", multiple=True,
              help="ℓ∞ radius of adaptive attacks (repeatable; each costs one attack through every purifier). "
                   "Default: 8/255.")
@click.option("--eps-l2", type=float, default=1.0, show_default=True, help="ℓ2 radius for pgd-l2.")
@click.option("--steps", type=int, default=10, show_default=True, help="PGD steps for purifier-blind attacks.")
@click.option("--adaptive-steps", type=int, default=5, show_default=True,
              help="PGD steps for adaptive attacks (each backpropagates through the BSN: costly on CPU).")
@click.option("--adaptive-images", type=int, default=8, show_default=True, help="Images for adaptive attacks.")
@click.option("--transfer-steps", type=int, default=10, show_default=True, help="MI-FGSM steps (transfer, mifgsm).")
@click.option("--surrogate", "surrogates", multiple=True,
              help="Surrogate classifier(s) for the transfer attack (same forms as --classifier, or "
                   "efficientnet-lite0-ghost). Default for efficientnet-lite0: efficientnet-lite0-ghost, ghost copies "
                   "of the target itself (a stronger attack than a true black box).")
@click.option("--eot", type=int, default=1, show_default=True, help="EOT samples (only useful for a random stage).")
@click.option("--crops", type=int, default=2, show_default=True, help="Crops per bundled photo (11 photos).")
@click.option("--images", type=int, default=None, help="Use at most this many images (spread over the set).")
@click.option("--size", type=int, default=224, show_default=True, help="Square evaluation size.")
@click.option("--batch", type=int, default=4, show_default=True,
              help="Images per forward/backward batch (4 is fastest on a CPU: the BSN's activations are large).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for crops, random starts and DI.")
@click.option("--parity/--no-parity", default=True, show_default=True, help="Compare ORT vs torch purification.")
@click.option("--sweep", is_flag=True,
              help="Instead: clean vs purifier-blind robust agreement over a grid of GS (kernel, sigma, iterations) "
                   "and BSN iterations (the first --eps, --steps PGD steps), to choose presets by measurement.")
@click.option("--grid", "grid_specs", multiple=True, metavar="KEY=V1,V2",
              help="Sweep only these values (repeatable): kernel_size, sigma, iterations, bsn_iterations; keys not "
                   "given keep the default grid (k 3,5; σ 0.5,1,2; T 1,2,5; BSN 0,1,2).")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None, help="Write the report as JSON.")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), default=None,
              help="Plot robust rate vs ε per preset and threat model (sweep: clean vs robust scatter; needs "
                   "matplotlib).")
@click.pass_context
@user_errors
def eval_cmd(ctx, classifier, data, labels, presets, weights, attacks, eps_text, adaptive_eps_text, eps_l2, steps,
             adaptive_steps, adaptive_images, transfer_steps, surrogates, eot, crops, images, size, batch, seed, parity,
             sweep, grid_specs, json_path, plot_path):
    """Accuracy parity and robustness of each purifier preset under purifier-blind, transfer and adaptive attacks.

    With no arguments: efficientnet-lite0 on 22 crops of the bundled photos, presets none / gs / ncis, clean,
    purifier-blind PGD at 2, 4, 8 and 16/255 (10 steps), a transfer attack (MI-FGSM + DI + TI, 10 steps, same ε)
    from ghost copies of the classifier, adaptive (full-gradient) PGD at 8/255 on an 8-image subset (5 steps: each
    step backpropagates through the BSN), and ORT-vs-torch parity.
    Sanity checks from the literature run every time and print a warning when they fail.
    """
    from ncis_deploy.eval import EvalOptions, plot, render_markdown, run_eval
    from ncis_deploy.eval.core import DEFAULT_EPS

    eps = tuple(_parse_eps(e) for e in eps_text) or ((8 / 255,) if sweep else DEFAULT_EPS)
    opts = EvalOptions(classifier=classifier, data=str(data) if data else None, labels=str(labels) if labels else None,
                       presets=tuple(presets) or ("none", "gs", "ncis"), attacks=tuple(attacks) or None, eps=eps,
                       adaptive_eps=tuple(_parse_eps(e, "--adaptive-eps") for e in adaptive_eps_text) or (8 / 255,),
                       eps_l2=eps_l2, steps=steps,
                       adaptive_steps=adaptive_steps, adaptive_images=adaptive_images, transfer_steps=transfer_steps,
                       surrogates=tuple(surrogates), eot=eot, crops=crops, images=images, size=size, batch=batch,
                       seed=seed, parity=parity, weights=str(weights) if weights else None)
    say = lambda msg: click.echo(f"  {msg}", err=True)  # noqa: E731
    if grid_specs and not sweep:
        raise UserError("--grid only applies to --sweep; add --sweep or drop --grid")
    if sweep:
        from ncis_deploy.eval.sweep import parse_grid, plot_sweep, render_sweep, run_sweep

        grid = parse_grid(grid_specs)
        if plot_path:
            _require_matplotlib()
        report = run_sweep(opts, grid=grid, progress=say, command=_command_line(ctx))
        click.echo(render_sweep(report))
        plot_fn = plot_sweep
    else:
        if plot_path:
            _require_matplotlib()
        report = run_eval(opts, progress=say, bars=sys.stderr.isatty(), command=_command_line(ctx))
        click.echo(render_markdown(report))
        plot_fn = plot
    write_outputs(report, json_path, plot_path, plot_fn)


# ------------------------------------------------------------------------------------------------------------ serve
@cli.command()
@click.argument("export_dir", type=click.Path(path_type=Path), default=Path("ncis_export"))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Loopback by default; 0.0.0.0 exposes the server to the network.")
@click.option("--http-port", type=int, default=8000, show_default=True, help="HTTP/REST port (KServe v2 protocol).")
@click.option("--grpc-port", type=int, default=8001, show_default=True, help="gRPC port.")
@click.option("--metrics-port", type=int, default=8002, show_default=True, help="Prometheus metrics port.")
@click.option("--max-batch", type=int, default=None, help="Largest dynamic batch [default: the export's --batch MAX].")
@click.option("--instances", type=int, default=1, show_default=True,
              help="Model instances (each its own runner), so batches run concurrently.")
@click.option("--queue-delay-us", type=int, default=100, show_default=True,
              help="Dynamic batching: how long a request may wait for others to join its batch.")
@click.option("--backend", type=click.Choice(["onnxruntime", "tensorrt"]), default="onnxruntime", show_default=True,
              help="Runner behind the server: onnxruntime (purifier.onnx) or tensorrt (purifier.engine, GPU).")
@click.option("--device", default="cpu", show_default=True, help="onnxruntime device: cpu, cuda or cuda:N.")
@click.option("--threads", type=int, default=None, help="Intra-op threads per onnxruntime instance [default: "
                                                        "cores / instances].")
@click.option("--verbose", is_flag=True, help="Show tritonserver's own log.")
@user_errors
def serve(export_dir, host, http_port, grpc_port, metrics_port, max_batch, instances, queue_delay_us, backend, device,
          threads, verbose):
    """Serve an export (default ./ncis_export) with a real Triton Inference Server (bundled by nvidia-pytriton;
    needs ncis-deploy[serve]) as model `ncis_purifier`: tensors `input` -> `output`, float NCHW in [0, 1], dynamic
    batching. Runs until Ctrl-C or SIGTERM, then stops the server and removes its workspace.

    The same model name and tensors as `export --triton` writes, so export/python/triton_client.py works against
    both this server and the official Triton container serving the exported repository.
    """
    from ncis_deploy.serve import ServeOptions, serve_forever

    opts = ServeOptions(export_dir=str(export_dir), host=host, http_port=http_port, grpc_port=grpc_port,
                        metrics_port=metrics_port, max_batch=max_batch, instances=instances,
                        queue_delay_us=queue_delay_us, backend=backend, device=device, threads=threads,
                        verbose=verbose)
    serve_forever(opts, say=lambda msg: click.echo(msg, err=True))


def main() -> None:
    cli(prog_name="ncis-deploy")


if __name__ == "__main__":
    main()
