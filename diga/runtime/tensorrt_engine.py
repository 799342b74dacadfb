"""TensorRT engines at run time: one small class owns the engine, its context and device memory.

Written against the Python API that TensorRT 10.x and 11.x share (named I/O tensors,
``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``; nothing that the 10.x ->
11.x migration guide lists as removed, which ``tests/test_tensorrt_api.py`` checks). A plan
runs only on the TensorRT version and GPU that built it: ``check_plan`` compares the engine's
side-car with both before the plan is deserialised. Device memory comes from pycuda where it
is installed, else from cuda-python's ``cuda.bindings``. All are imported lazily; without
TensorRT or a GPU the caller gets one ``UserError``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np

from diga.errors import UserError, import_optional

NO_TRT_HINT = ("pip install tensorrt pycuda on a machine with an NVIDIA GPU and driver, "
               "or use the .onnx model with --backend cpu")


def import_tensorrt() -> Any:
    """The ``tensorrt`` module, or a ``UserError`` saying it is not installed."""
    return import_optional("tensorrt", "TensorRT is not installed (no Python package "
                           "'tensorrt')", NO_TRT_HINT)


def cuda_device_count() -> int | None:
    """Visible CUDA devices, asked through cuda-python or pycuda (0 without a driver or GPU);
    None when neither is installed to ask."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        pass
    else:
        try:
            err, count = cudart.cudaGetDeviceCount()
        except Exception:  # the CUDA runtime library itself is missing
            return 0
        return int(count) if int(err) == 0 else 0
    try:
        import pycuda.driver as cuda
    except ImportError:
        return None
    try:
        cuda.init()
        return int(cuda.Device.count())
    except Exception:  # pycuda.driver.Error: no driver / no device
        return 0


def require_gpu(what: str) -> None:
    """Raise one clear ``UserError`` when no CUDA GPU is visible."""
    count = cuda_device_count()
    if count is None:
        raise UserError(f"{what} needs pycuda or cuda-python to reach the GPU, and neither is "
                        "installed", "pip install pycuda (or cuda-python)")
    if count == 0:
        raise UserError(f"{what} needs an NVIDIA GPU, and no CUDA device is visible here",
                        "run it on a machine with an NVIDIA GPU and driver, or use the .onnx "
                        "model with --backend cpu")


def gpu_identity() -> dict[str, Any]:
    """``{"gpu": name, "compute_capability": "9.0"}`` of device 0 (values None where unknown)."""
    # cuda-python first; where it is missing or sees no device, pycuda
    with contextlib.suppress(Exception):
        from cuda.bindings import runtime as cudart

        err, props = cudart.cudaGetDeviceProperties(0)
        if int(err) == 0:
            name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
            return {"gpu": name.strip("\x00 "), "compute_capability": f"{props.major}.{props.minor}"}
    try:
        import pycuda.driver as cuda

        cuda.init()
        device = cuda.Device(0)
        major, minor = device.compute_capability()
        return {"gpu": device.name(), "compute_capability": f"{major}.{minor}"}
    except Exception:  # noqa: BLE001  (no way to ask: the caller decides what that means)
        return {"gpu": None, "compute_capability": None}


def plan_mismatch(sidecar: dict[str, Any], tensorrt_version: str,
                  here: dict[str, Any]) -> str | None:
    """Why a plan described by ``sidecar`` cannot run with this TensorRT on this GPU, or None.

    TensorRT plans are bound to the exact TensorRT version and to the GPU's compute capability
    they were built for (no version- or hardware-compatible build is made here). A side-car
    without a field (an older diga) is not held against the plan for it.
    """
    built = sidecar.get("tensorrt")
    if built and built != tensorrt_version:
        return f"was built by TensorRT {built}; this is TensorRT {tensorrt_version}"
    want, have = sidecar.get("compute_capability"), here.get("compute_capability")
    if want and have and want != have:
        return (f"was built for {sidecar.get('gpu') or 'a GPU'} (compute capability {want}); "
                f"this is {here.get('gpu') or 'a GPU'} (compute capability {have})")
    return None


