"""``ncis-deploy purify``."""

from __future__ import annotations

from pathlib import Path

import click

from ncis_deploy.cli import default_help, given, purifier_options, resolve_purifier_source, user_errors
from ncis_deploy.purify import DEFAULT_ARTIFACTS, purify_paths

OPTIONS = purify_paths  # where this command's defaults live (--out has none there: it stays here)
_d = default_help(OPTIONS)


@click.command()
@click.argument("inputs", nargs=-1, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=Path("purified"), show_default=True,
              help="Output directory for the purified PNGs.")
@purifier_options
@click.option("--backend", type=click.Choice(["torch", "onnxruntime", "tensorrt"]), default=None,
              help="torch runs the purifier itself; onnxruntime / tensorrt run an exported artifact (--model)."
                   + _d("backend"))
@click.option("--model", type=click.Path(path_type=Path), default=None,
              help="Exported artifact for onnxruntime (.onnx) or tensorrt (.engine) "
                   f"[default: {DEFAULT_ARTIFACTS['onnxruntime']} or {DEFAULT_ARTIFACTS['tensorrt'].suffix}].")
@click.option("--device", type=str, default=None,
              help="cpu, cuda or cuda:N; for onnxruntime also 'tensorrt' (its TensorRT execution provider)."
                   + _d("device"))
@click.option("--plugin-lib", "plugin_libraries", type=click.Path(path_type=Path), multiple=True,
              help="TensorRT plugin library the engine needs (an `export --smoothing plugin` engine); repeatable.")
@user_errors
def purify(inputs, out, preset, config_path, weights, backend, model, device, plugin_libraries):
    """Purify images (files or folders; default: the bundled hold-out photos) and write PNGs to --out."""
    written = purify_paths(list(inputs), out, resolve_purifier_source(preset, config_path, weights), weights,
                           **given(device=device, backend=backend, model=model, plugin_libraries=plugin_libraries))
    click.echo(f"wrote {len(written)} purified image(s) to {out}")
