"""The TensorRT backend: a serialized engine run with the TensorRT runtime and cuda-python for GPU memory.

Written against the documented APIs — TensorRT 10/11 Python runtime (``Runtime.deserialize_cuda_engine``,
``create_execution_context``, tensors addressed by name: ``num_io_tensors`` / ``get_tensor_name`` /
``get_tensor_mode`` / ``get_tensor_dtype``, ``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``;
binding indices were removed in 10.0) and cuda-python's ``cuda.bindings.runtime`` (the API NVIDIA's own TensorRT
samples use since 10.14; pycuda is not used because it does not build everywhere). Every cuda-python call returns
``(err, value...)``; :func:`cuda_check` turns a non-success code into a RuntimeError naming the call. The
``tensorrt``-marked tests exercise it where both are installed; docs/status.md says where that has happened.

Per ``infer``: set the input shape (only when it changed), grow the device buffers if needed, copy the input to the
device, run ``execute_async_v3`` (or launch the CUDA graph captured for this shape), copy the output back, sync.
With ``use_cuda_graph`` one graph is captured per input shape (TensorRT asks for one plain enqueue after a shape
change before capturing) and re-captured whenever the shape or a buffer address changes. Only the enqueue is in the
graph: the host copies use pageable numpy memory, which stream capture does not allow.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ncis_deploy.errors import UserError, missing_package
from ncis_deploy.runners.base import InputSpec, Runner


def cuda_check(call: str, result: Any) -> Any:
    """Unpack a cuda-python result ``(err, *values)``; raise RuntimeError naming ``call`` if ``err`` is not 0.

    Returns None, the single value, or a tuple of values. ``err`` is a ``cudaError_t`` (an int enum).
    """
    if not isinstance(result, tuple):
        result = (result,)
    err, values = result[0], result[1:]
    if int(err) != 0:
        name = getattr(err, "name", None) or f"error {int(err)}"
        raise RuntimeError(f"CUDA call {call} failed with {name} ({int(err)})")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def import_cudart():
    """cuda-python's runtime module: ``cuda.bindings.runtime`` (cuda-python >= 12.6), else the older location."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # type: ignore[no-redef]  # cuda-python < 12.6
        except ImportError:
            raise missing_package("cuda-python", "trt") from None
    return cudart


def _nptype(trt, dtype) -> np.dtype:
    try:
        return np.dtype(trt.nptype(dtype))
    except Exception:  # nptype raises on types numpy lacks (bf16, fp8...)
        return np.dtype("V1")


