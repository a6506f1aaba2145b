"""The TensorRT plugin ``proad::ProtoAttention`` (version 1): a quickly deployable plugin (QDP).

The ONNX node ``proad::ProtoAttention(q, k_p, v_p; scale)`` becomes this plugin when TensorRT
parses the graph. It is defined with ``tensorrt.plugin``:

- ``register``: the output is shaped and typed like ``q``;
- ``autotune``: all four tensors fp32, or all fp16, linear layout;
- ``aot_impl`` (TensorRT >= 10.9): compiles *the same* Triton kernel the torch path and the CPU tests
  run (:mod:`proad.kernels.triton_kernel`) to PTX, with the launch grid and integer arguments as
  symbolic shape expressions (:mod:`proad.kernels.plugin_spec`). TensorRT serialises the PTX into
  the engine, so a daemon runs the engine with no Python plugin code at all;
- ``impl`` (JIT, TensorRT 10.6-10.8, or nodes with ``aot=0``): calls the kernel through torch on
  TensorRT's stream. An engine built this way needs this module importable at run time, and
  :func:`register_plugin` called before the engine is deserialised.

Importing this module needs neither TensorRT nor a GPU; :func:`register_plugin` imports TensorRT
and raises :class:`TensorRTUnavailable` with the install hint when it is missing.
"""

# No ``from __future__ import annotations`` here: tensorrt.plugin validates the *evaluated* type
# annotations of the functions defined in register_plugin.

import importlib
import re
import threading
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from proad.kernels.plugin_spec import (
    KERNEL_ARGS,
    PLUGIN_ID,
    Tiles,
    grid,
    kernel_int_args,
    tiles,
)

INSTALL_HINT = (
    "install TensorRT >= 10.6 on the machine with the NVIDIA GPU: pip install 'proad-edge[tensorrt]' "
    "(the wheels need NVIDIA's package index and a CUDA driver)"
)
MIN_QDP = (10, 6)  # tensorrt.plugin with register/impl
MIN_AOT = (10, 9)  # aot_impl: kernels serialised into the engine

_lock = threading.Lock()
_registered = False


class TensorRTUnavailable(RuntimeError):
    """TensorRT (with its libraries) cannot be imported, or is too old for this plugin."""


def import_tensorrt() -> ModuleType:
    """The real ``tensorrt`` module, or :class:`TensorRTUnavailable` saying why not.

    A ``tensorrt`` that imports but has no ``Builder`` is not TensorRT: the ``tensorrt-stubs``
    package alone makes ``import tensorrt`` succeed as an empty namespace package.
    """
    try:
        trt = importlib.import_module("tensorrt")
    except (ImportError, OSError) as exc:
        raise TensorRTUnavailable(f"TensorRT is not installed ({exc}); {INSTALL_HINT}") from exc
    if not hasattr(trt, "Builder"):
        raise TensorRTUnavailable(
            "the installed 'tensorrt' has no runtime (type stubs or bindings without libnvinfer); " + INSTALL_HINT
        )
    return trt


def version_tuple(version: str) -> tuple[int, int]:
    """``"10.13.0.35"`` -> ``(10, 13)``."""
    m = re.match(r"(\d+)\.(\d+)", version)
    if not m:
        raise ValueError(f"cannot read a TensorRT version from {version!r}")
    return int(m.group(1)), int(m.group(2))


@dataclass(frozen=True)
class CompiledKernel:
    """The PTX of one specialisation of the kernel and what its launch needs."""

    name: str
    ptx: str
    num_warps: int
    shared_mem: int
    tiles: Tiles


def compile_ptx(
    dtype: str,
    head_dim: int,
    scale: float,
    n_queries: int | None,
    n_protos: int,
    target: Any = None,
) -> CompiledKernel:
    """Compile the Triton kernel to PTX for fp32/fp16 tensors of one shape family.

    ``target``: a ``triton.backends.compiler.GPUTarget``; None compiles for the GPU of this machine.
    Runs on a machine without a GPU when a target is given (how the tests check it).
    """
    import triton

    from proad.kernels.triton_kernel import proto_attention_kernel

    if dtype not in ("fp32", "fp16"):
        raise ValueError(f"the plugin runs fp32 or fp16, got {dtype}")
    t = tiles(n_queries, n_protos, head_dim)
    signature = {"Q": f"*{dtype}", "K": f"*{dtype}", "V": f"*{dtype}"}
    signature.update({name: "i32" for name in KERNEL_ARGS})
    signature["Out"] = f"*{dtype}"
    constexprs = {
        "SCALE": float(scale),
        "HEAD_DIM": head_dim,
        "BLOCK_D": t.block_d,
        "BLOCK_N": t.block_n,
        "BLOCK_M": t.block_m,
        "DOT_FP32": False,
    }
    src = triton.compiler.ASTSource(fn=proto_attention_kernel, signature=signature, constexprs=constexprs)
    options = {"num_warps": t.num_warps}
    compiled = triton.compile(src, target=target, options=options) if target else triton.compile(src, options=options)
    for scratch in ("global_scratch_size", "profile_scratch_size"):
        if getattr(compiled.metadata, scratch, 0):
            raise RuntimeError(f"the kernel needs Triton {scratch}, which TensorRT's AOT launch does not provide")
    return CompiledKernel(
        name=compiled.metadata.name,
        ptx=strip_unused_params(compiled.asm["ptx"], compiled.metadata.name, len(signature)),
        num_warps=compiled.metadata.num_warps,
        shared_mem=compiled.metadata.shared,
        tiles=t,
    )


