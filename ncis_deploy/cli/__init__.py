"""The ``ncis-deploy`` command line: thin shells over library functions, one module per command.

A :class:`~ncis_deploy.errors.UserError` becomes one line on stderr and its exit code (2, or 130 for Ctrl-C);
any other exception is a bug and keeps its traceback.

Defaults are declared once, in the library: each command's options dataclass (or function signature). A click
option defaults to None, meaning "not given, use the library's"; its --help shows the library's value
(:func:`default_help`), so the two cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import sys
from pathlib import Path

import click

from ncis_deploy import __version__
from ncis_deploy.errors import UserError
from ncis_deploy.model.purifier import DEFAULT_PRESET, PRESETS


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


# ---------------------------------------------------------------------------------------------------------- defaults
def defaults_of(owner) -> dict:
    """Name -> default of an options dataclass's fields, or of a function's parameters: where a command's defaults
    live."""
    if dataclasses.is_dataclass(owner):
        return {f.name: f.default for f in dataclasses.fields(owner) if f.default is not dataclasses.MISSING}
    return {n: p.default for n, p in inspect.signature(owner).parameters.items() if p.default is not p.empty}


def shown(value, name: str = "") -> str:
    """A default as click's show_default prints it; a boolean as its flag (--parity/--no-parity: 'parity')."""
    if isinstance(value, bool):
        flag = name.replace("_", "-")
        return flag if value else f"no-{flag}"
    if isinstance(value, (tuple, list)):
        return ", ".join(map(str, value))
    return str(value)


def default_help(owner):
    """``_d(name)`` -> '  [default: X]', X being ``owner``'s default for ``name``, to end an option's help with: the
    text click's show_default would append, for an option whose own default is None."""
    defaults = defaults_of(owner)

    def _d(name: str, fmt=None) -> str:
        value = defaults[name]
        return f"  [default: {fmt(value) if fmt else shown(value, name)}]"

    return _d


def given(**values) -> dict:
    """The options the user gave: None (or an empty repeatable option) means "the library's default"."""
    return {k: v for k, v in values.items() if v is not None and v != ()}


# ------------------------------------------------------------------------------------------------- shared options
def purifier_options(fn):
    """--preset / --config / --weights, shared by every command that loads a purifier."""
    fn = click.option("--weights", type=click.Path(dir_okay=True, path_type=Path), default=None,
                      help="BSN weights (.safetensors, or a directory written by `train`); default: the shipped ones.")(fn)
    fn = click.option("--config", "config_path", type=click.Path(path_type=Path), default=None,
                      help="Purifier config: a purifier.json file or a directory written by `train`.")(fn)
    fn = click.option("--preset", type=str, default=None,
                      help=f"Preset purifier: {', '.join(PRESETS)} (default: {DEFAULT_PRESET}).")(fn)
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


def command_line(ctx) -> str:
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


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, "--version", prog_name="ncis-deploy")
def cli():
    """NCIS adversarial purification: train the blind-spot network, export the fused purifier to ONNX/TensorRT,
    benchmark every backend and evaluate robustness.

    Every command runs with zero arguments on the bundled defaults; `ncis-deploy COMMAND --help` explains it.
    """


def main() -> None:
    cli(prog_name="ncis-deploy")


# The command modules import the helpers above, so they come last.
from ncis_deploy.cli import bench, doctor, export, purify, serve, train  # noqa: E402
from ncis_deploy.cli import eval as evaluate  # noqa: E402  (not `eval`: that would shadow the builtin here)

for _command in (bench.bench, doctor.doctor, evaluate.eval_cmd, export.export, purify.purify, serve.serve,
                 train.train):
    cli.add_command(_command)
