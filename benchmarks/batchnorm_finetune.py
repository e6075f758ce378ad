"""Why BatchNorm must train on batch statistics: the PyTorch twin of the converged residual CNN,
pruned one-shot to 10x (global magnitude), then fine-tuned 20 epochs with BatchNorm frozen
(running statistics, as onnxprune trained it before) or on batch statistics, under Adam (onnxprune's
optimizer, lr 5e-4, cosine) or SGD (the PyTorch baselines'). Test accuracy on models/mnist_test.npz.

    pip install -e '.[dev]' && python benchmarks/batchnorm_finetune.py \
        [--variants adam5e-4/frozen/0,adam5e-4/batch/0,sgd0.01/frozen/0] [--seeds 0,1]

A variant is optimizer+lr / frozen|batch / distillation weight (KL to the dense model's softmax).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "models"))

from onnxprune.layers import find_prunable  # noqa: E402


def fit(module, x, y, opt_kind: str, frozen: bool, distill: float, teacher, masks, epochs: int, seed: int):
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    if opt_kind.startswith("sgd"):
        opt = torch.optim.SGD(module.parameters(), lr=float(opt_kind[3:]), momentum=0.9, weight_decay=5e-4,
                              nesterov=True)
    else:
        opt = torch.optim.Adam(module.parameters(), lr=float(opt_kind[4:]), eps=1e-8)
    steps = epochs * (len(xt) // 64)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    params = dict(module.named_parameters())
    for _ in range(epochs):
        module.train()
        if frozen:  # BatchNorm normalizes with its running statistics, which stay as they were
            for m in module.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.eval()
        order = torch.randperm(len(xt), generator=gen)
        for s in range(0, len(xt) - 63, 64):
            idx = order[s:s + 64]
            out = module(xt[idx])
            loss = F.cross_entropy(out, yt[idx])
            if distill:
                with torch.no_grad():
                    t = teacher(xt[idx])
                loss = loss + distill * F.kl_div(F.log_softmax(out, 1), F.log_softmax(t, 1), log_target=True,
                                                 reduction="batchmean")
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                for k, m in masks.items():
                    params[k].mul_(m)
    module.eval()


def main() -> None:
    import torch
    import twins

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default="adam5e-4/frozen/1,adam5e-4/batch/1,sgd0.01/frozen/0,sgd0.01/batch/0")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--rate", type=float, default=0.9)
    ap.add_argument("--epochs", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(2)
    train = dict(np.load(ROOT / "models" / "mnist_train.npz"))
    test = dict(np.load(ROOT / "models" / "mnist_test.npz"))
    model = onnx.load(str(ROOT / "models" / "resnet_mnist.onnx"))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    prunable = [twins.torch_key(layer.weight) for layer in find_prunable(model)[0]]
    for seed in [int(s) for s in args.seeds.split(",")]:
        for variant in args.variants.split(","):
            opt_kind, bn, distill = variant.split("/")
            teacher = twins.load_onnx_weights(twins.TWINS["resnet_mnist"](), inits).eval()
            twin = twins.load_onnx_weights(twins.TWINS["resnet_mnist"](), inits)
            params = dict(twin.named_parameters())
            scores = torch.cat([params[k].detach().abs().flatten() for k in prunable])
            cut = torch.kthvalue(scores, int(round(args.rate * scores.numel()))).values
            masks = {k: (params[k].detach().abs() > cut).float() for k in prunable}
            with torch.no_grad():
                for k, m in masks.items():
                    params[k].mul_(m)
            start = time.time()
            fit(twin, train["input"], train["labels"], opt_kind, bn == "frozen", float(distill), teacher, masks,
                args.epochs, seed)
            acc = twins.accuracy(twin, test["input"], test["labels"])
            print(f"{variant:<22} seed {seed}  test accuracy {100 * acc:.2f}%  {time.time() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
