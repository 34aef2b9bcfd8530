"""``ncis-deploy eval``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ncis_deploy.cli import command_line, default_help, given, user_errors, write_outputs
from ncis_deploy.data import PHOTO_SPLITS
from ncis_deploy.errors import UserError
from ncis_deploy.eval.backends import backend_choices
from ncis_deploy.eval.core import EvalOptions, _fmt_eps
from ncis_deploy.eval.sweep import DEFAULT_EPS as SWEEP_EPS, DEFAULT_GRID

OPTIONS = EvalOptions  # where this command's defaults live
_d = default_help(OPTIONS)
_GRID_LETTERS = {"kernel_size": "k", "sigma": "σ", "iterations": "T", "bsn_iterations": "BSN"}


def _eps_list(values) -> str:
    return ", ".join(map(_fmt_eps, values))


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


@click.command(name="eval")
@click.option("--classifier", default=None,
              help="efficientnet-lite0, an import path package.module:factory, a TorchScript file or an .onnx file "
                   "(ONNX: clean, parity and transfer only; no gradients)." + _d("classifier"))
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="Folder with one sub-folder per class index (e.g. 281/ or 281_tabby/). Default: the bundled "
                   "photos, labelled by the undefended clean top-1 (reported as agreement).")
@click.option("--labels", type=click.Path(path_type=Path), default=None, help="CSV of path,label (paths relative to it).")
@click.option("--preset", "presets", multiple=True, help="Preset(s) or purifier dirs to evaluate (repeatable). "
              f"Default: {', '.join(EvalOptions.presets)}.")
@click.option("--weights", type=click.Path(path_type=Path), default=None, help="BSN weights for presets with a BSN.")
@click.option("--attack", "attacks", multiple=True,
              help="fgsm, pgd, pgd-l2, mifgsm (purifier-blind); transfer; adaptive, bpda (adaptive). Repeatable. "
                   "Default: pgd, transfer (when there is a surrogate: --surrogate, or the built-in ghost ensemble "
                   "for efficientnet-lite0) and adaptive.")
@click.option("--eps", multiple=True,
              help="ℓ∞ radius of purifier-blind and transfer attacks, e.g. 8/255 (repeatable). Default: "
                   f"{_eps_list(EvalOptions.eps)} (the sweep: {_eps_list(SWEEP_EPS)}).")
@click.option("--adaptive-eps", multiple=True,
              help="ℓ∞ radius of adaptive attacks (repeatable; each costs one attack through every purifier). "
                   f"Default: {_eps_list(EvalOptions.adaptive_eps)}.")
@click.option("--eps-l2", type=float, default=None, help="ℓ2 radius for pgd-l2." + _d("eps_l2"))
@click.option("--steps", type=int, default=None, help="PGD steps for purifier-blind attacks." + _d("steps"))
@click.option("--adaptive-steps", type=int, default=None,
              help="PGD steps for adaptive attacks (each backpropagates through the BSN: costly on CPU)."
                   + _d("adaptive_steps"))
@click.option("--adaptive-images", type=int, default=None, help="Images for adaptive attacks." + _d("adaptive_images"))
@click.option("--transfer-steps", type=int, default=None,
              help="MI-FGSM steps (transfer, mifgsm)." + _d("transfer_steps"))
@click.option("--surrogate", "surrogates", multiple=True,
              help="Surrogate classifier(s) for the transfer attack (same forms as --classifier, or "
                   "efficientnet-lite0-ghost). Default for efficientnet-lite0: efficientnet-lite0-ghost, ghost copies "
                   "of the target itself (a stronger attack than a true black box).")
@click.option("--eot", type=int, default=None, help="EOT samples (only useful for a random stage)." + _d("eot"))
@click.option("--crops", type=int, default=None, help="Crops per bundled photo (11 photos)." + _d("crops"))
@click.option("--photos", type=click.Choice(PHOTO_SPLITS), default=None,
              help="Bundled photos to crop: all 11, or the BSN trainer's split (train: its 9 training photos; "
                   "holdout: china and flower, never trained on)." + _d("photos"))
@click.option("--min-confidence", type=float, default=None, metavar="P",
              help="Keep only bundled crops whose undefended clean top-1 probability is >= P (chosen on the clean "
                   "image, before any purifier): agreement on near-tie crops flips with any change of the image."
                   + _d("min_confidence"))
@click.option("--images", type=int, default=None, help="Use at most this many images (spread over the set).")
@click.option("--size", type=int, default=None, help="Square evaluation size." + _d("size"))
@click.option("--batch", type=int, default=None,
              help="Images per forward/backward batch (4 is fastest on a CPU: the BSN's activations are large)."
                   + _d("batch"))
@click.option("--seed", type=int, default=None, help="Seed for crops, random starts and DI." + _d("seed"))
@click.option("--parity/--no-parity", default=None, help="Compare ORT vs torch purification." + _d("parity"))
@click.option("--backend", "backends", multiple=True, metavar="NAME[:PRECISION]",
              help="Also purify the clean and purifier-blind / transfer adversarial images with this backend and "
                   f"precision ({backend_choices()}; repeatable) and report clean and robust agreement, top-1 "
                   "agreement and PSNR against the FP32 torch purifier, with the low-precision guards. Adaptive "
                   "attacks stay torch-only.")
@click.option("--export", "export_dir", type=click.Path(path_type=Path), default=None,
              help="Export directory the --backend runs read their artifacts from (int8: one made with `ncis-deploy "
                   "export --int8`); its purifier must be one of the --preset. Default: each preset's FP32 ONNX, "
                   "built by the run.")
@click.option("--sweep", is_flag=True,
              help="Instead: clean vs purifier-blind robust agreement over a grid of GS (kernel, sigma, iterations) "
                   "and BSN iterations (the first --eps, --steps PGD steps), to choose presets by measurement.")
@click.option("--grid", "grid_specs", multiple=True, metavar="KEY=V1,V2",
              help="Sweep only these values (repeatable): kernel_size, sigma, iterations, bsn_iterations "
                   "(iterations 0: the BSN alone, measured once); keys not given keep the default grid ("
                   + "; ".join(f"{_GRID_LETTERS[k]} {','.join(f'{v:g}' for v in vs)}" for k, vs in DEFAULT_GRID.items())
                   + ").")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None, help="Write the report as JSON.")
@click.option("--report", type=click.Path(path_type=Path), default=None, metavar="DIR",
              help="Write DIR/index.html (opens from disk): the tables, the plot, the settings and per image clean | "
                   "adversarial | perturbation | purified by each preset | what each removed, with class names; the "
                   "attack shown is PGD at the --eps nearest 8/255, reused from the run.")
@click.option("--save-adversarial", type=click.Path(path_type=Path), default=None, metavar="DIR",
              help="Write the adversarial set to DIR as 8-bit PNGs (within ε after rounding; the eval measures these) "
                   "with each preset's purified versions and labels.csv, e.g. to benchmark an image API.")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), default=None,
              help="Plot robust rate vs ε per preset and threat model (sweep: clean vs robust scatter; needs "
                   "matplotlib).")
@click.pass_context
@user_errors
def eval_cmd(ctx, classifier, data, labels, presets, weights, attacks, eps, adaptive_eps, eps_l2, steps,
             adaptive_steps, adaptive_images, transfer_steps, surrogates, eot, crops, photos, min_confidence, images,
             size, batch, seed, parity, backends, export_dir, sweep, grid_specs, json_path, report, save_adversarial,
             plot_path):
    """Accuracy parity and robustness of each purifier preset under purifier-blind, transfer and adaptive attacks.

    With no arguments: efficientnet-lite0 on 22 crops of the bundled photos, presets none / gs / ncis, clean,
    purifier-blind PGD at 2, 4, 8 and 16/255 (10 steps), a transfer attack (MI-FGSM + DI + TI, 10 steps, same ε)
    from ghost copies of the classifier, adaptive (full-gradient) PGD at 8/255 on an 8-image subset (5 steps: each
    step backpropagates through the BSN), and ORT-vs-torch parity.
    Sanity checks from the literature run every time and print a warning when they fail.
    """
    from ncis_deploy.eval import plot, render_markdown, run_eval

    opts = EvalOptions(**given(
        classifier=classifier, data=str(data) if data else None, labels=str(labels) if labels else None,
        presets=tuple(presets), attacks=tuple(attacks),
        eps=tuple(_parse_eps(e) for e in eps) or (SWEEP_EPS if sweep else None),
        adaptive_eps=tuple(_parse_eps(e, "--adaptive-eps") for e in adaptive_eps), eps_l2=eps_l2, steps=steps,
        adaptive_steps=adaptive_steps, adaptive_images=adaptive_images, transfer_steps=transfer_steps,
        surrogates=tuple(surrogates), eot=eot, crops=crops, photos=photos, min_confidence=min_confidence,
        images=images, size=size, batch=batch, seed=seed, parity=parity, weights=str(weights) if weights else None,
        backends=tuple(backends),
        export_dir=str(export_dir) if export_dir else None, report=str(report) if report else None,
        save_adversarial=str(save_adversarial) if save_adversarial else None))
    say = lambda msg: click.echo(f"  {msg}", err=True)  # noqa: E731
    if grid_specs and not sweep:
        raise UserError("--grid only applies to --sweep; add --sweep or drop --grid")
    if sweep and (backends or export_dir):
        raise UserError("--backend and --export apply to plain eval, not --sweep; drop them or --sweep")
    if sweep and (report or save_adversarial):
        raise UserError("--report and --save-adversarial apply to plain eval, not --sweep; drop them or --sweep")
    if sweep:
        from ncis_deploy.eval.sweep import parse_grid, plot_sweep, render_sweep, run_sweep

        grid = parse_grid(grid_specs)
        if plot_path:
            _require_matplotlib()
        report = run_sweep(opts, grid=grid, progress=say, command=command_line(ctx))
        click.echo(render_sweep(report))
        plot_fn = plot_sweep
    else:
        if plot_path:
            _require_matplotlib()
        report = run_eval(opts, progress=say, bars=sys.stderr.isatty(), command=command_line(ctx))
        click.echo(render_markdown(report))
        plot_fn = plot
    write_outputs(report, json_path, plot_path, plot_fn)
