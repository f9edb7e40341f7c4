"""Qt widgets of napari-xai: thin adapters over :mod:`napari_xai.core`."""

import os
import sys


def _keep_triton_out_of_software_gl() -> None:
    """Avoid a known crash: triton's bundled LLVM segfaults next to Mesa's llvmpipe.

    torch._dynamo (imported by torchvision, hence by MONAI networks and Zennit)
    imports triton. When Mesa's software OpenGL (llvmpipe, which links its own
    LLVM) is already loaded in the process, that import crashes the process.
    napari-xai never compiles with triton, so when llvmpipe's LLVM is loaded and
    triton is not, triton is marked unavailable and torch behaves as on a
    CPU-only install. Set NAPARI_XAI_ALLOW_TRITON=1 to turn this off.
    """
    if "triton" in sys.modules or os.environ.get("NAPARI_XAI_ALLOW_TRITON"):
        return
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="ignore") as fh:
            maps = fh.read()
    except OSError:
        return
    if "libLLVM" in maps:
        sys.modules["triton"] = None  # type: ignore[assignment]


_keep_triton_out_of_software_gl()
