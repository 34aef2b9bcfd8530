"""``ncis-deploy purify``."""

from __future__ import annotations

from pathlib import Path

import click

from ncis_deploy.cli import default_help, given, purifier_options, resolve_purifier_source, user_errors
from ncis_deploy.purify import DEFAULT_ARTIFACTS, purify_paths
from ncis_deploy.runners.openvino import PRECISIONS

OPTIONS = purify_paths  # where this command's defaults live (--out has none there: it stays here)
_d = default_help(OPTIONS)


@click.command()
@click.argument("inputs", nargs=-1, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=Path("purified"), show_default=True,
              help="Output directory for the purified PNGs.")
@purifier_options
@click.option("--backend", type=click.Choice(["torch", "onnxruntime", "openvino", "tensorrt"]), default=None,
              help="torch runs the purifier itself; onnxruntime / openvino / tensorrt run an exported artifact "
                   "(--model)." + _d("backend"))
@click.option("--model", type=click.Path(path_type=Path), default=None,
              help="Exported artifact for onnxruntime / openvino (.onnx) or tensorrt (.engine) "
                   f"[default: {DEFAULT_ARTIFACTS['onnxruntime']} or {DEFAULT_ARTIFACTS['tensorrt'].suffix}; openvino "
                   "--precision int8: the export's int8 .onnx].")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None,
              help="openvino only: auto picks bf16 where the CPU has native BF16 (the BSN in bf16, GS and the baseline "
                   "f32), else f32; int8 runs the "
                   "`export --int8` artifact." + _d("precision"))
@click.option("--device", type=str, default=None,
              help="cpu, cuda or cuda:N; for onnxruntime also 'tensorrt' (its TensorRT execution provider)."
                   + _d("device"))
@click.option("--plugin-lib", "plugin_libraries", type=click.Path(path_type=Path), multiple=True,
              help="TensorRT plugin library the engine needs (an `export --smoothing plugin` engine); repeatable.")
@click.option("--side-by-side", is_flag=True, default=None,
              help="Also write NAME_compare.png: the input and the purified image side by side, same scale.")
@user_errors
def purify(inputs, out, preset, config_path, weights, backend, model, precision, device, plugin_libraries,
           side_by_side):
    """Purify images (files or folders; default: the bundled hold-out photos) and write PNGs to --out."""
    written = purify_paths(list(inputs), out, resolve_purifier_source(preset, config_path, weights), weights,
                           **given(device=device, backend=backend, model=model, plugin_libraries=plugin_libraries,
                                   precision=precision, side_by_side=side_by_side))
    click.echo(f"wrote {len(written)} purified image(s) to {out}"
               + (" with a NAME_compare.png (input | purified) for each" if side_by_side else ""))
