"""Train the napari-xai demo model (DemoNet) on simulated hippocampus/amygdala atrophy.

Deterministic: fixed seeds, ``torch.use_deterministic_algorithms(True)``, a fixed
thread count, per-seed simulated samples (the worker processes only generate
data; each sample depends only on its seed). CPU only.

Usage::

    .venv/bin/python scripts/train_demo_model.py            # writes src/napari_xai/data/demo_model.pt + demo_metadata.json
    .venv/bin/python scripts/train_demo_model.py --out-dir /tmp/demo --train 64 --epochs 1   # quick smoke run

Seed ranges (keep them disjoint): training 0 .. N-1, validation 100000 .., the
evaluation script 200000 .., tests 300000 ...
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from napari_xai.core import demo
from napari_xai.core.demo_net import DemoNet
from napari_xai.core.volumes import atomic_write_bytes

TRAIN_SEED0 = 0
VAL_SEED0 = 100_000
READOUT_L1 = 3e-2


def _gen(job: tuple[list[int], tuple[int, int, int]]) -> tuple[np.ndarray, np.ndarray]:
    torch.set_num_threads(1)
    seeds, shape = job
    return demo.demo_batch(seeds, shape=shape)


def make_data(seeds: list[int], workers: int, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Simulate samples for ``seeds`` (condition: odd seed = atrophy) on the model grid ``shape``."""
    chunks = [(seeds[i : i + 16], shape) for i in range(0, len(seeds), 16)]
    if workers <= 1:
        parts = [_gen(c) for c in chunks]
    else:
        with mp.get_context("spawn").Pool(workers) as pool:
            parts = pool.map(_gen, chunks)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


@torch.no_grad()
def center_logits(linear: nn.Linear) -> None:
    """Subtract the class mean from the last layer's weights and bias.

    Softmax probabilities (and predictions) do not change, but each logit becomes
    ± half the discriminative score (logit_atrophy - logit_healthy) instead of
    carrying a large common term, so explaining one class explains what separates
    the classes.
    """
    linear.weight -= linear.weight.mean(dim=0, keepdim=True)
    linear.bias -= linear.bias.mean()


