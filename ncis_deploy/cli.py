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
from ncis_deploy.errors import NotAvailableYet, UserError


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


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, "--version", prog_name="ncis-deploy")
def cli():
    """NCIS adversarial purification: train the blind-spot network, export the fused purifier to ONNX/TensorRT,
    benchmark every backend and evaluate robustness.

    Every command runs with zero arguments on the bundled defaults; `ncis-deploy COMMAND --help` explains it.
    """


# ------------------------------------------------------------------------------------------------------------ train
@cli.command()
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="Folder of photos (searched recursively; jpg/png/webp/bmp). Default: the bundled scikit-image photos.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/bsn"), show_default=True,
              help="Output directory: purifier.json + bsn.safetensors (loadable by load_purifier), checkpoints, log.")
@click.option("--steps", type=int, default=2000, show_default=True, help="Optimizer steps in total.")
@click.option("--crop", type=int, default=64, show_default=True, help="Square crop size in pixels.")
@click.option("--batch", type=int, default=8, show_default=True, help="Crops per step.")
@click.option("--layers", type=int, default=17, show_default=True, help="FBI-Net masked conv layers L.")
@click.option("--filters", type=int, default=64, show_default=True, help="FBI-Net feature width F.")
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Adam learning rate (halved at 50% and 75%).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for init, crops and noise.")
@click.option("--device", type=str, default="cpu", show_default=True, help="cpu or cuda (AMP is used on cuda).")
@click.option("--noise", type=float, default=8.0, show_default=True,
              help="Input-noise augmentation: std drawn from [0, NOISE]/255 per crop; 0 turns it off.")
@click.option("--input", "input_kind", type=click.Choice(["raw", "gs"]), default="raw", show_default=True,
              help="Train on raw photos, or on Gaussian-smoothed ones (the NCIS WACV variant).")
@click.option("--eval-every", type=int, default=100, show_default=True, help="Hold-out PSNR every N steps.")
@click.option("--checkpoint-every", type=int, default=50, show_default=True, help="Checkpoint every N steps.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint (exactly).")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None,
              help="Also write the run summary as JSON here.")
@click.pass_context
@user_errors
def train(ctx, data, out, steps, crop, batch, layers, filters, lr, seed, device, noise, input_kind, eval_every,
          checkpoint_every, resume, json_path):
    """Train the blind-spot network, self-supervised, on a folder of photos (default: the bundled ones).

    Ctrl-C finishes the current step, saves a checkpoint and exits 130; `--resume` continues it.
    """
    from ncis_deploy.fileio import write_json
    from ncis_deploy.train import TrainConfig, train as run_train

    cfg = TrainConfig(data=str(data) if data else None, out=str(out), steps=steps, crop=crop, batch=batch,
                      layers=layers, filters=filters, lr=lr, seed=seed, device=device, noise=noise, input=input_kind,
                      eval_every=eval_every, checkpoint_every=checkpoint_every)
    names = {"input_kind": "input"}
    explicit = {names.get(k, k) for k in ctx.params
                if ctx.get_parameter_source(k) == click.core.ParameterSource.COMMANDLINE}
    summary = run_train(cfg, resume=resume, explicit=explicit)
    psnr = summary["holdout_psnr"]
    click.echo(f"trained {summary['steps']} steps in {summary['wall_s']:.1f} s ({summary['images_per_s']:.1f} img/s); "
               f"final loss {summary['final_loss']:.5f}; hold-out PSNR {psnr:.2f} dB at noise 8/255; "
               f"purifier written to {summary['out']}")
    if json_path:
        write_json(json_path, summary)


# ----------------------------------------------------------------------------------------------------------- purify
@cli.command()
@click.argument("inputs", nargs=-1, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=Path("purified"), show_default=True,
              help="Output directory for the purified PNGs.")
@purifier_options
@click.option("--device", type=str, default="cpu", show_default=True, help="cpu or cuda.")
@click.option("--backend", type=click.Choice(["torch"]), default="torch", show_default=True,
              help="Inference backend (onnxruntime and tensorrt arrive with `export`).")
@user_errors
def purify(inputs, out, preset, config_path, weights, device, backend):
    """Purify images (files or folders; default: the bundled hold-out photos) and write PNGs to --out."""
    from ncis_deploy.purify import purify_paths

    written = purify_paths(list(inputs), out, resolve_purifier_source(preset, config_path, weights), weights, device)
    click.echo(f"wrote {len(written)} purified image(s) to {out}")


# ---------------------------------------------------------------------------------------------- later commands
def _not_yet(name: str, what: str):
    @cli.command(name=name, context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
                 help=f"{what} (not available yet in this version).")
    @user_errors
    def cmd():
        raise NotAvailableYet(f"`ncis-deploy {name}` is not available yet in ncis-deploy {__version__}")

    return cmd


_not_yet("export", "Export the fused purifier to ONNX and a TensorRT engine, with parity checks")
_not_yet("bench", "Benchmark latency and throughput of every backend, trtexec-style")
_not_yet("eval", "Evaluate accuracy parity and robustness under attacks")


def main() -> None:
    cli(prog_name="ncis-deploy")


if __name__ == "__main__":
    main()