def check_plan(path: Path, sidecar: dict[str, Any]) -> None:
    """Refuse, in one line, a plan built by another TensorRT version or for another GPU."""
    trt = import_tensorrt()
    why = plan_mismatch(sidecar, trt.__version__, gpu_identity())
    if why:
        raise UserError(f"engine {Path(path).name} {why}",
                        "rebuild it here with 'diga export RUN --trt' (an engine runs only with "
                        "the TensorRT version and GPU that built it)")


class _PyCudaMemory:
    """Device memory and a stream through pycuda, in the device's primary context."""

    def __init__(self) -> None:
        import pycuda.driver as cuda

        self.cuda = cuda
        cuda.init()
        # TensorRT works in the runtime API's primary context: share it rather than make one
        self.context = cuda.Device(0).retain_primary_context()
        self.context.push()
        self.stream = cuda.Stream()

    @property
    def stream_handle(self) -> int:
        return int(self.stream.handle)

    def alloc(self, nbytes: int) -> Any:
        return self.cuda.mem_alloc(max(nbytes, 1))

    @staticmethod
    def pointer(allocation: Any) -> int:
        return int(allocation)

    @staticmethod
    def free(allocation: Any) -> None:
        allocation.free()

    def to_device(self, allocation: Any, host: np.ndarray) -> None:
        self.cuda.memcpy_htod_async(allocation, host, self.stream)

    def to_host(self, host: np.ndarray, allocation: Any) -> None:
        self.cuda.memcpy_dtoh_async(host, allocation, self.stream)

    def synchronize(self) -> None:
        self.stream.synchronize()

    def close(self) -> None:
        self.context.pop()


class _CudaBindingsMemory:
    """The same through cuda-python's runtime API (``cuda.bindings.runtime``)."""

    def __init__(self) -> None:
        from cuda.bindings import runtime as cudart

        self.cudart = cudart
        self.stream = self._check(cudart.cudaStreamCreate())

    def _check(self, result: tuple) -> Any:
        err, *rest = result
        if int(err) != 0:
            name = self.cudart.cudaGetErrorName(err)[1]
            raise RuntimeError(f"CUDA call failed: {name.decode() if isinstance(name, bytes) else name}")
        return rest[0] if len(rest) == 1 else None

    @property
    def stream_handle(self) -> int:
        return int(self.stream)

    def alloc(self, nbytes: int) -> int:
        return int(self._check(self.cudart.cudaMalloc(max(nbytes, 1))))

    @staticmethod
    def pointer(allocation: int) -> int:
        return allocation

    def free(self, allocation: int) -> None:
        self._check(self.cudart.cudaFree(allocation))

    def to_device(self, allocation: int, host: np.ndarray) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self.cudart.cudaMemcpyAsync(allocation, host.ctypes.data, host.nbytes, kind,
                                                self.stream))

    def to_host(self, host: np.ndarray, allocation: int) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self.cudart.cudaMemcpyAsync(host.ctypes.data, allocation, host.nbytes, kind,
                                                self.stream))

    def synchronize(self) -> None:
        self._check(self.cudart.cudaStreamSynchronize(self.stream))

    def close(self) -> None:
        self._check(self.cudart.cudaStreamDestroy(self.stream))


def _device_memory() -> _PyCudaMemory | _CudaBindingsMemory:
    try:
        import pycuda.driver  # noqa: F401
    except ImportError:
        try:
            import cuda.bindings.runtime  # noqa: F401
        except ImportError:
            raise UserError("running a TensorRT engine needs pycuda or cuda-python for device memory",
                            "pip install pycuda (or cuda-python)") from None
        return _CudaBindingsMemory()
    return _PyCudaMemory()


