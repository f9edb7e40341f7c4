"""The core imports with Qt, napari and magicgui blocked (design.md §2)."""

import subprocess
import sys
import textwrap

BLOCKER = textwrap.dedent(
    """
    import importlib.abc, sys
    BLOCKED = ("qtpy", "napari", "magicgui", "PyQt5", "PyQt6", "PySide2", "PySide6", "superqt", "vispy")

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"blocked GUI module {name}")
            return None

    sys.meta_path.insert(0, Block())
    import pkgutil, importlib
    import napari_xai.core as core
    names = [m.name for m in pkgutil.walk_packages(core.__path__, "napari_xai.core.")]
    for name in names:
        importlib.import_module(name)
    from napari_xai.core.methods.catalogue import all_methods
    assert len(all_methods()) >= 15
    import napari_xai.cli
    napari_xai.cli.build_parser()
    print("IMPORTED", len(names))
    """
)


def test_core_imports_without_gui_modules():
    proc = subprocess.run([sys.executable, "-c", BLOCKER], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    count = int(proc.stdout.split("IMPORTED")[1])
    assert count >= 6, proc.stdout
