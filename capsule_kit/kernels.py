"""Small C++ kernels compiled on first use, with a correct torch fallback when that fails.

``torch.utils.cpp_extension.load_inline`` builds the source with the system compiler and
caches it under ``$TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``). Kernels are
built with ``-march=native``, so the module name carries a hash of the CPU's feature flags:
a cache shared between machines never hands one CPU another's instructions.
"""

from __future__ import annotations

import hashlib
import platform
import warnings
from pathlib import Path
from types import ModuleType

__all__ = ["build_cpp", "cpu_tag"]


def cpu_tag() -> str:
    """Short hash of this CPU's feature flags: a kernel built with -march=native is reused only on the same CPU."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        flags = platform.processor() or platform.machine()
    return hashlib.sha1(flags.encode()).hexdigest()[:8]


def build_cpp(name: str, source: Path, functions: list[str], cflags: list[str], what: str, fallback: str):
    """The compiled module ``<name>_<cpu_tag>``, or None with one warning naming ``what`` and the ``fallback``.

    Args:
        name: Extension name (the CPU tag is appended).
        source: The C++ file.
        functions: Functions to bind.
        cflags: Extra compiler flags.
        what: What the kernel is, for the warning ("fused routing").
        fallback: What runs instead, for the warning ("the eager loop").
    """
    from torch.utils.cpp_extension import load_inline

    try:
        module: ModuleType = load_inline(
            name=f"{name}_{cpu_tag()}",
            cpp_sources=[Path(source).read_text()],
            functions=functions,
            extra_cflags=cflags,
            verbose=False,
        )
    except Exception as exc:  # noqa: BLE001 - no compiler / headers: the torch path is always correct
        first = str(exc).splitlines()[0] if str(exc) else ""
        warnings.warn(f"{what} unavailable ({type(exc).__name__}: {first}); using {fallback}", stacklevel=3)
        return None
    return module
