"""What the curvature monitor adds to a training epoch: the zoo's MNIST LeNet (digits when no
MNIST folder is found) trained one epoch without and with ``CurvatureMonitor(every=N)``.

    python benchmarks/bench_training_monitor.py [--mnist DIR] [--train-limit 20000] [--every 100]
        [--activation relu,smooth] [--repeats 2] [--out FILE]

The epoch is the zoo's own (curvext.data.zoo: Adam lr 3e-3, batch 64, seeded shuffling; MNIST's
default 20000 training images), from the same seeded weights every time, so both sides do the
same arithmetic; the monitored side calls ``monitor.step(x, y)`` after every backward pass. The
two are timed in the same run, alternately (plain, monitored, monitored, plain, ...), and the
ratio is the median of the pairs' ratios. The final weights of the two sides are compared bit
for bit. A second table times one measurement of each quantity alone (median of 3, on 32
images of the first batch, after one warm-up) against one training step, and gives the ``every``
at which each would add 3% to the epoch.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from curvext import data
from curvext.data import zoo
from curvext.training import CurvatureMonitor
from curvext.training.monitor import MEASURES

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reporting import add_malloc_option, configure_malloc, emit  # noqa: E402

DEFAULT_MNIST = Path(os.environ.get("MNIST_DIR", "data/mnist"))  # a folder of the four MNIST IDX files


def load(mnist, train_limit):
    folder = Path(mnist) if mnist else DEFAULT_MNIST
    if folder.is_dir():
        return "mnist", data.load_mnist(folder, "train", limit=train_limit)
    ds = data.load_digits("train")
    return "digits", ds.subset(min(train_limit, len(ds)))


def epoch(activation, dataset, ds, *, monitor_every=None, monitor_settings=None, seed=0, batch_size=64):
    """One zoo training epoch; returns (seconds, final weights, monitor or None)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = zoo.build("lenet", activation, dataset)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    monitor = CurvatureMonitor(model, every=monitor_every, **(monitor_settings or {})) if monitor_every else None
    model.train()
    start = time.perf_counter()
    perm = torch.randperm(len(ds), generator=gen)
    for i in range(0, len(ds), batch_size):
        idx = perm[i:i + batch_size]
        x, y = ds.images[idx], ds.labels[idx]
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if monitor is not None:
            monitor.step(x, y)
        opt.step()
    seconds = time.perf_counter() - start
    return seconds, [p.detach().clone() for p in model.parameters()], monitor


def parts(activation, dataset, ds, monitor_settings, batch_size=64, seed=0):
    """Seconds of one training step and of one measurement of each quantity alone (medians)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = zoo.build("lenet", activation, dataset)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    x, y = ds.images[:batch_size], ds.labels[:batch_size]

    def train_step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    def timed(fn, repeat):
        fn()  # warm-up (first-use checks, plans)
        out = []
        for _ in range(repeat):
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
        return statistics.median(out)

    step = timed(train_step, 20)
    each = {}
    for name in MEASURES:
        mon = CurvatureMonitor(model, every=1, measures=(name,), **monitor_settings)
        each[name] = timed(lambda: mon.measure(x, y), 3)
    mon = CurvatureMonitor(model, every=1, **monitor_settings)
    each["all three"] = timed(lambda: mon.measure(x, y), 3)
    return step, each


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mnist", default=None, help=f"MNIST IDX folder (default {DEFAULT_MNIST} if present, else digits)")
    p.add_argument("--train-limit", type=int, default=20000)
    p.add_argument("--every", type=int, default=100)
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--activation", default="relu")
    p.add_argument("--repeats", type=int, default=2, help="plain/monitored pairs per activation")
    p.add_argument("--out", default=None)
    add_malloc_option(p)
    args = p.parse_args(argv)
    malloc = configure_malloc(args)
    dataset, ds = load(args.mnist, args.train_limit)
    settings = {"images": args.images}
    steps = -(-len(ds) // 64)
    load_avg = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [f"# Curvature monitor overhead: {dataset} LeNet, one epoch of {len(ds)} images ({steps} steps of 64), "
             f"monitor every={args.every} on {args.images} images", "",
             f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} "
             f"threads, {malloc}, load average at start {load_avg:.1f}", "",
             "| model | plain epoch (s) | monitored epoch (s) | ratio (median of pairs) | records | same weights |",
             "|---|---:|---:|---:|---:|---|"]
    part_lines = ["", "| model | one training step (ms) | measure | one measurement (ms) | = training steps "
                  "| every for 3% |", "|---|---:|---|---:|---:|---:|"]
    for activation in [a.strip() for a in args.activation.split(",")]:
        plain, monitored, ratios, same = [], [], [], True
        records = 0
        for r in range(args.repeats):
            order = (False, True) if r % 2 == 0 else (True, False)
            got = {}
            for with_monitor in order:
                got[with_monitor] = epoch(activation, dataset, ds, monitor_every=args.every if with_monitor else None,
                                          monitor_settings=settings)
            plain.append(got[False][0])
            monitored.append(got[True][0])
            ratios.append(got[True][0] / got[False][0])
            same &= all(torch.equal(a, b) for a, b in zip(got[False][1], got[True][1]))
            records = len(got[True][2].history)
        lines.append(f"| LeNet {activation} | {statistics.median(plain):.2f} | {statistics.median(monitored):.2f} | "
                     f"{statistics.median(ratios):.3f} | {records} | {'yes' if same else 'NO'} |")
        step, each = parts(activation, dataset, ds, settings)
        for name, seconds in each.items():
            needed = seconds / (0.03 * step)
            part_lines.append(f"| LeNet {activation} | {1e3 * step:.1f} | {name} | {1e3 * seconds:.1f} | "
                              f"{seconds / step:.1f} | {needed:.0f} |")
    emit(lines + part_lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