class TensorRTRunner(Runner):
    """Run a serialized TensorRT engine (``.engine`` / ``.plan``) built from an ncis-deploy ONNX export.

    ``plugin_libraries``: shared libraries with TensorRT plugins the engine needs (loaded into the plugin registry
    before deserialization). The engine's I/O must be one linear NCHW float32/float16 input and one output.
    """

    name = "tensorrt"

    def __init__(self, engine_path: str | os.PathLike, use_cuda_graph: bool = False,
                 plugin_libraries: Sequence[str | os.PathLike] = (), *, check_range: bool = True):
        super().__init__(check_range=check_range)
        self.path = Path(engine_path)
        self.use_cuda_graph = bool(use_cuda_graph)
        self.plugin_libraries = [Path(p) for p in plugin_libraries]
        self.trt_version: str | None = None
        self._reset()

    def _reset(self) -> None:
        self._trt = self._cudart = None
        self._logger = self._runtime = self._engine = self._context = None
        self._stream = None
        self._in_name = self._out_name = ""
        self._in_dtype = self._out_dtype = np.dtype("float32")
        self._shape: tuple[int, ...] | None = None
        self._out_shape: tuple[int, ...] = ()
        self._buffers: dict[str, tuple[int, int]] = {}  # tensor name -> (device pointer, capacity in bytes)
        self._graph = self._graph_exec = None
        self._plugin_handles: list = []

    # ---- activation
    def activate_impl(self) -> None:
        try:
            import tensorrt as trt
        except ImportError:
            raise missing_package("tensorrt", "trt") from None
        cudart = import_cudart()
        self._trt, self._cudart = trt, cudart
        self.trt_version = getattr(trt, "__version__", "?")
        try:
            self._activate(trt, cudart)
        except BaseException:
            try:
                self.deactivate_impl()  # free whatever was acquired before the failure
            except Exception:
                pass  # the activation error is the one to report
            raise

    def _activate(self, trt, cudart) -> None:
        err, count = cudart.cudaGetDeviceCount()
        if int(err) != 0 or count == 0:
            why = getattr(err, "name", str(err)) if int(err) != 0 else "0 devices"
            raise UserError(f"TensorRT needs a CUDA GPU but none is usable ({why}); check nvidia-smi and the driver")
        if not self.path.is_file():
            raise UserError(f"TensorRT engine {self.path} does not exist")
        self._logger = trt.Logger(trt.Logger.WARNING)
        if hasattr(trt, "init_libnvinfer_plugins"):
            trt.init_libnvinfer_plugins(self._logger, "")
        self._runtime = trt.Runtime(self._logger)
        self._load_plugins(trt)
        data = self.path.read_bytes()
        try:
            self._engine = self._runtime.deserialize_cuda_engine(data)
        except Exception:  # some versions raise instead of returning None; the log above has the detail
            self._engine = None
        if self._engine is None:
            raise UserError(f"TensorRT {self.trt_version} could not deserialize {self.path}: the file is corrupt or "
                            "not an engine, or it was built by a different TensorRT version or for another GPU "
                            "(engines are not portable); rebuild it on this machine")
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise RuntimeError(f"create_execution_context failed for {self.path} (out of GPU memory?)")
        self._read_io(trt)
        self._stream = cuda_check("cudaStreamCreate", cudart.cudaStreamCreate())

    def _load_plugins(self, trt) -> None:
        if not self.plugin_libraries:
            return
        registry = trt.get_plugin_registry()
        for lib in self.plugin_libraries:
            if not lib.is_file():
                raise UserError(f"TensorRT plugin library {lib} does not exist")
            handle = registry.load_library(str(lib)) if hasattr(registry, "load_library") else None
            if handle is None and hasattr(registry, "load_library"):
                raise UserError(f"TensorRT could not load the plugin library {lib}; check that it was built for "
                                f"TensorRT {self.trt_version} and this CUDA version")
            if handle is None:  # very old TensorRT: loading the .so registers its creators
                import ctypes

                handle = ctypes.CDLL(str(lib))
            self._plugin_handles.append(handle)

    def _read_io(self, trt) -> None:
        eng = self._engine
        names = [eng.get_tensor_name(i) for i in range(eng.num_io_tensors)]
        ins = [n for n in names if eng.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outs = [n for n in names if eng.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(ins) != 1 or len(outs) != 1:
            raise UserError(f"engine {self.path} has inputs {ins} and outputs {outs}; an ncis-deploy purifier "
                            "engine has one image input and one image output")
        self._in_name, self._out_name = ins[0], outs[0]
        self._in_dtype = _nptype(trt, eng.get_tensor_dtype(self._in_name))
        self._out_dtype = _nptype(trt, eng.get_tensor_dtype(self._out_name))
        for n, dt in ((self._in_name, self._in_dtype), (self._out_name, self._out_dtype)):
            if dt not in (np.float32, np.float16):
                raise UserError(f"engine tensor '{n}' is {eng.get_tensor_dtype(n)}; expected float32 or float16")
            if hasattr(eng, "get_tensor_format") and eng.get_tensor_format(n) != trt.TensorFormat.LINEAR:
                raise UserError(f"engine tensor '{n}' uses format {eng.get_tensor_format(n)}; rebuild the engine "
                                "with linear (NCHW) I/O formats")
        shape = [int(d) for d in eng.get_tensor_shape(self._in_name)]
        if len(shape) != 4:
            raise UserError(f"engine input '{self._in_name}' has shape {shape}; expected NCHW [N, 3, H, W]")
        lo, hi = shape, shape
        if any(d < 0 for d in shape):
            pmin, _, pmax = eng.get_tensor_profile_shape(self._in_name, 0)
            lo, hi = [int(d) for d in pmin], [int(d) for d in pmax]
        self.input_spec = InputSpec(name=self._in_name, dtype=self._in_dtype.name, channels=shape[1] if shape[1] > 0
                                    else 3, batch=(lo[0], hi[0]), height=(lo[2], hi[2]), width=(lo[3], hi[3]))

    # ---- inference
    def _ensure_buffer(self, name: str, nbytes: int) -> bool:
        """Make the device buffer for ``name`` hold ``nbytes``; True when its address changed."""
        ptr, cap = self._buffers.get(name, (0, 0))
        if nbytes <= cap:
            return False
        cudart = self._cudart
        if ptr:
            cuda_check("cudaFree", cudart.cudaFree(ptr))
            self._buffers.pop(name)
        new = cuda_check("cudaMalloc", cudart.cudaMalloc(max(nbytes, 1)))
        self._buffers[name] = (int(new), nbytes)
        if not self._context.set_tensor_address(name, int(new)):
            raise RuntimeError(f"set_tensor_address({name!r}) failed")
        return True

    def _prepare(self, shape: tuple[int, ...]) -> None:
        ctx = self._context
        if not ctx.set_input_shape(self._in_name, shape):
            raise RuntimeError(f"set_input_shape({self._in_name!r}, {list(shape)}) failed although the shape is "
                               f"inside the engine profile {self.input_spec.describe()}")
        out_shape = tuple(int(d) for d in ctx.get_tensor_shape(self._out_name))
        if any(d < 0 for d in out_shape):
            raise RuntimeError(f"engine output shape {list(out_shape)} is not determined by the input shape")
        self._drop_graph()  # a graph bakes in the shape and the buffer addresses: recapture after any change
        self._ensure_buffer(self._in_name, int(np.prod(shape)) * self._in_dtype.itemsize)
        self._ensure_buffer(self._out_name, int(np.prod(out_shape)) * self._out_dtype.itemsize)
        self._shape, self._out_shape = shape, out_shape

    def _enqueue(self) -> None:
        if not self._context.execute_async_v3(int(self._stream)):
            raise RuntimeError(f"execute_async_v3 failed for {self.path}; see the TensorRT log above")

    def _capture(self) -> None:
        cudart = self._cudart
        self._enqueue()  # TensorRT asks for one plain enqueue after a shape change before capturing
        cuda_check("cudaStreamSynchronize", cudart.cudaStreamSynchronize(self._stream))
        mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        cuda_check("cudaStreamBeginCapture", cudart.cudaStreamBeginCapture(self._stream, mode))
        ok = self._context.execute_async_v3(int(self._stream))
        err, graph = cudart.cudaStreamEndCapture(self._stream)  # always end the capture, even if enqueue failed
        if not ok or int(err) != 0:
            if int(err) == 0 and graph is not None:
                cudart.cudaGraphDestroy(graph)
            raise UserError(f"engine {self.path} cannot be captured in a CUDA graph (enqueue during capture "
                            f"{'failed' if not ok else 'ended with ' + getattr(err, 'name', str(err))}); "
                            "run it without use_cuda_graph")
        self._graph = graph
        self._graph_exec = cuda_check("cudaGraphInstantiate", cudart.cudaGraphInstantiate(graph, 0))

    def _drop_graph(self) -> None:
        cudart = self._cudart
        if self._graph_exec is not None:
            cuda_check("cudaGraphExecDestroy", cudart.cudaGraphExecDestroy(self._graph_exec))
            self._graph_exec = None
        if self._graph is not None:
            cuda_check("cudaGraphDestroy", cudart.cudaGraphDestroy(self._graph))
            self._graph = None

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        cudart = self._cudart
        shape = tuple(int(d) for d in x.shape)
        if shape != self._shape:
            self._prepare(shape)
        d_in, _ = self._buffers[self._in_name]
        d_out, _ = self._buffers[self._out_name]
        kind = cudart.cudaMemcpyKind
        cuda_check("cudaMemcpyAsync(HtoD)", cudart.cudaMemcpyAsync(d_in, x.ctypes.data, x.nbytes,
                                                                   kind.cudaMemcpyHostToDevice, self._stream))
        if self.use_cuda_graph:
            if self._graph_exec is None:
                self._capture()
            cuda_check("cudaGraphLaunch", cudart.cudaGraphLaunch(self._graph_exec, self._stream))
        else:
            self._enqueue()
        y = np.empty(self._out_shape, dtype=self._out_dtype)
        cuda_check("cudaMemcpyAsync(DtoH)", cudart.cudaMemcpyAsync(y.ctypes.data, d_out, y.nbytes,
                                                                   kind.cudaMemcpyDeviceToHost, self._stream))
        cuda_check("cudaStreamSynchronize", cudart.cudaStreamSynchronize(self._stream))
        return y

    # ---- deactivation
    def deactivate_impl(self) -> None:
        """Free graphs, device buffers and the stream, then the context, engine and runtime (in that order)."""
        cudart = self._cudart
        errors: list[str] = []

        def attempt(fn, *args):
            try:
                fn(*args)
            except Exception as e:  # keep freeing the rest; report the first failure at the end
                errors.append(str(e))

        if cudart is not None:
            attempt(self._drop_graph)
            for name, (ptr, _) in list(self._buffers.items()):
                attempt(lambda p=ptr: cuda_check("cudaFree", cudart.cudaFree(p)))
            if self._stream is not None:
                attempt(lambda: cuda_check("cudaStreamDestroy", cudart.cudaStreamDestroy(self._stream)))
        self._buffers = {}
        self._stream = None
        # drop references child-first: a context must die before its engine, an engine before its runtime
        self._context = None
        self._engine = None
        self._runtime = None
        self._reset()
        if errors:
            raise RuntimeError(f"releasing TensorRT resources failed: {errors[0]}")
