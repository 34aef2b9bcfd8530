"""``ncis-deploy serve``."""

from __future__ import annotations

from pathlib import Path

import click

from ncis_deploy.cli import default_help, given, user_errors
from ncis_deploy.exporters.manifest import BACKEND_ARTIFACT
from ncis_deploy.runners.openvino import PRECISIONS
from ncis_deploy.serve import ServeOptions

OPTIONS = ServeOptions  # where this command's defaults live
_d = default_help(OPTIONS)


@click.command(help=f"""Serve an export (default ./{ServeOptions.export_dir}) with a real Triton Inference Server
    (bundled by nvidia-pytriton; needs ncis-deploy[serve]) as model `ncis_purifier`: tensors `input` -> `output`,
    float NCHW in [0, 1], dynamic batching. Runs until Ctrl-C or SIGTERM, then stops the server and removes its
    workspace.

    The same model name and tensors as `export --triton` writes, so export/python/triton_client.py works against
    both this server and the official Triton container serving the exported repository.
    """)
@click.argument("export_dir", type=click.Path(path_type=Path), required=False)
@click.option("--host", default=None,
              help="Address to listen on. Loopback by default; 0.0.0.0 exposes the server to the network."
                   + _d("host"))
@click.option("--http-port", type=int, default=None, help="HTTP/REST port (KServe v2 protocol)." + _d("http_port"))
@click.option("--grpc-port", type=int, default=None, help="gRPC port." + _d("grpc_port"))
@click.option("--metrics-port", type=int, default=None, help="Prometheus metrics port." + _d("metrics_port"))
@click.option("--max-batch", type=int, default=None, help="Largest dynamic batch [default: the export's --batch MAX].")
@click.option("--instances", type=int, default=None,
              help="Model instances (each its own runner), so batches run concurrently." + _d("instances"))
@click.option("--queue-delay-us", type=int, default=None,
              help="Dynamic batching: how long a request may wait for others to join its batch." + _d("queue_delay_us"))
@click.option("--backend", type=click.Choice(["onnxruntime", "openvino", "tensorrt"]), default=None,
              help=f"Runner behind the server: onnxruntime ({BACKEND_ARTIFACT['onnxruntime']}), openvino "
                   f"({BACKEND_ARTIFACT['openvino']}, CPU) or tensorrt ({BACKEND_ARTIFACT['tensorrt']}, GPU)."
                   + _d("backend"))
@click.option("--device", default=None, help="onnxruntime device: cpu, cuda or cuda:N." + _d("device"))
@click.option("--threads", type=int, default=None, help="Threads per onnxruntime / openvino instance [default: "
                                                        "cores / instances].")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None,
              help="openvino only: auto picks bf16 where the CPU has native BF16 (the BSN in bf16, GS and the baseline "
                   "f32), else f32; int8 serves the export's "
                   "`--int8` artifact." + _d("precision"))
@click.option("--verbose", is_flag=True, default=None, help="Show tritonserver's own log.")
@user_errors
def serve(export_dir, host, http_port, grpc_port, metrics_port, max_batch, instances, queue_delay_us, backend, device,
          threads, precision, verbose):
    from ncis_deploy.serve import serve_forever

    opts = ServeOptions(**given(export_dir=str(export_dir) if export_dir is not None else None, host=host,
                                http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
                                max_batch=max_batch, instances=instances, queue_delay_us=queue_delay_us,
                                backend=backend, device=device, threads=threads, precision=precision,
                                verbose=verbose))
    serve_forever(opts, say=lambda msg: click.echo(msg, err=True))
