"""Benchmark a method's registry function alone (no ``explain``) against the direct library call.

``bench_explain.py`` times the whole ``explain`` (input preparation, prediction, record) against the direct
call; this script times only the method, ``get_method(name).fn(module, x, target, parsed, RunContext())``,
with its default parameters, against the same direct call (``bench_explain.DIRECT``) with the parameters the
method resolved, on the same tensor, interleaved in one process, and prints the medians and their ratio. It
separates the method's own cost from ``explain``'s fixed costs.

``--model demo`` is the demo model with the demo brain brought to its 48x56x48 grid (as in bench_explain);
``--model demo-maxpool`` is the same architecture with a MaxPool3d(2) after the first two blocks (random
weights, seed 0), for the methods with a MaxPool rule of their own (deeplift).

Usage::

    .venv/bin/python benchmarks/bench_method_alone.py --methods deeplift --repeats 21 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_explain import DIRECT  # noqa: E402


def _inputs(which: str):
    from napari_xai.core.demo import demo_volume
    from napari_xai.core.demo_net import DemoNet
    from napari_xai.core.explain import prepare
    from napari_xai.core.geometry import model_grid_affine, resize
    from napari_xai.core.models import load_model
    from napari_xai.core.volumes import Volume

    volume, _ = demo_volume(seed=0, condition=True)
    demo = load_model("demo", device="cpu")
    grid = tuple(demo.spec.input_shape)
    on_grid = Volume(data=resize(volume.data, grid), affine=model_grid_affine(volume.affine, volume.shape, grid),
                     name="demo on the model grid")
    x = prepare(on_grid, demo, model_spacing="stored").x
    if which == "demo":
        return demo.module, x
    torch.manual_seed(0)
    net = DemoNet(pool_after=(0, 1), input_shape=grid).eval()
    return net, x


def main() -> None:
    from napari_xai.core.methods.catalogue import get_method
    from napari_xai.core.methods.registry import RunContext

    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", default="deeplift", help="comma-separated methods (default: deeplift)")
    ap.add_argument("--model", choices=("demo", "demo-maxpool"), default="demo")
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(args.threads)
    net, x = _inputs(args.model)
    with torch.no_grad():
        target = int(net(x).argmax(1))
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, repeats {args.repeats}, "
          f"model {args.model}, input {tuple(x.shape)}, target {target}")
    for name in (n.strip() for n in args.methods.split(",")):
        m = get_method(name)
        parsed = m.parse({})
        direct, what = DIRECT[name]
        out = m.fn(net, x, target, parsed, RunContext())  # warm-up; the parameters it resolved
        used = {**parsed, **(out.used or {})}

        def ours():
            torch.manual_seed(0)
            return m.fn(net, x, target, parsed, RunContext())

        def ref():
            torch.manual_seed(0)
            return direct(net, x.clone(), target, used)

        ref()
        ours_t, ref_t = [], []
        for _ in range(args.repeats):  # interleaved so machine noise hits both alike
            for fn, times in ((ours, ours_t), (ref, ref_t)):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
        o, r = statistics.median(ours_t), statistics.median(ref_t)
        print(f"{name:22s} method alone {o * 1000:8.1f} ms   direct {r * 1000:8.1f} ms   ratio {o / r:5.2f}   ({what})",
              flush=True)


if __name__ == "__main__":
    main()
