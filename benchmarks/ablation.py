"""What each part of onnxprune's recovery is worth on a converged model: named settings of the
schedule, several seeds, test accuracy on models/mnist_test.npz.

    pip install -e '.[dev]' && python benchmarks/ablation.py --rates 0.9,0.98 --seeds 0,1,2 \
        --configs '{"default": {}, "labels alone": {"distill": 0}, "always reweight": {"always_reweight": true}}'

Each config is a dict of `onnxprune.Schedule` fields (epochs, finetune_epochs, lam, eps, lr,
finetune_lr, distill, always_reweight, …) and other `onnxprune.prune` keywords (method=,
finetune_baseline=, …). Prints one line per run and the mean ± std per config and rate.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import onnxprune  # noqa: E402
from onnxprune.data import load_npz, run_model  # noqa: E402
from onnxprune.metrics import accuracy  # noqa: E402
from onnxprune.plumbing import session  # noqa: E402

SCHEDULE = {f.name for f in dataclasses.fields(onnxprune.Schedule)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="lenet5")
    ap.add_argument("--rates", default="0.9,0.98")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--configs", default='{"default": {}, "labels alone": {"distill": 0}}')
    args = ap.parse_args()
    path, train, test = (ROOT / "models" / f"{args.model}.onnx", ROOT / "models" / "mnist_train.npz",
                         ROOT / "models" / "mnist_test.npz")
    data = load_npz(test)
    score = lambda m: accuracy(run_model(session(m), data, ["input"])[0], data["labels"])  # noqa: E731
    print(f"dense {100 * score(onnx.load(str(path))):.2f}%", flush=True)
    for rate in (float(r) for r in args.rates.split(",")):
        for name, kw in json.loads(args.configs).items():
            sched = onnxprune.Schedule(**{k: v for k, v in kw.items() if k in SCHEDULE})
            other = {k: v for k, v in kw.items() if k not in SCHEDULE}
            accs = []
            for seed in (int(s) for s in args.seeds.split(",")):
                start = time.perf_counter()
                r = onnxprune.prune(path, rate, data=train, eval_data=test, seed=seed, latency=False, schedule=sched,
                                    **other)
                accs.append(score(r.model))
                print(f"rate {rate} {name:<24} seed {seed} {100 * accs[-1]:.2f}% "
                      f"({time.perf_counter() - start:.0f} s)", flush=True)
            print(f"== rate {rate} {name:<24} {100 * np.mean(accs):.2f} ± {100 * np.std(accs):.2f}", flush=True)


if __name__ == "__main__":
    main()
