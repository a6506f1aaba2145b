"""The little CUDA the TensorRT backend needs, through cuda-python (``cuda.bindings.runtime``).

Pinned host buffers (so copies are asynchronous), device buffers, one non-default stream, and CUDA
graph capture. Every call's status is checked; a failure raises :class:`CudaError` naming the call.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np


class CudaError(RuntimeError):
    """A CUDA runtime call failed."""


def _rt() -> Any:
    from cuda.bindings import runtime

    return runtime


def check(result: tuple, call: str) -> Any:
    """Unpack ``(status, *values)`` from a cuda-python call, raising on a failed status."""
    rt = _rt()
    status, values = result[0], result[1:]
    if status != rt.cudaError_t.cudaSuccess:
        raise CudaError(f"{call} failed: {status.name if hasattr(status, 'name') else status}")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


class Stream:
    """A non-blocking CUDA stream (TensorRT must not run on the default stream)."""

    def __init__(self) -> None:
        rt = _rt()
        self.handle = check(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking), "cudaStreamCreateWithFlags")

    def __int__(self) -> int:
        return int(self.handle)

    def synchronize(self) -> None:
        check(_rt().cudaStreamSynchronize(self.handle), "cudaStreamSynchronize")

    def close(self) -> None:
        if self.handle is not None:
            check(_rt().cudaStreamDestroy(self.handle), "cudaStreamDestroy")
            self.handle = None


class HostDeviceBuffer:
    """A pinned host array and a device allocation of the same size."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype) -> None:
        rt = _rt()
        self.nbytes = int(np.prod(shape)) * dtype.itemsize
        self._host_ptr = check(rt.cudaMallocHost(self.nbytes), "cudaMallocHost")
        raw = (ctypes.c_byte * self.nbytes).from_address(int(self._host_ptr))
        self.host = np.frombuffer(raw, dtype=dtype).reshape(shape)
        self.device = int(check(rt.cudaMalloc(self.nbytes), "cudaMalloc"))

    def to_device(self, nbytes: int, stream: Stream) -> None:
        rt = _rt()
        kind = rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        check(rt.cudaMemcpyAsync(self.device, int(self._host_ptr), nbytes, kind, stream.handle), "cudaMemcpyAsync")

    def to_host(self, nbytes: int, stream: Stream) -> None:
        rt = _rt()
        kind = rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        check(rt.cudaMemcpyAsync(int(self._host_ptr), self.device, nbytes, kind, stream.handle), "cudaMemcpyAsync")

    def close(self) -> None:
        rt = _rt()
        if self.device:
            check(rt.cudaFree(self.device), "cudaFree")
            self.device = 0
        if self._host_ptr:
            check(rt.cudaFreeHost(self._host_ptr), "cudaFreeHost")
            self._host_ptr = 0


class CudaGraph:
    """A captured sequence of stream work, replayed with one launch."""

    def __init__(self, graph: Any, exec_: Any) -> None:
        self.graph, self.exec = graph, exec_

    @classmethod
    def capture(cls, stream: Stream, work: Any) -> CudaGraph:
        """Record what ``work()`` enqueues on ``stream`` (nothing runs during capture)."""
        rt = _rt()
        mode = rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        check(rt.cudaStreamBeginCapture(stream.handle, mode), "cudaStreamBeginCapture")
        try:
            ok = work()
        finally:
            graph = check(rt.cudaStreamEndCapture(stream.handle), "cudaStreamEndCapture")
        if ok is False:
            check(rt.cudaGraphDestroy(graph), "cudaGraphDestroy")
            raise CudaError("the captured work reported failure")
        exec_ = check(rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
        return cls(graph, exec_)

    def launch(self, stream: Stream) -> None:
        check(_rt().cudaGraphLaunch(self.exec, stream.handle), "cudaGraphLaunch")

    def close(self) -> None:
        rt = _rt()
        check(rt.cudaGraphExecDestroy(self.exec), "cudaGraphExecDestroy")
        check(rt.cudaGraphDestroy(self.graph), "cudaGraphDestroy")
