"""One frozen configuration, checked completely when it is made: before any file is read, so a
typo in an option costs nothing. `prune(**options)` and the CLI both build a `PruneConfig`;
the resume fingerprint is derived from it.

Each group's `__post_init__` checks its own fields and fills in what depends on them (the
rate N:M implies, the per-layer rates a file gives); `PruneConfig.__post_init__` checks the
combinations. Fields marked `SETTING` do not change what is trained, so `--resume` ignores them.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from pathlib import Path
from dataclasses import dataclass, field

from .binding import split_binding
from .device import check_available as check_device
from .device import parse as parse_device
from .data import parse_input_shapes
from .errors import OnnxPruneError

STRUCTURES = ("unstructured", "filter", "channel", "column", "pattern", "block", "nm")
COUPLED = ("filter", "channel")  # groups span layers through the channel analysis
METHODS = ("reweighted", "magnitude")
MODES = ("endtoend", "layerwise")
SCOPES = ("global", "layer")
RATE_OF = ("weights", "macs")
QUANTIZE = ("int8", "cluster")
TARGETS = ("ort", "trt")
STORAGE = ("compact", "sparse", "dense")
DEFAULT_RATE = 0.9


def _setting(default):
    """A field that shapes the output or the run, not what is trained: resume may change it."""
    return field(default=default, metadata={"training": False})


def _one_of(value, allowed, what: str) -> None:
    if value not in allowed:
        raise OnnxPruneError(f"{what} must be one of {', '.join(allowed)}, not {value!r}")


def _layer_rates(value) -> tuple[tuple[str, float], ...]:
    """--layer-rates: a JSON file (as `onnxprune analyze` writes it, or a plain {layer: rate}) or a
    dict, as sorted (layer, rate) pairs, every rate in [0, 1) (0: the layer is left whole)."""
    if value is None:
        return ()
    if isinstance(value, (str, os.PathLike)):
        path = value
        try:
            loaded = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise OnnxPruneError(f"--layer-rates {value}: cannot read it as JSON ({e})") from None
        value = loaded.get("layer_rates", loaded) if isinstance(loaded, dict) else loaded
        if value is None:
            raise OnnxPruneError(f"--layer-rates {path}: it suggests no per-layer rates (an analysis of filter or "
                                 "channel units, which span layers)")
    pairs = value.items() if isinstance(value, dict) else value
    try:
        out = tuple(sorted((str(k), float(v)) for k, v in pairs))
    except (TypeError, ValueError):
        raise OnnxPruneError("--layer-rates must map layer names to rates, e.g. {\"conv1\": 0.5}") from None
    bad = [k for k, v in out if not 0 <= v < 1]
    if bad:
        raise OnnxPruneError(f"--layer-rates: rates must be in [0, 1); {', '.join(bad)} are not")
    return out


def pair(text: str, sep: str, option: str, want: str) -> tuple[int, int]:
    """'4x4' / '2:4' → (4, 4) / (2, 4), positive integers."""
    parts = str(text).lower().split(sep)
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise OnnxPruneError(f"{option} {text!r} is not {want}")
    return int(parts[0]), int(parts[1])


@dataclass(frozen=True)
class Pruning:
    """What to remove, and by which method."""

    rate: float | None = None  # None: 0.9, or 1 − N/M for --structure nm
    structure: str = "unstructured"
    block: str = "4x4"  # --structure block: R×C tiles
    nm: str = "2:4"  # --structure nm
    scope: str = "global"
    layer_floor: float = 0.1
    rate_of: str = "weights"
    channel_multiple: int = 8
    exclude: tuple[str, ...] = ()
    method: str = "reweighted"
    finetune_baseline: bool = False  # --method magnitude --finetune
    layer_rates: object = ()  # --layer-rates: a JSON file (or dict) of layer name → rate; stored as sorted pairs
    mode: str = "endtoend"
    shrink: bool = _setting(True)

    def __post_init__(self):
        _one_of(self.structure, STRUCTURES, "structure")
        _one_of(self.method, METHODS, "method")
        _one_of(self.mode, MODES, "mode")
        _one_of(self.scope, SCOPES, "scope")
        _one_of(self.rate_of, RATE_OF, "rate-of")
        object.__setattr__(self, "exclude", tuple(self.exclude))
        pair(self.block, "x", "--block", "RxC, e.g. 4x4")
        n, m = pair(self.nm, ":", "--nm", "N:M, e.g. 2:4")
        if n >= m:
            raise OnnxPruneError(f"--nm {self.nm}: N must be smaller than M")
        rate = self.rate
        if self.structure == "nm":
            implied = 1 - n / m
            if rate is not None and abs(rate - implied) > 1e-9:
                raise OnnxPruneError(f"--structure nm --nm {self.nm} prunes exactly {implied:g} of the weights; "
                                     f"leave out --rate or set it to {implied:g}")
            rate = implied
        rate = DEFAULT_RATE if rate is None else rate
        if not 0 < rate < 1:
            raise OnnxPruneError(f"rate must be between 0 and 1 (exclusive), not {rate}")
        object.__setattr__(self, "rate", float(rate))
        if not 0 <= self.layer_floor <= 1:
            raise OnnxPruneError(f"layer floor must be in [0, 1], not {self.layer_floor}")
        if self.channel_multiple < 1:
            raise OnnxPruneError(f"channel multiple must be ≥ 1, not {self.channel_multiple}")
        object.__setattr__(self, "layer_rates", _layer_rates(self.layer_rates))
        if self.layer_rates and self.structure in (*COUPLED, "nm"):
            raise OnnxPruneError("--layer-rates sets per-layer rates for per-layer structures; filter and channel "
                                 "groups span layers, and nm has its rate built in")
        if self.rate_of == "macs" and self.structure not in COUPLED:
            raise OnnxPruneError("--rate-of macs needs --structure filter or channel (only they change the MACs run)")
        if self.mode == "layerwise":
            if self.structure in COUPLED:
                raise OnnxPruneError("--mode layerwise prunes each layer alone; filter/channel pruning couples "
                                     "layers (use --mode endtoend)")
            if self.method != "reweighted":
                raise OnnxPruneError("--mode layerwise trains with the reweighted method (leave out --method)")

    @property
    def trains(self) -> bool:
        return self.method == "reweighted" or self.finetune_baseline

    @property
    def label(self) -> str:
        return self.method + (" + fine-tune" if self.finetune_baseline and self.method == "magnitude" else "")


@dataclass(frozen=True)
class Schedule:
    """How long and how hard to train. Epochs are passes over the training samples."""

    epochs: int = 10  # reweighted phase (or the extra fine-tuning budget of magnitude+finetune)
    finetune_epochs: int = 10
    lam: float = 1.0  # penalty weight; the penalty ≈ lam × the fraction of groups still large
    eps: float = 0.01  # ε relative to a layer's mean squared group norm at the start
    reweight_every: int = 50  # steps between refreshes of P = 1/(‖W_g‖² + ε)
    lr: float = 1e-3
    finetune_lr: float = 5e-4
    batch_size: int = 64
    distill: float = 1.0  # with labels, the weight of distillation from the dense model beside cross-entropy
    always_reweight: bool = False  # run the reweighted phase even when hard pruning alone is harmless
    # after the cut, refit the kept weights to the dense model's layer outputs (onnxprune/reconstruct.py)
    reconstruct: bool = True

    def __post_init__(self):
        if self.distill < 0:
            raise OnnxPruneError(f"--distill must be ≥ 0, not {self.distill}")
        if self.batch_size < 1 or self.epochs < 0 or self.finetune_epochs < 0 or self.reweight_every < 1:
            raise OnnxPruneError("batch size and reweight interval must be ≥ 1, epochs ≥ 0")
        if not (self.lr > 0 and self.finetune_lr > 0 and self.lam >= 0 and self.eps > 0):
            raise OnnxPruneError("learning rates and --eps must be > 0, --lam ≥ 0")


@dataclass(frozen=True)
class Data:
    """Where samples come from and how they are split. `seed` drives every random choice."""

    val_fraction: float = 0.1
    output_name: str | None = None  # the model output to train against
    input_shapes: tuple[str, ...] = ()  # 'name=1x3x224x224' for synthesized inputs
    synth_samples: int = 2048
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "input_shapes", tuple(self.input_shapes))
        if not 0 <= self.val_fraction < 1:
            raise OnnxPruneError(f"val fraction must be in [0, 1), not {self.val_fraction}")
        if self.synth_samples < 1:
            raise OnnxPruneError(f"--synth-samples must be ≥ 1, not {self.synth_samples}")
        parse_input_shapes(self.input_shapes)


@dataclass(frozen=True)
class Compression:
    """What follows pruning: quantization, and how weights are stored."""

    quantize: str | None = None
    target: str = "ort"
    qat: bool = False
    bits: int = 4
    storage: str = _setting("dense")  # plain initializers, which every ONNX tool reads

    def __post_init__(self):
        if self.quantize is not None:
            _one_of(self.quantize, QUANTIZE, "quantize")
        _one_of(self.target, TARGETS, "target")
        _one_of(self.storage, STORAGE, "storage")
        if not 1 <= self.bits <= 8:
            raise OnnxPruneError(f"--bits must be between 1 and 8, not {self.bits}")
        if self.qat and self.quantize != "int8":
            raise OnnxPruneError("--qat trains against the int8 quantizer: add --quantize int8 "
                                 "(--quantize cluster always fine-tunes its codebooks)")

    @property
    def int8(self) -> bool:
        return self.quantize == "int8"

    @property
    def cluster(self) -> bool:
        return self.quantize == "cluster"


@dataclass(frozen=True)
class Preparation:
    """What is done to the graph before anything else sees it."""

    simplify: bool = True  # onnxsim
    optimize: bool = False  # ORT's basic offline optimizations
    inputs: tuple[str, ...] = ()  # 'sr=16000': inputs bound to constants (If branches they select folded)

    def __post_init__(self):
        object.__setattr__(self, "inputs", tuple(self.inputs))
        for item in self.inputs:
            split_binding(item)


@dataclass(frozen=True)
class Output:
    """Where results go and how the run behaves; none of it changes what is trained."""

    out: object = None  # path of the model to write (None: nothing written)
    workdir: object = None  # keep training artifacts and epoch checkpoints here
    resume: bool = False
    latency: bool = True  # time dense vs compressed for the report
    threads: int | None = None  # ORT intra-op threads
    max_drop: float | None = None  # points of the headline metric the run may lose, else nothing is written
    plot: object = None  # folder for the run's PNGs (plots.py)
    device: str = _setting("cpu")  # cpu, or cuda:N with ORT's CUDA training build (device.py)

    def __post_init__(self):
        object.__setattr__(self, "device", parse_device(self.device))
        check_device(self.device)
        if self.plot is not None and importlib.util.find_spec("matplotlib") is None:
            raise OnnxPruneError("--plot needs matplotlib, which is not installed: pip install 'onnxprune[plot]'")
        if self.max_drop is not None and not self.max_drop >= 0:
            raise OnnxPruneError(f"--max-drop must be ≥ 0 points, not {self.max_drop}")
        if self.resume and self.workdir is None:
            raise OnnxPruneError("--resume continues from the checkpoint in --workdir: give the same --workdir")
        if self.threads is not None and self.threads < 1:
            raise OnnxPruneError(f"--threads must be ≥ 1, not {self.threads}")


@dataclass(frozen=True)
class Search:
    """`--max-loss`: the tool chooses the rate (search.py). Trials are whole runs at one rate each."""

    max_loss: float | None = None  # points of the headline metric the chosen model may lose
    min_rate: float = 0.5  # the search's bracket, in rates: the least and most it tries
    max_rate: float = 0.995
    max_trials: int = 8
    trials_per_round: int = 2  # rates tried side by side per round: the schedule, whatever runs it
    jobs: int = _setting(1)  # local worker processes
    ray: str | None = _setting(None)  # 'auto' or a Ray cluster address: trials run as Ray tasks
    shared: object = _setting(None)  # set by the search for its trials: where their one reweighted phase is kept

    def __post_init__(self):
        if self.max_loss is not None and not self.max_loss >= 0:
            raise OnnxPruneError(f"--max-loss must be ≥ 0 points, not {self.max_loss}")
        if not 0 < self.min_rate < self.max_rate < 1:
            raise OnnxPruneError(f"the search needs 0 < --min-rate < --max-rate < 1, not {self.min_rate} and "
                                 f"{self.max_rate}")
        if self.max_trials < 2 or self.trials_per_round < 1 or self.jobs < 1:
            raise OnnxPruneError("--max-trials must be ≥ 2, --jobs ≥ 1")
        if (self.jobs > 1 or self.ray) and self.max_loss is None:
            raise OnnxPruneError("--jobs and --ray run the trials of a search: add --max-loss")


GROUPS = {"pruning": Pruning, "schedule": Schedule, "data": Data, "compression": Compression,
          "preparation": Preparation, "output": Output, "search": Search}


@dataclass(frozen=True)
class PruneConfig:
    """Every option of a run, grouped; `PruneConfig.from_options(**flat)` takes the flat names
    `prune()` and the CLI use (`rate`, `structure`, `epochs`, `quantize`, `out`…)."""

    pruning: Pruning = field(default_factory=Pruning)
    schedule: Schedule = field(default_factory=Schedule)
    data: Data = field(default_factory=Data)
    compression: Compression = field(default_factory=Compression)
    preparation: Preparation = field(default_factory=Preparation)
    output: Output = field(default_factory=Output)
    search: Search = field(default_factory=Search)

    def __post_init__(self):
        p, c = self.pruning, self.compression
        if self.search.max_loss is not None:
            if p.structure == "nm":
                raise OnnxPruneError("--structure nm has its rate built in (1 − N/M): nothing for --max-loss to choose")
            if self.output.workdir is not None:
                raise OnnxPruneError("--max-loss runs each trial in its own work folder: leave out --workdir")
            if self.output.max_drop is not None:
                raise OnnxPruneError("--max-loss is the budget; leave out --max-drop")
            if p.layer_rates:
                raise OnnxPruneError("--layer-rates fixes the rates that --max-loss would search; give one of them")
        if c.qat and not p.trains:
            raise OnnxPruneError("--qat needs training: use --method reweighted, or --method magnitude --finetune")
        if p.mode == "layerwise" and self.output.resume:
            raise OnnxPruneError("--resume is for --mode endtoend; layer-wise runs are short enough to rerun")
        if p.mode == "layerwise" and self.schedule.finetune_lr != Schedule.finetune_lr:
            raise OnnxPruneError("--finetune-lr is not used by --mode layerwise: both of its phases train at 10x --lr; "
                                 "leave it out, or set --lr")

    @classmethod
    def from_options(cls, **options) -> PruneConfig:
        """Flat option names → the grouped config. A `schedule` option may be a whole Schedule."""
        if options.get("max_loss") is not None and options.get("rate") is not None:
            raise OnnxPruneError("give either --rate or --max-loss (the search chooses the rate), not both")
        groups: dict[str, dict] = {g: {} for g in GROUPS}
        owner = {f.name: g for g, klass in GROUPS.items() for f in dataclasses.fields(klass)}
        sched = options.pop("schedule", None)
        for name, value in options.items():
            if name not in owner:
                raise TypeError(f"prune() got an unexpected option {name!r}")
            groups[owner[name]][name] = value
        if sched is not None:
            if groups["schedule"]:
                raise TypeError("give either schedule= or its fields (epochs=, lr=…), not both")
            groups["schedule"] = dataclasses.asdict(sched)
        return cls(**{g: GROUPS[g](**kw) for g, kw in groups.items()})

    def training_options(self) -> dict:
        """Every option that shapes what is trained (the resume fingerprint's part)."""
        return {g: {f.name: getattr(getattr(self, g), f.name) for f in dataclasses.fields(getattr(self, g))
                    if f.metadata.get("training", True)}
                for g in GROUPS if g not in ("output", "search")}

    def flat(self) -> dict:
        """All options under their flat names (for the report)."""
        return {f.name: getattr(getattr(self, g), f.name) for g in GROUPS for f in dataclasses.fields(GROUPS[g])}
