"""``ncis-deploy bench``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ncis_deploy.bench.core import DEFAULT_BATCHES, DEFAULT_DURATION_S, DEFAULT_HW, BenchOptions
from ncis_deploy.cli import command_line, default_help, given, user_errors, write_outputs
from ncis_deploy.exporters.manifest import DEFAULT_DIR, ONNX_INT8

OPTIONS = BenchOptions  # where this command's defaults live
_d = default_help(OPTIONS)


@click.command(help=f"""Latency and throughput of the purifier on every backend, trtexec-style: throughput, latency
    min / mean / median / p90 / p95 / p99 / max, on GPU the H2D / compute / D2H split, peak memory, and a variance
    warning.

    With no arguments: the default export (./{DEFAULT_DIR}, exported first if missing) on every backend × precision
    usable here, each measured interleaved with ONNX Runtime FP32 on the CPU (ratios in one run, quality guards for
    every bf16 / int8 target), batches {' and '.join(map(str, DEFAULT_BATCHES))}, plus a stand-in DiffPure-class row
    for context. Prints a Markdown table.
    """)
@click.argument("export_dir", required=False, type=click.Path(path_type=Path))
@click.option("--preset", type=str, default=None,
              help="Benchmark a preset (none, gs, ncis), exported in memory, instead of an export directory.")
@click.option("--backend", "backends", multiple=True, metavar="B",
              help="torch, onnxruntime, tensorrt or openvino, optionally with a device and a precision "
                   "(backend[:device][:precision]): torch:cpu, torch:cuda, onnxruntime:cpu, onnxruntime:cuda, "
                   "onnxruntime:tensorrt (its TensorRT provider), onnxruntime:cpu:int8, openvino (f32), openvino:bf16, "
                   f"openvino:int8 (int8 runs an export's {ONNX_INT8}). Repeatable. "
                   "[default: every backend and precision usable here]")
@click.option("--batch", "batches", type=int, multiple=True, metavar="N",
              help=f"Batch size; repeatable. [default: {' and '.join(map(str, DEFAULT_BATCHES))}]")
@click.option("--height", type=int, default=None, help=f"Image height [default: the export's, else {DEFAULT_HW}].")
@click.option("--width", type=int, default=None, help=f"Image width [default: the export's, else {DEFAULT_HW}].")
@click.option("--warmup", "warmup_ms", type=float, default=None, metavar="MS",
              help="Warm-up per case in milliseconds (at least one input-checked call)." + _d("warmup_ms"))
@click.option("--duration", "duration_s", type=float, default=None, metavar="S",
              help=f"Timed seconds per case, at least 3 iterations [default: {DEFAULT_DURATION_S:g}].")
@click.option("--iterations", type=int, default=None, metavar="N",
              help="Exactly N timed iterations per case, instead of --duration.")
@click.option("--threads", type=int, default=None,
              help="CPU threads for torch, onnxruntime and openvino [default: their own].")
@click.option("--cuda-graph", is_flag=True, default=None,
              help="GPU: replay each query as a CUDA graph (trtexec --useCudaGraph).")
@click.option("--no-data-transfers", is_flag=True, default=None,
              help="GPU: input and output stay on the device, only compute is timed (trtexec --noDataTransfers).")
@click.option("--stages", is_flag=True, default=None,
              help="Also time GS and each BSN pass on their own (torch, onnxruntime).")
@click.option("--vs", type=str, default=None, metavar="B",
              help="Measure the backends interleaved with B in one run and report the throughput ratio per batch; "
                   "'none' measures them one after another. [default: onnxruntime:cpu when --backend is not given "
                   "and it is usable, else none]")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None,
              help="Write the report as JSON (its schema: --schema).")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), default=None,
              help="Write a PNG: latency vs batch per backend, and the stage breakdown.")
@click.option("--diffpure/--no-diffpure", default=None,
              help="Add the stand-in context row: a DiffPure-class UNet with random weights, one step timed at "
                   "batch 1, times --diffpure-steps." + _d("diffpure"))
@click.option("--diffpure-width", type=int, default=None,
              help="Stand-in base channels; 256 is the full ~553M-parameter size." + _d("diffpure_width"))
@click.option("--diffpure-size", type=int, default=None, help="Stand-in image size." + _d("diffpure_size"))
@click.option("--diffpure-steps", type=int, default=None,
              help="Network evaluations per purified image (the multiplier)." + _d("diffpure_steps"))
@click.option("--schema", "print_schema", is_flag=True, help="Print the JSON schema of the report and exit.")
@click.pass_context
@user_errors
def bench(ctx, export_dir, preset, backends, batches, height, width, warmup_ms, duration_s, iterations, threads,
          cuda_graph, no_data_transfers, stages, vs, json_path, plot_path, diffpure, diffpure_width, diffpure_size,
          diffpure_steps, print_schema):
    from ncis_deploy.bench import plot, render_markdown, run_bench
    from ncis_deploy.bench.schema import SCHEMA

    if print_schema:
        click.echo(json.dumps(SCHEMA, indent=2))
        return
    opts = BenchOptions(**given(
        export_dir=str(export_dir) if export_dir else None, preset=preset, backends=tuple(backends),
        batches=tuple(batches), height=height, width=width, warmup_ms=warmup_ms, duration_s=duration_s,
        iterations=iterations, threads=threads, cuda_graph=cuda_graph,
        data_transfers=False if no_data_transfers else None, stages=stages, vs=vs, diffpure=diffpure,
        diffpure_width=diffpure_width, diffpure_size=diffpure_size, diffpure_steps=diffpure_steps))
    report = run_bench(opts, progress=lambda msg: click.echo(f"  {msg}", err=True), command=command_line(ctx))
    click.echo(render_markdown(report))
    write_outputs(report, json_path, plot_path, plot)