class TensorRTEngine:
    """A deserialised engine, its context, stream and buffers.

    A frame engine (``diga.export.frame``) has the input ``image`` and the outputs ``labels``
    and ``logits``; an engine of the network alone one input and one output. Buffers are
    allocated for the first shapes and grown when larger ones come; call ``close()`` (or use
    ``with``) to release the device memory.
    """

    def __init__(self, path: Path) -> None:
        trt = import_tensorrt()
        require_gpu("a TensorRT engine")
        self.trt = trt
        self.path = Path(path)
        self.memory = _device_memory()
        self._buffers: dict[str, tuple[Any, int]] = {}  # name -> (allocation, nbytes)
        self.context = None
        self.logger = trt.Logger(trt.Logger.WARNING)
        trt.init_libnvinfer_plugins(self.logger, "")
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            self.memory.close()
            raise UserError(f"cannot load TensorRT engine {self.path}",
                            "an engine only runs with the TensorRT version and GPU that built it: "
                            "rebuild it here with 'diga export MODEL --trt'")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        if len(self.inputs) != 1 or not self.outputs:
            self.close()
            raise UserError(f"engine {self.path} has {len(self.inputs)} inputs and "
                            f"{len(self.outputs)} outputs; diga engines take one input",
                            "build it with 'diga export --trt'")
        self.input_name, self.output_name = self.inputs[0], self.outputs[0]
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self.input_dtype = self.dtypes[self.input_name]
        self.output_dtype = self.dtypes[self.output_name]

    def profile_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(min, opt, max) input shapes of optimisation profile 0."""
        shapes = self.engine.get_tensor_profile_shape(self.input_name, 0)
        return tuple(tuple(int(d) for d in s) for s in shapes)  # type: ignore[return-value]

    @property
    def max_batch(self) -> int:
        """The largest batch the engine takes: its static batch, or the profile's maximum."""
        static = int(self.engine.get_tensor_shape(self.input_name)[0])
        return static if static > 0 else self.profile_shapes()[2][0]

    def _buffer(self, name: str, nbytes: int) -> int:
        held = self._buffers.get(name)
        if held is None or held[1] < nbytes:
            if held is not None:
                self.memory.free(held[0])
            self._buffers[name] = (self.memory.alloc(nbytes), nbytes)
        return self.memory.pointer(self._buffers[name][0])

    def run(self, batch: np.ndarray) -> np.ndarray:
        """One inference: host batch in, host output (the first) out (waits for the stream)."""
        return self.run_named({self.input_name: batch}, [self.output_name])[0]

    def run_named(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        """One inference on the input in ``feeds``; copies back only the ``outputs`` asked for
        (a frame engine's logits stay on the device unless asked for). Waits for the stream."""
        batch = np.ascontiguousarray(feeds[self.input_name], dtype=self.input_dtype)
        if not self.context.set_input_shape(self.input_name, tuple(batch.shape)):
            static = tuple(int(d) for d in self.engine.get_tensor_shape(self.input_name))
            if all(d > 0 for d in static):
                accepted = f"its static shape {static}"
            else:
                lo, _, hi = self.profile_shapes()
                accepted = f"its optimisation profile {lo} .. {hi}"
            raise UserError(f"input shape {tuple(batch.shape)} does not fit engine {self.path.name} "
                            f"({accepted})", "rebuild it with export.trt_min_size / trt_max_size / "
                            "trt_max_batch covering this shape")
        self.context.set_tensor_address(self.input_name, self._buffer(self.input_name, batch.nbytes))
        host: dict[str, np.ndarray] = {}
        for name in self.outputs:  # every output needs device memory; only some come back
            shape = tuple(int(d) for d in self.context.get_tensor_shape(name))
            out = np.empty(shape, self.dtypes[name])
            self.context.set_tensor_address(name, self._buffer(name, out.nbytes))
            if name in outputs:
                host[name] = out
        self.memory.to_device(self._buffers[self.input_name][0], batch)
        if not self.context.execute_async_v3(self.memory.stream_handle):
            raise RuntimeError(f"TensorRT failed to run {self.path.name} on shape {batch.shape}")
        for name, out in host.items():
            self.memory.to_host(out, self._buffers[name][0])
        self.memory.synchronize()
        return [host[name] for name in outputs]

    def close(self) -> None:
        """Free device buffers and the stream; the engine cannot run afterwards."""
        for allocation, _ in self._buffers.values():
            self.memory.free(allocation)
        self._buffers.clear()
        self.context = None  # the context goes before the engine that made it
        self.engine = None
        if self.memory is not None:
            self.memory.close()
            self.memory = None  # type: ignore[assignment]

    def __enter__(self) -> TensorRTEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
