"""NVIDIA's TensorRT API, as far as it can be had without TensorRT's libraries: test oracles.

- ``.venv/trt-oracle/trt11``: the ``tensorrt-cu13-bindings`` 11.4 wheel. Its ``tensorrt.so`` names
  every 11.x API (read with ``strings``), and ``tensorrt_bindings/plugin/*.py`` is the real source
  of ``tensorrt.plugin``.
- ``.venv/trt-oracle/trt10``: ``tensorrt-stubs`` 10.13, typed signatures of the 10.x API.

``make`` installs both (``--no-deps --target``, so ``import tensorrt`` keeps meaning the real one).
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
from functools import cache, lru_cache
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ORACLE = REPO / ".venv" / "trt-oracle"
TRT11 = ORACLE / "trt11" / "tensorrt_bindings"
TRT10 = ORACLE / "trt10"
MISSING = f"TensorRT API oracles not installed in {ORACLE} (run `make venv`)"


def available() -> bool:
    return (TRT11 / "tensorrt.so").is_file() and (TRT10 / "tensorrt" / "__init__.pyi").is_file()


@lru_cache(maxsize=1)
def _strings11() -> tuple[str, ...]:
    """Printable strings of the 11.4 extension module (what ``strings -n 3`` prints)."""
    data = (TRT11 / "tensorrt.so").read_bytes()
    return tuple(m.decode() for m in re.findall(rb"[\x20-\x7e]{3,}", data))


@cache
def in_trt11(name: str) -> bool:
    """Whether 11.4 defines ``name``: as a string of the extension, or in its Python sources.

    The linker merges a string into the tail of a longer one ("INPUT" lives inside
    "CONDITIONAL_INPUT"), so a name counts when a string ends with it right after an identifier
    character; a docstring that merely ends in the word ("CHW2 + FP16") does not count.
    """
    pattern = re.compile(rf"(^|[A-Za-z0-9_]){re.escape(name)}$")
    if any(pattern.search(s) for s in _strings11()):
        return True
    for py in (TRT11.glob("*.py"), (TRT11 / "plugin").glob("*.py")):
        for path in py:
            if re.search(rf"\b(def|class) {re.escape(name)}\b|^{re.escape(name)} *=", path.read_text(), re.M):
                return True
    return False


@lru_cache(maxsize=1)
def _stub_text10() -> str:
    stubs = (TRT10 / "tensorrt_bindings" / "tensorrt.pyi", TRT10 / "tensorrt" / "__init__.pyi")
    return "".join(p.read_text() for p in stubs)


@cache
def in_trt10(name: str) -> bool:
    """Whether the 10.13 stubs define ``name`` (a class, function, attribute or enum member)."""
    text = _stub_text10()
    return bool(re.search(rf"\b(def|class) {re.escape(name)}\b|^\s*{re.escape(name)}\s*:|import {re.escape(name)}$",
                          text, re.M))


def _fix_stub(source: str) -> str:
    """Make the generated 10.13 stubs parse: pybind11 wrote ``in`` as a parameter name and
    non-default parameters after default ones. Patch line by line until ``ast`` accepts it."""
    lines = source.split("\n")
    for _ in range(500):
        try:
            ast.parse("\n".join(lines))
            return "\n".join(lines)
        except SyntaxError as err:
            i = (err.lineno or 1) - 1
            line = lines[i]
            fixed = re.sub(r"([(,]\s*)in:", r"\1in_:", line)
            if fixed == line and "def " in line:
                head, _, tail = line.partition("(")
                params, close, rest = tail.rpartition(")")
                parts, seen_default = [], False
                for p in params.split(", "):
                    if "=" in p:
                        seen_default = True
                    elif seen_default and ":" in p and not p.strip().startswith("*"):
                        p = p + " = ..."
                    parts.append(p)
                fixed = f"{head}({', '.join(parts)}{close}{rest}"
            if fixed == line:
                raise
            lines[i] = fixed
    raise RuntimeError("could not repair the TensorRT stubs")


def mypy_tree(dest: Path) -> tuple[Path, Path]:
    """A source tree mypy can resolve (proad.kernels etc. as setuptools maps them) and fixed stubs."""
    src, stubs = dest / "src", dest / "stubs"
    pkg = src / "proad"
    pkg.mkdir(parents=True)
    for entry in (REPO / "proad").iterdir():
        if entry.name != "__pycache__":
            (pkg / entry.name).symlink_to(entry)
    for folder in ("kernels", "export", "edge"):
        (pkg / folder).symlink_to(REPO / folder)
    for name in ("tensorrt", "tensorrt_bindings"):
        shutil.copytree(TRT10 / name, stubs / name)
    for pyi in stubs.rglob("*.pyi"):
        pyi.write_text(_fix_stub(pyi.read_text()))
    return src, stubs


def run_mypy(dest: Path, modules: list[str], extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """mypy over ``modules`` (and the ``extra`` modules, name -> source, written into the tree) against
    the fixed 10.13 stubs, in one process."""
    import sys

    src, stubs = mypy_tree(dest)
    for name, source in (extra or {}).items():
        (src / f"{name}.py").write_text(source)
    args = [sys.executable, "-m", "mypy", "--config-file", str(REPO / "pyproject.toml"), "--cache-dir",
            str(dest / "cache"), "--no-incremental"]
    for m in [*modules, *(extra or {})]:
        args += ["-m", m]
    env = {"MYPYPATH": f"{src}:{stubs}", "PATH": "/usr/bin:/bin"}
    return subprocess.run(args, cwd=src, capture_output=True, text=True, env=env, timeout=600)