@torch.no_grad()
def accuracy(net: nn.Module, x: np.ndarray, y: np.ndarray, batch: int = 32) -> float:
    net.eval()
    correct = 0
    for i in range(0, len(x), batch):
        logits = net(torch.from_numpy(x[i : i + batch]))
        correct += int((logits.argmax(1).numpy() == y[i : i + batch]).sum())
    return correct / len(x)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=512, help="training samples (default 512)")
    ap.add_argument("--val", type=int, default=128, help="held-out validation samples (default 128)")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--workers", type=int, default=2, help="processes for data simulation")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for training (fixed for reproducibility)")
    ap.add_argument(
        "--readout-l1",
        type=float,
        default=READOUT_L1,
        help=f"L1 penalty on the classifier weights, ramped up over the first half (default {READOUT_L1:g})",
    )
    ap.add_argument("--pool", choices=("flatten", "avg", "max"), default="flatten", help="DemoNet head (default flatten)")
    ap.add_argument(
        "--model-shape",
        default=",".join(map(str, demo.MODEL_SHAPE)),
        help="model grid in voxels (default: napari_xai.core.demo.MODEL_SHAPE)",
    )
    ap.add_argument("--channels", default="8,16,16", help="feature channels per block (default 8,16,16)")
    ap.add_argument("--pool-after", default="", help="blocks followed by 2x max pooling, comma-separated (default none)")
    ap.add_argument("--seed", type=int, default=0, help="torch seed (initialisation, shuffling)")
    ap.add_argument("--cache", type=Path, default=None, help="optional .npz to reuse simulated data between runs")
    ap.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent.parent / "src" / "napari_xai" / "data")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    train_seeds = list(range(TRAIN_SEED0, TRAIN_SEED0 + args.train))
    val_seeds = list(range(VAL_SEED0, VAL_SEED0 + args.val))
    shape = tuple(int(v) for v in args.model_shape.split(","))
    key = str(shape)  # seeds are prefixes of fixed ranges: a larger cache serves smaller runs
    cached = None
    if args.cache is not None and args.cache.exists():
        z = np.load(args.cache)
        if str(z["key"]) == key and len(z["ytr"]) >= args.train and len(z["yva"]) >= args.val:
            cached = z
    if cached is not None:
        xtr, ytr = cached["xtr"][: args.train], cached["ytr"][: args.train]
        xva, yva = cached["xva"][: args.val], cached["yva"][: args.val]
    else:
        xtr, ytr = make_data(train_seeds, args.workers, shape)
        xva, yva = make_data(val_seeds, args.workers, shape)
        if args.cache is not None:
            np.savez(args.cache, xtr=xtr, ytr=ytr, xva=xva, yva=yva, key=key)
    t_data = time.perf_counter() - t0
    print(f"simulated {len(xtr)} training + {len(xva)} validation samples in {t_data:.1f} s", flush=True)

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    net_kwargs = {
        "in_channels": 1,
        "num_classes": 2,
        "channels": [int(c) for c in args.channels.split(",")],
        "first_stride": 2,
        "pool_after": [int(c) for c in args.pool_after.split(",") if c.strip()],
        "pool": args.pool,
        "input_shape": list(shape) if args.pool == "flatten" else None,
    }
    net = DemoNet(**net_kwargs)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    steps_per_epoch = (len(xtr) + args.batch - 1) // args.batch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss()
    xt = torch.from_numpy(xtr)
    yt = torch.from_numpy(ytr)
    for epoch in range(args.epochs):
        net.train()
        perm = torch.randperm(len(xt), generator=gen)
        total = 0.0
        for i in range(0, len(xt), args.batch):
            idx = perm[i : i + args.batch]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(xt[idx]), yt[idx])
            if args.readout_l1 > 0:  # sparse classifier weights: the decision rests on few positions
                ramp = min(1.0, (epoch + i / len(xt)) / max(args.epochs / 2, 1))
                loss = loss + args.readout_l1 * ramp * net.classifier.weight.abs().sum()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        va = accuracy(net, xva, yva)
        print(f"epoch {epoch + 1}/{args.epochs}: loss (CE + L1) {total / len(xt):.4f}  val acc {va:.3f}  ({time.perf_counter() - t0:.0f} s)", flush=True)

    train_acc = accuracy(net, xtr, ytr)
    val_acc = accuracy(net, xva, yva)
    elapsed = time.perf_counter() - t0
    print(f"train accuracy {train_acc:.4f}  held-out accuracy {val_acc:.4f}  total time {elapsed:.1f} s", flush=True)

    net.eval()
    center_logits(net.classifier)
    buf = io.BytesIO()
    torch.save({k: v.detach().clone() for k, v in net.state_dict().items()}, buf)
    payload = buf.getvalue()
    meta = {
        "input_shape": list(shape),
        "channels": 1,
        "class_names": list(demo.CLASS_NAMES),
        "normalization": "zscore",
        "net_kwargs": net_kwargs,
        "description": (
            "DemoNet: detects simulated bilateral hippocampus+amygdala atrophy on the MNI152 demo brain "
            "(napari_xai.core.demo). Input: whole 91x109x91 2 mm field of view resized trilinearly to input_shape, "
            "then z-scored over the whole volume."
        ),
        "training": {
            "script": "scripts/train_demo_model.py",
            "train_seeds": [train_seeds[0], train_seeds[-1]],
            "val_seeds": [val_seeds[0], val_seeds[-1]],
            "epochs": args.epochs,
            "batch": args.batch,
            "lr": args.lr,
            "torch_seed": args.seed,
            "readout_l1": args.readout_l1,
            "centered_logits": True,
            "threads": args.threads,
            "train_accuracy": round(train_acc, 4),
            "val_accuracy": round(val_acc, 4),
            "torch": torch.__version__,
            "weights_sha256": hashlib.sha256(payload).hexdigest(),
        },
    }
    out = args.out_dir
    atomic_write_bytes(out / "demo_model.pt", payload)
    atomic_write_bytes(out / "demo_metadata.json", (json.dumps(meta, indent=2) + "\n").encode())
    for name in ("demo_model.pt", "demo_metadata.json"):
        os.chmod(out / name, 0o644)  # package data: readable by everyone
    print(f"wrote {out / 'demo_model.pt'} ({len(payload) / 1024:.0f} KiB) and {out / 'demo_metadata.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
