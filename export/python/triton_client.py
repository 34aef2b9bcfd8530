#!/usr/bin/env python3
"""Purify an image with a Triton Inference Server serving an ncis-deploy purifier (HTTP or gRPC).

Needs only numpy, Pillow and tritonclient (pip install 'tritonclient[http,grpc]'); copy it into your own pipeline.
Works against `ncis-deploy serve` and against the official Triton container serving `export --triton`'s repository:
both publish model `ncis_purifier` with tensors `input` -> `output`, float32 NCHW [N, 3, H, W] RGB in [0, 1].

    python triton_client.py IN.png OUT.png                                   # HTTP, localhost:8000
    python triton_client.py IN.jpg OUT.png --protocol grpc --url localhost:8001
    python triton_client.py IN.jpg OUT.png --model ncis_purifier_trt --resize

A server model exported for a fixed size refuses other sizes unless --resize is given (resize to the model size,
purify, resize back, bicubic both ways). Exit code 2 = a problem with the inputs or the server, on one line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

DTYPES = {"FP32": np.float32, "FP16": np.float16}


class InputError(Exception):
    """Something the user can fix; printed on one line, exit code 2."""


def connect(protocol: str, url: str):
    """(client module, client) for ``protocol``; the server must be live and the model ready."""
    if protocol == "grpc":
        import tritonclient.grpc as tc
    else:
        import tritonclient.http as tc
    from tritonclient.utils import InferenceServerException

    try:
        client = tc.InferenceServerClient(url)
        live = client.is_server_live()
    except (InferenceServerException, OSError, ConnectionError) as e:
        raise InputError(f"no Triton server at {url} ({protocol}): {str(e).splitlines()[0] if str(e) else e}") from None
    if not live:
        raise InputError(f"the Triton server at {url} is not live")
    return tc, client


def model_input(client, protocol: str, model: str) -> tuple[str, str, int | None, int | None]:
    """(input name, Triton datatype, fixed H or None, fixed W or None) from the server's model metadata."""
    from tritonclient.utils import InferenceServerException

    try:
        if not client.is_model_ready(model):
            raise InputError(f"model {model!r} is not ready on the server (check its name and the server log)")
        meta = client.get_model_metadata(model)
    except InferenceServerException as e:
        raise InputError(f"model {model!r}: {e.message()}") from None
    inputs = meta["inputs"] if protocol == "http" else [
        {"name": i.name, "datatype": i.datatype, "shape": list(i.shape)} for i in meta.inputs]
    if len(inputs) != 1 or len(inputs[0]["shape"]) != 4:
        raise InputError(f"model {model!r} does not take one NCHW image tensor: {inputs}")
    shape = [int(d) for d in inputs[0]["shape"]]
    h, w = (d if d > 0 else None for d in shape[2:])
    return inputs[0]["name"], inputs[0]["datatype"], h, w


def purify(tc, client, model: str, name: str, datatype: str, x: np.ndarray) -> np.ndarray:
    """The whole contract: float NCHW [N, 3, H, W] in [0, 1] in, the same out."""
    from tritonclient.utils import InferenceServerException

    inp = tc.InferInput(name, list(x.shape), datatype)
    inp.set_data_from_numpy(x.astype(DTYPES[datatype]))
    try:
        result = client.infer(model, [inp], outputs=[tc.InferRequestedOutput("output")])
    except InferenceServerException as e:
        raise InputError(f"the server refused the request: {e.message()}") from None
    return result.as_numpy("output").astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("image", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--protocol", choices=("http", "grpc"), default="http")
    ap.add_argument("--url", default=None, help="host:port (default localhost:8000 for http, localhost:8001 for grpc)")
    ap.add_argument("--model", default="ncis_purifier", help="model name on the server (default: ncis_purifier)")
    ap.add_argument("--resize", action="store_true", help="resize to a fixed-size model and back")
    a = ap.parse_args(argv)
    url = a.url or ("localhost:8001" if a.protocol == "grpc" else "localhost:8000")
    try:
        try:
            img = Image.open(a.image).convert("RGB")
        except (OSError, ValueError) as e:
            raise InputError(f"cannot read image {a.image}: {e}") from None
        tc, client = connect(a.protocol, url)
        try:
            name, datatype, h, w = model_input(client, a.protocol, a.model)
            size = img.size
            if h is not None and (img.height, img.width) != (h, w):
                if not a.resize:
                    raise InputError(f"{a.image} is {img.width}x{img.height} but model {a.model!r} takes {w}x{h}; "
                                     "pass --resize or serve an export made with --dynamic-hw")
                img = img.resize((w, h), Image.BICUBIC)
            x = (np.asarray(img, dtype=np.float32) / 255.0).transpose(2, 0, 1)[None]
            y = purify(tc, client, a.model, name, datatype, x)
        finally:
            client.close()
        out = Image.fromarray((np.clip(y[0].transpose(1, 2, 0), 0, 1) * 255 + 0.5).astype(np.uint8))
        if out.size != size:
            out = out.resize(size, Image.BICUBIC)
        a.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = a.out.with_name(f".{a.out.name}.tmp")
        out.save(tmp, format="PNG")
        tmp.replace(a.out)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{a.image} -> {a.out} via {a.protocol}://{url}/{a.model}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
