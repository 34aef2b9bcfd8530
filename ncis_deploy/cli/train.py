"""``ncis-deploy train``."""

from __future__ import annotations

from pathlib import Path

import click

from ncis_deploy.cli import defaults_of, user_errors, write_outputs
from ncis_deploy.model.bsn import BASELINES, TAPS
from ncis_deploy.train import INPUT_GS_ITERATIONS, SCHEDULES, TARGETS, TrainConfig

OPTIONS = TrainConfig  # where this command's defaults live


_DEFAULTS = defaults_of(OPTIONS)


def _d(name: str) -> str:
    """' (default: X)': train's help has always said it this way."""
    return f" (default: {_DEFAULTS[name]})"


@click.command()
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
@click.option("--baseline", type=click.Choice(list(BASELINES)), default=None,
              help="The blind predictor the network corrects (training starts at it): mean4 = 4-neighbour mean; "
                   "bilateral = blind bilateral over the 7×7 neighbours; none: plain FBI-Net." + _d("baseline"))
@click.option("--lr", type=float, default=None, help="Adam peak learning rate." + _d("lr"))
@click.option("--schedule", type=click.Choice(list(SCHEDULES)), default=None,
              help="cosine: linear warm-up then cosine to zero; step: halved at 50% and 75%." + _d("schedule"))
@click.option("--warmup", type=int, default=None, help="Warm-up steps of the cosine schedule." + _d("warmup"))
@click.option("--seed", type=int, default=None, help="Seed for init, crops and noise." + _d("seed"))
@click.option("--device", type=str, default=None, help="cpu or cuda (AMP is used on cuda)." + _d("device"))
@click.option("--noise", type=float, default=None,
              help="Input-noise augmentation: std drawn from [0, NOISE]/255 per crop; 0 turns it off." + _d("noise"))
@click.option("--input", "input_kind", type=click.Choice(list(INPUT_GS_ITERATIONS)), default=None,
              help="What the network sees: raw noisy crops, Gaussian-smoothed ones (GS k3 σ1, T 1..5 per crop: what "
                   "the BSN stage of a GS+BSN purifier receives), or mixed (both, see --gs-share)." + _d("input"))
@click.option("--gs-share", type=float, default=None,
              help="With --input mixed: the share of crops smoothed (T 1..5), the rest raw. Default: T drawn from "
                   "0..5, a share of 5/6.")
@click.option("--init", type=str, default=None,
              help="Start from these BSN weights instead of a random init (fine-tuning): a .safetensors file, a "
                   "purifier directory, or 'default' (the shipped weights; --layers 17 --filters 32). The learning "
                   "rate schedule starts over.")
@click.option("--target", type=click.Choice(list(TARGETS)), default=None,
              help="self: predict the input (plain self-supervised blind-spot loss); clean: predict the noise-free, "
                   "unsmoothed crop." + _d("target"))
@click.option("--augment/--no-augment", default=None,
              help="Flips, 90° rotations, channel permutations, brightness/contrast/colour jitter." + _d("augment"))
@click.option("--taps", type=click.Choice(list(TAPS)), default=None,
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
    from ncis_deploy.train import train as run_train

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
