"""``ncis-deploy bench``: trtexec-style latency and throughput of the purifier on every backend.

>>> from ncis_deploy.bench import BenchOptions, run_bench, render_markdown
>>> report = run_bench(BenchOptions(preset="gs", batches=(1, 4), height=64, width=64, duration_s=0.5))
>>> print(render_markdown(report))

Modules: :mod:`.stats` (trtexec's statistics, pure functions), :mod:`.harness` (warm-up, timed and interleaved
loops), :mod:`.targets` (one adapter per backend and device), :mod:`.stages` (``--stages``), :mod:`.diffpure` (the
DiffPure-class UNet stand-in), :mod:`.schema` (the report's JSON schema and a validator), :mod:`.report`
(Markdown and PNG), :mod:`.core` (:func:`run_bench`).
"""

from ncis_deploy.bench.core import BenchOptions, run_bench
from ncis_deploy.bench.report import plot, render_markdown
from ncis_deploy.bench.schema import FORMAT, FORMAT_VERSION, SCHEMA, SchemaError, validate
from ncis_deploy.bench.stats import summarize

__all__ = ["BenchOptions", "FORMAT", "FORMAT_VERSION", "SCHEMA", "SchemaError", "plot", "render_markdown",
           "run_bench", "summarize", "validate"]
