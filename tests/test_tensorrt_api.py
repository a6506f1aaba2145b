"""Our TensorRT code against NVIDIA's real API, without TensorRT's libraries.

TensorRT cannot run here, so nothing pretends to run it. Instead:
- every TensorRT name our modules use exists in the 11.4 bindings, and in the 10.13 stubs too,
  unless it sits behind ``getattr``/``hasattr`` (a version guard);
- mypy checks the TensorRT modules against the 10.13 stubs (and catches a deliberate misuse);
- the plugin's AOT kernel compiles to PTX whose entry takes exactly what TensorRT passes;
- without TensorRT, the plugin and the builder say so with the install hint.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import trt_oracle
from conftest import REPO
from proad.kernels.plugin_spec import KERNEL_ARGS
from proad.kernels.trt_plugin import TensorRTUnavailable, import_tensorrt, register_plugin, strip_unused_params

needs_oracle = pytest.mark.skipif(not trt_oracle.available(), reason=trt_oracle.MISSING)

TRT_MODULES = [REPO / "kernels" / "trt_plugin.py", REPO / "export" / "engine.py",
               REPO / "edge" / "backends" / "tensorrt_backend.py"]
#: variables that hold TensorRT objects in those modules: their method names are TensorRT API too
TRT_OBJECTS = {"builder", "network", "parser", "config", "profile", "runtime", "engine", "context", "logger"}


def _tensorrt_real() -> bool:
    try:
        import_tensorrt()
    except TensorRTUnavailable:
        return False
    return True


def used_names(path: Path) -> tuple[set[str], set[str]]:
    """(direct, guarded) TensorRT names used in ``path``.

    Direct: attribute chains on ``trt`` / ``trtp`` and methods of TensorRT objects. Guarded: string
    names passed to ``getattr``/``hasattr`` on them (present only in some versions).
    """
    tree = ast.parse(path.read_text())
    direct: set[str] = set()
    guarded: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr"):
            target, name = node.args[0], node.args[1]
            root = target
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in ("trt", "trtp") and isinstance(name, ast.Constant):
                guarded.add(name.value)
        if isinstance(node, ast.Attribute):
            chain, root = [node.attr], node.value
            while isinstance(root, ast.Attribute):
                chain.append(root.attr)
                root = root.value
            if isinstance(root, ast.Name) and (root.id in ("trt", "trtp") or root.id in TRT_OBJECTS):
                direct.update(chain)
            elif isinstance(root, ast.Name) and root.id == "self" and chain[-1] in TRT_OBJECTS | {"trt"}:
                direct.update(chain[:-1])  # self.engine.get_tensor_name -> get_tensor_name
    return direct - {"__version__"}, guarded


@needs_oracle
@pytest.mark.parametrize("path", TRT_MODULES, ids=lambda p: p.name)
def test_every_tensorrt_name_exists(path: Path) -> None:
    direct, guarded = used_names(path)
    assert direct, "found no TensorRT names: the scan is broken"
    missing_11 = sorted(n for n in direct if not trt_oracle.in_trt11(n))
    assert not missing_11, f"{path.name} uses names TensorRT 11.4 does not have: {missing_11}"
    plugin_api = {"register", "autotune", "impl", "aot_impl", "cdiv", "SymInt32", "SymIntExprs", "SymExprs",
                  "AutoTuneCombination", "TensorDesc", "Tensor", "shape_expr", "is_constant", "constant_value",
                  "like", "grid_x", "grid_y", "block_x", "shared_mem", "from_tuple"}
    missing_10 = sorted(n for n in direct - plugin_api if not trt_oracle.in_trt10(n))
    assert not missing_10, f"{path.name} uses names the 10.13 stubs lack, without a version guard: {missing_10}"
    unknown = sorted(n for n in guarded if not (trt_oracle.in_trt11(n) or trt_oracle.in_trt10(n)))
    assert not unknown, f"{path.name} guards names no TensorRT version has: {unknown}"


@needs_oracle
def test_the_oracle_knows_what_11_removed() -> None:
    """The check can fail: names DESIGN §3 says 11.x removed are absent from the 11.4 oracle."""
    for gone in ("EXPLICIT_BATCH", "execute_async_v2", "FP16"):
        assert not trt_oracle.in_trt11(gone), gone
    for present in ("execute_async_v3", "set_tensor_address", "STRONGLY_TYPED", "aot_impl", "KernelLaunchParams"):
        assert trt_oracle.in_trt11(present), present
    assert trt_oracle.in_trt10("EXPLICIT_BATCH") and trt_oracle.in_trt10("FP16")
    _, guarded = used_names(REPO / "export" / "engine.py")
    assert "FP16" in guarded  # the 10.x-only builder flag is reached through getattr


@needs_oracle
def test_tensorrt_modules_type_check_against_the_stubs(tmp_path: Path) -> None:
    """Our TensorRT modules type-check against NVIDIA's stubs, and the check can fail: a module that
    misuses the API, checked in the same mypy run, is reported, and it is the only one."""
    misuse = (
        "import tensorrt as trt\n"
        "def build(logger: trt.ILogger) -> None:\n"
        "    builder = trt.Builder(logger)\n"
        "    builder.create_netwrok(0)\n"
        "    builder.create_builder_config().set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 'big')\n"
    )
    result = trt_oracle.run_mypy(
        tmp_path, ["proad.kernels.trt_plugin", "proad.export.engine", "proad.edge.backends.tensorrt_backend"],
        extra={"misuse": misuse},
    )
    report = result.stdout + result.stderr
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    assert result.returncode == 1, report
    assert errors and all(line.startswith("misuse.py:") for line in errors), report
    assert "create_netwrok" in report and "set_memory_pool_limit" in report, report


def _compile_in_subprocess(dtype: str, cc: int, ptx: Path) -> dict:
    """compile_ptx in a fresh interpreter: the test session runs Triton in interpreter mode."""
    code = (
        "import json, sys\n"
        "from triton.backends.compiler import GPUTarget\n"
        "from proad.kernels.trt_plugin import compile_ptx\n"
        f"k = compile_ptx({dtype!r}, head_dim=32, scale=0.17677, n_queries=256, n_protos=256,"
        f" target=GPUTarget('cuda', {cc}, 32))\n"
        f"open({str(ptx)!r}, 'w').write(k.ptx)\n"
        "print(json.dumps({'name': k.name, 'num_warps': k.num_warps, 'shared_mem': k.shared_mem}))\n"
    )
    import json
    import os

    env = {**os.environ, "TRITON_INTERPRET": "0"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("dtype,cc", [("fp16", 90), ("fp32", 80)])
def test_aot_kernel_compiles_to_ptx_with_the_plugin_abi(dtype: str, cc: int, tmp_path: Path) -> None:
    ptx = tmp_path / "k.ptx"
    kernel = _compile_in_subprocess(dtype, cc, ptx)
    text = ptx.read_text()
    assert kernel["name"] == "proto_attention_kernel"
    entry = text[text.index(".entry") : text.index(")", text.index(".entry"))]
    params = [ln for ln in entry.splitlines() if ".param" in ln]
    # TensorRT passes (q, k, v), the integer extra args, then the output: nothing else
    assert len(params) == 3 + len(KERNEL_ARGS) + 1
    assert all(".u64" in p for p in params[:3]) and ".u64" in params[-1]
    assert all(".u32" in p for p in params[3:-1])
    assert kernel["num_warps"] * 32 in (128, 256) and kernel["shared_mem"] > 0
    ptxas = shutil.which("ptxas")
    if ptxas is None:
        pytest.skip("ptxas not found: PTX assembled by Triton, not re-checked")
    arch = f"sm_{cc}a" if cc == 90 else f"sm_{cc}"
    cmd = [ptxas, f"-arch={arch}", str(ptx), "-o", str(tmp_path / "k.cubin")]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.skipif(_tensorrt_real(), reason="TensorRT is installed here; the missing-TensorRT path cannot be shown")
def test_missing_tensorrt_is_reported_with_the_install_hint() -> None:
    with pytest.raises(TensorRTUnavailable, match=r"proad-edge\[tensorrt\]"):
        import_tensorrt()
    with pytest.raises(TensorRTUnavailable):
        register_plugin()


def test_kernels_package_imports_without_torch_or_tensorrt() -> None:
    code = (
        "import sys\n"
        "sys.modules['torch'] = None; sys.modules['triton'] = None; sys.modules['tensorrt'] = None\n"
        "import proad.kernels, proad.kernels.plugin_spec, proad.kernels.trt_plugin\n"
        "print(proad.kernels.plugin_spec.PLUGIN_ID)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "proad::ProtoAttention"


@pytest.mark.skipif(not _tensorrt_real(), reason="needs TensorRT with its libraries and an NVIDIA GPU (not here)")
def test_plugin_registers_with_real_tensorrt() -> None:
    register_plugin()
    register_plugin()  # idempotent


def test_hidden_triton_parameters_are_stripped_only_when_unused() -> None:
    ptx = (
        ".visible .entry k(\n\t.param .u64 k_param_0,\n\t.param .u32 k_param_1,\n\t.param .u64 k_param_2\n)\n"
        "{\n\tld.param.u64 %rd1, [k_param_0];\n\tld.param.u32 %r1, [k_param_1];\n}\n"
    )
    stripped = strip_unused_params(ptx, "k", keep=2)
    assert "k_param_2" not in stripped and stripped.count("\t.param ") == 2
    with pytest.raises(RuntimeError, match="reads hidden parameter 1"):
        strip_unused_params(ptx, "k", keep=1)
