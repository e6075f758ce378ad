"""--max-loss on the converged LeNet-5: the model the search chooses within the budget on a
validation split, its accuracy on the test split (never seen), the fixed rates it competes with,
and the wall time of the same search run by 1 and by 2 worker processes.

    pip install -e '.[dev]' && python benchmarks/search.py [--max-loss 0.5] [--jobs 1,2] [--plot docs/images]

Two protocols (`--dense`):
- `heldout` (default): LeNet-5 built and trained as models/build_models.py builds the shipped one,
  but with the last 400 of its 4,000 training images held back, as a practitioner keeps a
  validation split; the search and the fixed-rate runs score on those 400 (`--eval-data`).
- `shipped`: models/lenet5.onnx, validation = the held-out 10% of models/mnist_train.npz, which
  the dense model was trained on (it knows every image by heart).

In the same run, with the same data and seed, the fixed rates of `--rates` run once each: the best
one within the budget is what the search has to match. The searches use seed 0 and the default
schedule; they must choose the same rate whatever the workers (the rates tried follow the results
only). Writes benchmarks/results/search.{md,json}.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "models"))

import onnxprune  # noqa: E402
from onnxprune.data import load_npz, run_model  # noqa: E402
from onnxprune.metrics import accuracy, drop_points  # noqa: E402
from onnxprune.plumbing import session  # noqa: E402

HELD_BACK = 400


def dense_files(protocol: str, work: Path) -> dict:
    if protocol == "shipped":
        return {"model": ROOT / "models" / "lenet5.onnx", "train": ROOT / "models" / "mnist_train.npz", "val": None,
                "test": ROOT / "models" / "mnist_test.npz"}
    import numpy as np
    import build_models as b

    x, y = b.mnist()
    return b.build("lenet5", b.lenet5(np.random.default_rng(b.SEED)), x, y, 4000, epochs=60, lr=0.05,
                   data_name="mnist", out=work, n_val=HELD_BACK)


def test_accuracy(model, test: dict) -> float:
    return accuracy(run_model(session(model), test, ["input"])[0], test["labels"])


def fixed_run(files: dict, rate: float, seed: int, test: dict) -> dict:
    start = time.perf_counter()
    result = onnxprune.prune(files["model"], rate=rate, data=files["train"], eval_data=files["val"], seed=seed,
                             latency=False)
    m = result.report["metric"]
    return {"seed": seed, "rate": rate, "compression": result.report["totals"]["compression"], "val_dense": m["dense"],
            "val_pruned": m["pruned"], "val_drop": drop_points(m), "test_accuracy": test_accuracy(result.model, test),
            "wall_s": time.perf_counter() - start}


def search_run(files: dict, max_loss: float, seed: int, jobs: int, test: dict, plot) -> dict:
    start = time.perf_counter()
    result = onnxprune.prune(files["model"], max_loss=max_loss, data=files["train"], eval_data=files["val"],
                             seed=seed, jobs=jobs, latency=False, plot=plot)
    s = result.report["search"]
    chosen = next(t for t in s["trials"] if t["rate"] == s["chosen_rate"])
    return {"seed": seed, "jobs": jobs, "wall_s": time.perf_counter() - start, "chosen_rate": s["chosen_rate"],
            "compression": chosen["compression"], "val_dense": chosen["metric"]["dense"],
            "val_pruned": chosen["metric"]["pruned"], "val_drop": chosen["drop"],
            "test_accuracy": test_accuracy(result.model, test), "trials": s["trials"],
            "warnings": result.report["warnings"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-loss", type=float, default=0.5)
    ap.add_argument("--seeds", default="0,1,2", help="each seed: the fixed rates and a search in one process")
    ap.add_argument("--jobs", default="1,2", help="worker counts timed on the first seed's search")
    ap.add_argument("--rates", default="0.9,0.93,0.95,0.96,0.97,0.98", help="fixed rates run beside the search")
    ap.add_argument("--dense", choices=("heldout", "shipped"), default="heldout")
    ap.add_argument("--plot", type=Path, default=None, help="folder for the first search's plots")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    files = dense_files(args.dense, ROOT / "build" / "search_heldout")  # rebuilt each run (seeded)
    test = load_npz(files["test"])
    dense_test = test_accuracy(str(files["model"]), test)
    seeds = [int(x) for x in args.seeds.split(",")]
    jobs = [int(j) for j in args.jobs.split(",")]
    fixed, searches, timed = [], [], []
    for seed in seeds:
        for rate in (float(r) for r in args.rates.split(",") if r):
            fixed.append(fixed_run(files, rate, seed, test))
            f = fixed[-1]
            print(f"seed {seed}, fixed rate {rate:g} ({f['compression']:.1f}x): validation {100 * f['val_pruned']:.2f}% "
                  f"(dense {100 * f['val_dense']:.2f}%), test {100 * f['test_accuracy']:.2f}%", flush=True)
        for j in (jobs if seed == seeds[0] else jobs[:1]):
            r = search_run(files, args.max_loss, seed, j, test, args.plot if seed == seeds[0] and j == jobs[0] else None)
            (searches if j == jobs[0] else []).append(r)
            if seed == seeds[0]:
                timed.append(r)
            print(f"seed {seed}, jobs {j}: rate {r['chosen_rate']:.4g} ({r['compression']:.1f}x), validation "
                  f"{100 * r['val_pruned']:.2f}% (dense {100 * r['val_dense']:.2f}%), test "
                  f"{100 * r['test_accuracy']:.2f}% (dense {100 * dense_test:.2f}%), {len(r['trials'])} trials, "
                  f"{r['wall_s']:.0f} s", flush=True)

    args.out_dir.mkdir(parents=True, exist_ok=True)
    meta = {"model": "lenet5", "dense": args.dense, "max_loss": args.max_loss, "dense_test_accuracy": dense_test,
            "command": "python benchmarks/search.py " + " ".join(sys.argv[1:])}
    out = {"meta": meta, "fixed": fixed, "searches": searches, "timed": timed}
    (args.out_dir / "search.json").write_text(json.dumps(out, indent=2) + "\n")
    text = markdown(meta, fixed, searches, timed, args.max_loss)
    (args.out_dir / "search.md").write_text(text)
    print(text)


def best_fixed(fixed: list[dict], seed: int, max_loss: float) -> dict | None:
    within = [f for f in fixed if f["seed"] == seed and f["val_drop"] <= max_loss]
    return max(within, key=lambda f: f["compression"]) if within else None


def markdown(meta: dict, fixed: list[dict], searches: list[dict], timed: list[dict], max_loss: float) -> str:
    val = (f"the {HELD_BACK} training images held back from the dense model" if meta["dense"] == "heldout"
           else "the held-out 10% of models/mnist_train.npz (seen by the dense model)")
    dense = 100 * meta["dense_test_accuracy"]
    seeds = [r["seed"] for r in searches]
    lines = [f"`--max-loss {max_loss:g}` on the converged LeNet-5 (dense {dense:.2f}% on the test split); "
             f"validation = {val}. Command: `{meta['command']}`", "",
             "The search against the best fixed rate within the budget on validation (same data, seed and schedule):", "",
             "| seed | search: rate | compression | validation lost | test (lost) | best fixed: rate | compression | "
             "validation lost | test (lost) | search / fixed |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    ratios = []
    for r in searches:
        b = best_fixed(fixed, r["seed"], max_loss)
        ratio = r["compression"] / b["compression"] if b else float("nan")
        ratios.append(ratio)
        bcells = (f"{b['rate']:g} | {b['compression']:.1f}x | {b['val_drop']:.2f} | {100 * b['test_accuracy']:.2f}% "
                  f"({dense - 100 * b['test_accuracy']:.2f})" if b else "none | | | ")
        lines.append(f"| {r['seed']} | {r['chosen_rate']:.4g} | {r['compression']:.1f}x | {r['val_drop']:.2f} | "
                     f"{100 * r['test_accuracy']:.2f}% ({dense - 100 * r['test_accuracy']:.2f}) | {bcells} | {ratio:.2f}x |")
    med = sorted(ratios)[len(ratios) // 2]
    lines += ["", f"Median search / best fixed compression: {med:.2f}x over {len(ratios)} seed(s).", "",
              "Fixed rates, points lost on validation and test accuracy, per seed (" + ", ".join(map(str, seeds)) + "):", "",
              "| rate | compression | validation lost | test |", "|---:|---:|---|---|"]
    for rate in dict.fromkeys(f["rate"] for f in fixed):
        row = [f for f in fixed if f["rate"] == rate]
        drops = " / ".join(f"{f['val_drop']:.2f}" for f in row)
        tests = " / ".join(f"{100 * f['test_accuracy']:.2f}%" for f in row)
        lines.append(f"| {rate:g} | {row[0]['compression']:.1f}x | {drops} | {tests} |")
    first = timed[0]
    lines += ["", f"The seed-{first['seed']} search by 1 and 2 worker processes:", "",
              "| workers | chosen rate | compression | validation (dense) | test | trials | wall time | vs 1 worker |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in timed:
        lines.append(f"| {r['jobs']} | {r['chosen_rate']:.4g} | {r['compression']:.1f}x | {100 * r['val_pruned']:.2f}% "
                     f"({100 * r['val_dense']:.2f}%) | {100 * r['test_accuracy']:.2f}% | {len(r['trials'])} | "
                     f"{r['wall_s']:.0f} s | {first['wall_s'] / r['wall_s']:.2f}x |")
    lines += ["", f"Trials of the seed-{first['seed']} search, in the order they ran:", "",
              "| rate | compression | validation accuracy | points lost | within | time |", "|---:|---:|---:|---:|---|---:|"]
    for t in first["trials"]:
        lines.append(f"| {t['rate']:.4g} | {t['compression']:.1f}x | {100 * t['metric']['pruned']:.2f}% | "
                     f"{t['drop']:.2f} | {'yes' if t['within'] else 'no'} | {t['seconds']:.0f} s |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
