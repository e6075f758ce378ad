"""PyTorch twins of the example models (dev only: `pip install torch==2.13.0`).

Each twin computes what its ONNX graph in `build_models.py` computes, with parameters named
after the graph's initializers (`block1.conv1.bn.weight` is the twin's
`block1_conv1_bn.weight`), so weights move both ways by name. `build_models.py` trains the
twins as a practitioner would and writes their weights into the graphs; the benchmarks
start PyTorch baselines from the same weights.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F


def torch_key(onnx_name: str) -> str:
    """`block1.conv1.bn.weight` → `block1_conv1_bn.weight`; `dense0/kernel` → `dense0.kernel`."""
    cut = max(onnx_name.rfind("."), onnx_name.rfind("/"))
    return onnx_name[:cut].replace(".", "_").replace("/", "_") + "." + onnx_name[cut + 1:]


class LeNet5(nn.Module):
    """Caffe's LeNet-5: conv 20@5x5, pool, conv 50@5x5, pool, fc 500, ReLU, fc 10."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 20, 5), nn.Conv2d(20, 50, 5)
        self.fc1, self.fc2 = nn.Linear(800, 500), nn.Linear(500, 10)

    def forward(self, x):
        x = F.max_pool2d(self.conv2(F.max_pool2d(self.conv1(x), 2)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


class _Convs(nn.Module):
    """Conv (no bias) + BatchNorm modules named as the graph names them (`stem`, `stem_bn`)."""

    def add(self, name, cin, cout, k=3, stride=1, group=1):
        setattr(self, name, nn.Conv2d(cin, cout, k, stride, k // 2, groups=group, bias=False))
        setattr(self, name + "_bn", nn.BatchNorm2d(cout))

    def cbr(self, name, x, relu=True):
        y = getattr(self, name + "_bn")(getattr(self, name)(x))
        return F.relu(y) if relu else y

    def head(self, x):
        return self.fc(x.mean((2, 3)))


class ResNetMNIST(_Convs):
    def __init__(self):
        super().__init__()
        self.add("stem", 1, 32)
        self.add("block1_conv1", 32, 32), self.add("block1_conv2", 32, 32)
        self.add("block2_conv1", 32, 64, stride=2), self.add("block2_conv2", 64, 64)
        self.add("block2_shortcut", 32, 64, k=1, stride=2)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = F.max_pool2d(self.cbr("stem", x), 2)
        x = F.relu(self.cbr("block1_conv2", self.cbr("block1_conv1", x), relu=False) + x)
        b = self.cbr("block2_conv2", self.cbr("block2_conv1", x), relu=False)
        x = F.relu(b + self.cbr("block2_shortcut", x, relu=False))
        return self.head(x)


class ConcatDwMNIST(_Convs):
    def __init__(self):
        super().__init__()
        self.add("stem", 1, 16)
        self.add("branch_a", 16, 32, k=1)
        self.add("branch_b_dw", 16, 16, group=16), self.add("branch_b_pw", 16, 32, k=1)
        self.add("mix", 64, 64, stride=2)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = F.max_pool2d(self.cbr("stem", x), 2)
        x = torch.cat([self.cbr("branch_a", x), self.cbr("branch_b_pw", self.cbr("branch_b_dw", x))], 1)
        return self.head(self.cbr("mix", x))


class _Dense(nn.Module):
    """x·kernel + bias, kernel [in, out], as TensorFlow stores a Dense layer."""

    def __init__(self, a, b):
        super().__init__()
        self.kernel = nn.Parameter(torch.randn(a, b) * math.sqrt(2 / a))
        self.bias = nn.Parameter(torch.zeros(b))

    def forward(self, x):
        return x @ self.kernel + self.bias


class DigitsMLP(nn.Module):
    def __init__(self, sizes=(64, 128, 64, 10)):
        super().__init__()
        for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
            setattr(self, f"dense{i}", _Dense(a, b))
        self.n = len(sizes) - 1

    def forward(self, x):
        for i in range(self.n):
            x = getattr(self, f"dense{i}")(x)
            x = F.relu(x) if i < self.n - 1 else x
        return x


TWINS = {"lenet5": LeNet5, "resnet_mnist": ResNetMNIST, "concat_dw_mnist": ConcatDwMNIST, "digits_mlp": DigitsMLP}


def onnx_weights(module: nn.Module, names: list[str]) -> dict[str, np.ndarray]:
    """The twin's tensors for the graph's initializer `names` (those it has)."""
    state = module.state_dict()
    return {n: state[torch_key(n)].detach().cpu().numpy().astype(np.float32) for n in names if torch_key(n) in state}


def load_onnx_weights(module: nn.Module, weights: dict[str, np.ndarray]) -> nn.Module:
    """Every parameter and BatchNorm statistic of the twin from the graph's initializers."""
    state = module.state_dict()
    found = {torch_key(n): torch.from_numpy(np.array(v, np.float32)) for n, v in weights.items()
             if torch_key(n) in state}
    missing = [k for k in state if k not in found and not k.endswith("num_batches_tracked")]
    if missing:
        raise KeyError(f"the graph has no weights for {missing}")
    module.load_state_dict(found, strict=False)
    return module


def shift(x: torch.Tensor, gen: torch.Generator, pixels: int = 2) -> torch.Tensor:
    """Each image moved by up to `pixels` in x and y, zeros filling in."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pixels,) * 4)
    d = torch.randint(0, 2 * pixels + 1, (n, 2), generator=gen)
    rows = (torch.arange(h)[None, :] + d[:, :1])[:, None, :, None].expand(n, x.shape[1], h, w + 2 * pixels)
    out = padded.gather(2, rows)
    cols = (torch.arange(w)[None, :] + d[:, 1:])[:, None, None, :].expand(n, x.shape[1], h, w)
    return out.gather(3, cols)


def fit(module: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, lr: float, seed: int, augment: bool = True,
        weight_decay: float = 5e-4, batch_size: int = 64, masks: dict | None = None, on_epoch=None) -> nn.Module:
    """SGD with momentum 0.9 and cosine decay, weight decay, images shifted by up to 2 pixels.
    `masks` (parameter name → 0/1 tensor) are held after every step; `on_epoch(epoch, module)`
    runs after each epoch (gradual pruning updates `masks` there)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    opt = torch.optim.SGD(module.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay, nesterov=True)
    steps = epochs * (len(x) // batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    params = dict(module.named_parameters())
    for epoch in range(epochs):
        module.train()
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x) - batch_size + 1, batch_size):
            idx = order[start:start + batch_size]
            xb = xt[idx]
            if augment and xb.ndim == 4:
                xb = shift(xb, gen)
            loss = F.cross_entropy(module(xb), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            if masks:
                with torch.no_grad():
                    for name, m in masks.items():
                        params[name].mul_(m)
        if on_epoch:
            on_epoch(epoch, module)
    module.eval()
    return module


@torch.no_grad()
def accuracy(module: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    module.eval()
    return float((module(torch.from_numpy(x)).argmax(1).numpy() == y).mean())
