"""``ncis-deploy doctor``."""

from __future__ import annotations

import json

import click

from ncis_deploy.cli import user_errors

OPTIONS = None  # --json only: nothing with a default


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of a table.")
@user_errors
def doctor(as_json):
    """Show which backends, ONNX Runtime execution providers and GPUs are really usable on this machine
    (each provider is checked on a live session, not just listed), and the CPU's ISA flags and native precisions."""
    from ncis_deploy.doctor import render, report

    r = report()
    click.echo(json.dumps(r, indent=2, default=str) if as_json else render(r))
