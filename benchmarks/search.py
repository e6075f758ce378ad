"""--max-loss on the converged LeNet-5: the model the search chooses within the budget on a
validation split carved from the training file, its accuracy on the test split (never seen), and
the wall time of the same search run by 1 and by 2 worker processes.

    pip install -e '.[dev]' && python benchmarks/search.py [--max-loss 0.5] [--jobs 1,2] [--plot docs/images]

Both searches use seed 0 and the default schedule; they must choose the same rate (the rates tried
follow the results only). Writes benchmarks/results/search.{md,json}.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import onnxprune  # noqa: E402
from onnxprune.data import load_npz, run_model  # noqa: E402
from onnxprune.metrics import accuracy  # noqa: E402
from onnxprune.plumbing import session  # noqa: E402

MODEL = ROOT / "models" / "lenet5.onnx"
TRAIN, TEST = ROOT / "models" / "mnist_train.npz", ROOT / "models" / "mnist_test.npz"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-loss", type=float, default=0.5)
    ap.add_argument("--jobs", default="1,2")
    ap.add_argument("--plot", type=Path, default=None, help="folder for the first search's plots")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    test = load_npz(TEST)
    dense_test = accuracy(run_model(session(str(MODEL)), test, ["input"])[0], test["labels"])
    runs = []
    for i, jobs in enumerate(int(j) for j in args.jobs.split(",")):
        start = time.perf_counter()
        result = onnxprune.prune(MODEL, max_loss=args.max_loss, data=TRAIN, seed=0, jobs=jobs, latency=False,
                                 plot=args.plot if i == 0 else None)
        wall = time.perf_counter() - start
        s = result.report["search"]
        test_acc = accuracy(run_model(session(result.model), test, ["input"])[0], test["labels"])
        chosen = next(t for t in s["trials"] if t["rate"] == s["chosen_rate"])
        runs.append({"jobs": jobs, "wall_s": wall, "chosen_rate": s["chosen_rate"],
                     "compression": chosen["compression"], "val_dense": chosen["metric"]["dense"],
                     "val_pruned": chosen["metric"]["pruned"], "val_drop": chosen["drop"], "test_accuracy": test_acc,
                     "trials": s["trials"]})
        print(f"jobs {jobs}: rate {s['chosen_rate']:.4g} ({chosen['compression']:.1f}x), validation "
              f"{100 * chosen['metric']['pruned']:.2f}% (dense {100 * chosen['metric']['dense']:.2f}%), test "
              f"{100 * test_acc:.2f}% (dense {100 * dense_test:.2f}%), {len(s['trials'])} trials, {wall:.0f} s",
              flush=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    meta = {"model": "lenet5", "max_loss": args.max_loss, "dense_test_accuracy": dense_test,
            "command": "python benchmarks/search.py " + " ".join(sys.argv[1:])}
    (args.out_dir / "search.json").write_text(json.dumps({"meta": meta, "runs": runs}, indent=2) + "\n")
    first = runs[0]
    lines = [f"`--max-loss {args.max_loss:g}` on the converged LeNet-5 (dense {100 * dense_test:.2f}% on the test split), "
             f"validation = the held-out 10% of models/mnist_train.npz. Command: `{meta['command']}`", "",
             "| workers | chosen rate | compression | validation (dense) | test (dense) | trials | wall time | vs 1 worker |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        lines.append(f"| {r['jobs']} | {r['chosen_rate']:.4g} | {r['compression']:.1f}x | {100 * r['val_pruned']:.2f}% "
                     f"({100 * r['val_dense']:.2f}%) | {100 * r['test_accuracy']:.2f}% ({100 * dense_test:.2f}%) | "
                     f"{len(r['trials'])} | {r['wall_s']:.0f} s | {first['wall_s'] / r['wall_s']:.2f}x |")
    lines += ["", "Trials of the first search, in the order they ran:", "",
              "| rate | compression | validation accuracy | points lost | within | time |", "|---:|---:|---:|---:|---|---:|"]
    for t in first["trials"]:
        lines.append(f"| {t['rate']:.4g} | {t['compression']:.1f}x | {100 * t['metric']['pruned']:.2f}% | "
                     f"{t['drop']:.2f} | {'yes' if t['within'] else 'no'} | {t['seconds']:.0f} s |")
    (args.out_dir / "search.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