def strip_unused_params(ptx: str, kernel: str, keep: int) -> str:
    """Drop trailing kernel parameters the body never reads.

    Triton >= 3.3 appends hidden ``global_scratch`` / ``profile_scratch`` pointers to every kernel.
    TensorRT's AOT launch passes exactly (inputs, extra args, outputs), so the PTX must declare
    exactly those; our kernel uses no scratch memory, and a parameter that is only declared can be
    removed. A parameter the body does read raises instead of producing a wrong launch.
    """
    start = ptx.index(f".entry {kernel}(")
    end = ptx.index(")", start)
    header = ptx[start:end]
    params = re.findall(rf"{re.escape(kernel)}_param_(\d+)", header)
    if len(params) < keep:
        raise ValueError(f"{kernel} declares {len(params)} parameters, expected at least {keep}")
    body = ptx[end:]
    for index in params[keep:]:
        if re.search(rf"\b{re.escape(kernel)}_param_{index}\b", body):
            raise RuntimeError(f"{kernel} reads hidden parameter {index}; it cannot run as a TensorRT AOT kernel")
    drop = {f"{kernel}_param_{i}" for i in params[keep:]}
    kept = [ln for ln in header.split("\n") if ln.strip() and ln.strip().rstrip(",").split()[-1] not in drop]
    kept[-1] = kept[-1].rstrip().rstrip(",")
    return ptx[:start] + "\n".join(kept) + "\n" + ptx[end:]


def _static(expr: Any, what: str) -> int:
    if not expr.is_constant:
        raise ValueError(f"ProtoAttention needs a static {what}; only the batch may be dynamic")
    return int(expr.constant_value)


def register_plugin() -> None:
    """Register ``proad::ProtoAttention`` with TensorRT (idempotent, thread-safe)."""
    global _registered
    with _lock:
        if _registered:
            return
        trt = import_tensorrt()
        version = version_tuple(trt.__version__)
        if version < MIN_QDP:
            raise TensorRTUnavailable(f"TensorRT {trt.__version__} has no quickly deployable plugins; {INSTALL_HINT}")
        _define(trt, aot=version >= MIN_AOT)
        _registered = True


def _define(trt: ModuleType, aot: bool) -> None:
    # typing generics on purpose: TensorRT 10.x's tensorrt.plugin inspects these annotations with
    # typing.get_origin / get_args and knows typing.Union (pyproject exempts this file from UP006/7/35)
    from typing import List, Tuple, Union

    import tensorrt.plugin as trtp

    @trtp.register(PLUGIN_ID)
    def _describe(q: trtp.TensorDesc, k_p: trtp.TensorDesc, v_p: trtp.TensorDesc, scale: float) -> trtp.TensorDesc:
        return q.like()

    @trtp.autotune(PLUGIN_ID)
    def _autotune(
        q: trtp.TensorDesc, k_p: trtp.TensorDesc, v_p: trtp.TensorDesc, outputs: Tuple[trtp.TensorDesc]
    ) -> List[trtp.AutoTuneCombination]:
        return [trtp.AutoTuneCombination("FP32|FP16, FP32|FP16, FP32|FP16, FP32|FP16", "LINEAR")]

    @trtp.impl(PLUGIN_ID)
    def _impl(
        q: trtp.Tensor,
        k_p: trtp.Tensor,
        v_p: trtp.Tensor,
        scale: float,
        outputs: Tuple[trtp.Tensor],
        stream: int,
    ) -> None:
        import torch

        from proad.kernels.triton_kernel import proto_attention_triton

        with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
            out = torch.as_tensor(outputs[0], device="cuda")
            proto_attention_triton(
                torch.as_tensor(q, device="cuda"),
                torch.as_tensor(k_p, device="cuda"),
                torch.as_tensor(v_p, device="cuda"),
                scale,
                out=out,
            )

    if not aot:
        return

    @trtp.aot_impl(PLUGIN_ID)
    def _aot_impl(
        q: trtp.TensorDesc,
        k_p: trtp.TensorDesc,
        v_p: trtp.TensorDesc,
        scale: float,
        outputs: Tuple[trtp.TensorDesc],
        tactic: int,
    ) -> Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams, trtp.SymExprs]:
        dtype = "fp16" if q.dtype == trt.float16 else "fp32"
        qs, ks = q.shape_expr, k_p.shape_expr
        n_queries = int(qs[2].constant_value) if qs[2].is_constant else None
        kernel = compile_ptx(dtype, _static(qs[3], "head dim"), scale, n_queries, _static(ks[2], "prototype count"))
        kv_batch_one = bool(ks[0].is_constant and ks[0].constant_value == 1)

        params = trtp.KernelLaunchParams()
        params.grid_x, params.grid_y = grid(qs, kernel.tiles.block_n, trtp.cdiv)
        params.block_x = kernel.num_warps * 32
        params.shared_mem = kernel.shared_mem
        args = trtp.SymIntExprs.from_tuple([trtp.SymInt32(e) for e in kernel_int_args(qs, ks, kv_batch_one)])
        return kernel.name, kernel.ptx, params, args
