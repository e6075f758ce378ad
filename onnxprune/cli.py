"""`onnxprune MODEL.onnx --rate 0.9`: the command line over onnxprune.prune()."""
from __future__ import annotations

import contextlib
import logging
import re
import shlex
import sys
import time
from pathlib import Path

import click

from .version import __version__
from .config import STRUCTURES, Schedule
from .errors import OnnxPruneError, QualityError

_D = Schedule()

# --help in sections, by option name (click lists options flat)
SECTIONS = {
    "Model and output": ["out", "report_path", "plot", "no_simplify", "optimize"],
    "Data": ["data", "eval_data", "val_fraction", "output_name", "input_shape", "fixed_input", "synth_samples"],
    "What to prune": ["rate", "structure", "block", "nm", "channel_multiple", "rate_of", "no_shrink", "scope",
                      "layer_floor", "layer_rates", "exclude", "method", "mode", "finetune"],
    "Schedule": ["epochs", "finetune_epochs", "lam", "eps", "reweight_every", "always_reweight", "reconstruct", "distill", "lr",
                 "finetune_lr", "batch_size", "seed"],
    "Compression": ["quantize", "target", "qat", "bits", "storage"],
    "Search (the tool chooses the rate)": ["max_loss", "min_rate", "max_rate", "max_trials", "jobs", "ray"],
    "Run": ["device", "workdir", "resume", "threads", "no_latency", "max_drop", "quiet", "verbose", "version", "help"],
}


class SectionedCommand(click.Command):
    """A command whose --help lists its options under SECTIONS' headings."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        help_option = self.get_help_option(ctx)
        records = {"help" if p is help_option else p.name: p.get_help_record(ctx)
                   for p in self.get_params(ctx) if isinstance(p, click.Option)}
        placed = {name for names in SECTIONS.values() for name in names}
        sections = dict(SECTIONS, Other=[n for n in records if n not in placed])
        for title, names in sections.items():
            rows = [records[n] for n in names if records.get(n)]
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


@click.command(cls=SectionedCommand,
               context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--rate", type=float, default=None,
              help="Fraction of the prunable weights to remove, in (0, 1). 0.9 keeps 10% (10x compression). "
                   "[default: 0.9; with --structure nm it is 1 - N/M]")
@click.option("-o", "--out", type=click.Path(path_type=Path), default=None,
              help="Where to write the pruned model. Default: <stem>.pruned.onnx beside the input. "
                   "Written atomically; never the input itself.")
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="Training samples: a .npz with one array per model input, in the model's own layout with "
                   "samples along its batch axis (the dimension the inputs share: a state [2, batch, 128] is "
                   "[2, N, 128]); an input without one (a sample rate) gets an array of its whole shape; and "
                   "optionally 'labels' (integer class ids). With labels the loss is cross-entropy plus --distill "
                   "times distillation from the dense model; without, "
                   "the dense model teaches the pruned one (KL divergence on softmax for [N, C] outputs, "
                   "mean squared error for other outputs). Without --data, inputs are synthesized from the "
                   "declared shapes (accuracy is then not assured).")
@click.option("--eval-data", type=click.Path(path_type=Path), default=None,
              help="A separate .npz (same arrays as --data) to measure dense vs pruned on, instead of a "
                   "split of --data.")
@click.option("--val-fraction", type=float, default=0.1, show_default=True,
              help="Share of --data held out (not trained on) to measure dense vs pruned.")
@click.option("--output", "output_name", default=None,
              help="Model output to train against when the model has several (default: the first for "
                   "labels; all float outputs for distillation).")
@click.option("--method", type=click.Choice(["reweighted", "magnitude"]), default="reweighted", show_default=True,
              help="reweighted: reweighted group-lasso training, hard pruning, masked fine-tuning. "
                   "magnitude: one-shot magnitude pruning of the dense weights (a baseline).")
@click.option("--mode", type=click.Choice(["endtoend", "layerwise"]), default="endtoend", show_default=True,
              help="endtoend: train the whole graph on the task loss. layerwise: prune one layer at a time, "
                   "training it alone to reproduce its dense output on --data (or synthesized inputs), with the "
                   "layers before it already pruned: needs no labels and no gradient through the rest of the "
                   "graph, so ops ONNX Runtime cannot differentiate elsewhere do not matter, and memory stays "
                   "at one layer's size. Both phases train at 10x --lr. Not for filter/channel.")
@click.option("--finetune", is_flag=True,
              help="With --method magnitude: fine-tune with the mask held, for the same total epochs as a "
                   "reweighted run (--epochs + --finetune-epochs).")
@click.option("--structure", type=click.Choice(list(STRUCTURES)), default="unstructured", show_default=True,
              help="What a group is (what is removed together). unstructured: each weight. filter: an output "
                   "channel with everything coupled to it (bias, BatchNorm, residual partners); channel: an "
                   "input channel across every layer that reads it. Filter and channel models are shrunk: "
                   "the output is a smaller dense model. column: one (input channel, kh, kw) position across "
                   "all filters. pattern: every 3x3 kernel keeps 4 entries in one of 8 shapes, and whole "
                   "kernels are removed to reach --rate. block: RxC tiles of the weight matrix (--block). "
                   "nm: N of every M consecutive input weights (--nm; 2:4 is what sparse tensor cores run).")
@click.option("--block", default="4x4", show_default=True, metavar="RxC",
              help="Tile size for --structure block (rows = output features, columns = inputs).")
@click.option("--nm", default="2:4", show_default=True, metavar="N:M",
              help="For --structure nm: keep at most N non-zeros in every M consecutive input weights.")
@click.option("--channel-multiple", type=int, default=8, show_default=True,
              help="With filter/channel: every layer keeps a multiple of this many channels (CPU kernels "
                   "run fastest on multiples of 8 or 16); 1 = no constraint.")
@click.option("--rate-of", type=click.Choice(["weights", "macs"]), default="weights", show_default=True,
              help="What --rate is a share of. macs (filter/channel only): remove that share of the "
                   "multiply-accumulates per sample, so early high-resolution layers count for what they cost "
                   "to run; the way to ask for speed.")
@click.option("--no-shrink", is_flag=True,
              help="With filter/channel: write the masked model (zeroed channels) instead of removing them.")
@click.option("--quantize", type=click.Choice(["int8", "cluster"]), default=None,
              help="After pruning, also quantize. int8: static int8 by ONNX Runtime's quantizer, calibrated on "
                   "--data (per-channel symmetric weights, so pruned weights stay exactly zero). cluster: each "
                   "layer's surviving weights share a codebook of 2^--bits values (k-means, refined during "
                   "fine-tuning), stored as codes + codebook. [default: no quantization]")
@click.option("--target", type=click.Choice(["ort", "trt"]), default="ort", show_default=True,
              help="Runtime the int8 model is for. ort: uint8 activations x int8 weights in QDQ form, which "
                   "ORT's CPU kernels run fastest (Convs with < 8 input channels stay float: slower in int8). "
                   "trt: symmetric int8 Q/DQ on every Conv/Gemm/MatMul input and float biases, TensorRT's "
                   "explicit quantization.")
@click.option("--qat", is_flag=True,
              help="With --quantize int8: fine-tune against the int8 weights (quantization-aware training with "
                   "a straight-through estimator), so accuracy recovers under the quantizer too.")
@click.option("--bits", type=int, default=4, show_default=True,
              help="With --quantize cluster: codebook size 2^bits per layer (entry 0 is reserved for 0).")
@click.option("--storage", type=click.Choice(["dense", "compact", "sparse"]), default="dense", show_default=True,
              help="How weights are written. dense: plain initializers, pruned weights as zeros, which every "
                   "ONNX tool reads (quantizers, onnxsim, TensorRT, Netron). compact: per weight the smallest "
                   "of dense, sparse_initializer, non-zeros + 8-bit gaps, or codes + codebook, decoded by "
                   "constant nodes that ORT folds when it loads the model (identical outputs and speed; tools "
                   "that need weight initializers do not see those weights). sparse: dense or a standard "
                   "sparse_initializer, whichever is smaller (ORT densifies it at load; its quantizer "
                   "refuses it).")
@click.option("--max-loss", type=float, default=None, metavar="POINTS",
              help="Instead of --rate: search for the largest compression that loses at most POINTS of the headline "
                   "metric (accuracy, top-1 agreement, or percent relative error) on the evaluation samples "
                   "(--eval-data, or the held-out --val-fraction of --data). Each trial is a whole run at one "
                   "rate; the report lists them all.")
@click.option("--min-rate", type=float, default=0.5, show_default=True,
              help="With --max-loss: the least the search removes (it fails if even this loses too much).")
@click.option("--max-rate", type=float, default=0.995, show_default=True,
              help="With --max-loss: the most the search removes.")
@click.option("--max-trials", type=int, default=8, show_default=True, help="With --max-loss: trials at most.")
@click.option("--jobs", type=int, default=1, show_default=True,
              help="With --max-loss: trials run side by side in this many local processes (2 per round).")
@click.option("--ray", default=None, metavar="auto|ADDRESS",
              help="With --max-loss: run the trials as Ray tasks on this cluster ('auto': the cluster this "
                   "machine is in, or a local one). Needs pip install 'onnxprune[ray]'.")
@click.option("--optimize", is_flag=True,
              help="Apply ONNX Runtime's basic offline graph optimizations (constant folding, Conv+BN/Add/Mul and "
                   "MatMul+Add fusion; standard ops only, so portable across execution providers) after onnxsim, "
                   "before training: the written graph is the optimized one.")
@click.option("--scope", type=click.Choice(["global", "layer"]), default="global", show_default=True,
              help="global: rank weights across all layers (each layer keeps a floor, see --layer-floor); "
                   "layer: every layer pruned to exactly --rate.")
@click.option("--layer-floor", type=float, default=0.1, show_default=True,
              help="With --scope global, each layer keeps at least this share of what a uniform per-layer "
                   "rate would keep, so no layer is wiped out.")
@click.option("--layer-rates", type=click.Path(path_type=Path), default=None, metavar="FILE",
              help="Per-layer rates from a JSON file ({layer: rate}, or what `onnxprune analyze` writes): each "
                   "listed layer is pruned alone at its rate, the others at --rate. Per-layer structures only.")
@click.option("--exclude", multiple=True, metavar="PATTERN",
              help="Skip layers whose node or weight name matches this glob (repeatable), e.g. 'fc2*'.")
@click.option("--epochs", type=int, default=_D.epochs, show_default=True,
              help="Epochs of the reweighted phase.")
@click.option("--finetune-epochs", type=int, default=_D.finetune_epochs, show_default=True,
              help="Epochs of masked fine-tuning after hard pruning.")
@click.option("--lam", "--lambda", "lam", type=float, default=_D.lam, show_default=True,
              help="Penalty weight λ. The penalty is λ times the share of groups that are still large, "
                   "so λ=1 weighs like a loss of 1 when nothing is pruned yet.")
@click.option("--eps", type=float, default=_D.eps, show_default=True,
              help="ε in P = 1/(‖W_g‖² + ε), relative to each layer's mean squared group norm.")
@click.option("--reweight-every", type=int, default=_D.reweight_every, show_default=True,
              help="Steps between recomputing the penalty coefficients P from the current weights.")
@click.option("--always-reweight", is_flag=True,
              help="Run the reweighted phase even when cutting the smallest groups of the dense weights alone keeps "
                   "≥ 99.5% top-1 agreement (or ≤ 5% relative error) on training samples; by default such a run "
                   "spends the whole budget fine-tuning from the dense weights, which keeps more accuracy.")
@click.option("--reconstruct/--no-reconstruct", default=_D.reconstruct, show_default=True,
              help="After the cut, refit the kept weights (and biases) of Conv, Gemm and MatMul layers so each layer's "
                   "output stays closest to the dense model's on training samples (least squares, two passes), then "
                   "fine-tune from there.")
@click.option("--distill", type=float, default=_D.distill, show_default=True,
              help="With labels: weight of distillation from the dense model (KL divergence to its softmax) "
                   "beside cross-entropy; 0 trains on the labels alone.")
@click.option("--lr", type=float, default=_D.lr, show_default=True, help="AdamW learning rate of the reweighted phase.")
@click.option("--finetune-lr", type=float, default=_D.finetune_lr, show_default=True,
              help="Starting learning rate of fine-tuning (cosine decay to zero).")
@click.option("--batch-size", type=int, default=_D.batch_size, show_default=True, help="Training batch size.")
@click.option("--input-shape", multiple=True, metavar="NAME=D1xD2..",
              help="Fix dynamic dimensions for synthesized data (repeatable): an input's whole shape "
                   "(input=1x3x224x224), or one named dimension in every input that declares it "
                   "(sequence_length=128).")
@click.option("--input", "fixed_input", multiple=True, metavar="NAME=VALUE",
              help="Bind an input of fixed shape to a constant, e.g. sr=16000 (repeatable): the written model "
                   "has it built in, and If branches it selects are folded, so weights inside them are pruned.")
@click.option("--synth-samples", type=int, default=2048, show_default=True,
              help="How many inputs to synthesize when there is no --data.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for shuffling, splits and synthesized data; "
              "the same seed gives the same model.")
@click.option("--no-simplify", is_flag=True,
              help="Keep the graph node for node (no onnxsim: BatchNorm stays unfolded, constants unfolded).")
@click.option("--workdir", type=click.Path(path_type=Path), default=None,
              help="Keep the ORT training artifacts and an after-every-epoch checkpoint in this folder, for --resume (default: a temporary folder, removed).")
@click.option("--resume", is_flag=True,
              help="Continue an interrupted run from the checkpoint it left in --workdir (one is saved after "
                   "every epoch whenever --workdir is given). Same model, data and options required; the "
                   "result is the model the uninterrupted run would have written.")
@click.option("--device", default="cpu", show_default=True, metavar="cpu|cuda[:N]",
              help="Where to train and run the models. cuda needs ONNX Runtime's CUDA training build in place of "
                   "the CPU one (see the README's GPU install); the report then times the models on the GPU "
                   "and on the CPU.")
@click.option("--threads", type=int, default=None, help="ORT intra-op threads for training (default: ORT's choice).")
@click.option("--no-latency", is_flag=True,
              help="Skip timing dense vs compressed in ONNX Runtime (batch 1 and 32) for the report.")
@click.option("--max-drop", type=float, default=None, metavar="POINTS",
              help="Fail (exit 3, nothing written) when the pruned model loses more than POINTS of the headline "
                   "metric (accuracy, top-1 agreement, or percent relative error) on the evaluation samples, "
                   "or looks collapsed.")
@click.option("--report", "report_path", type=click.Path(path_type=Path), default=None,
              help="Also write the summary as JSON to this file.")
@click.option("--plot", type=click.Path(path_type=Path), default=None, metavar="DIR",
              help="Write PNGs to DIR: per-layer kept share, the reweighted phase's curves (task loss, penalty, "
                   "groups alive), and with --max-loss each trial's metric against its compression. Needs "
                   "pip install 'onnxprune[plot]'.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or summary table (errors still print).")
@click.option("-v", "--verbose", count=True,
              help="More log lines on stderr: -v each stage and epoch (INFO), -vv everything (DEBUG).")
@click.version_option(__version__, "--version", prog_name="onnxprune", message="%(prog)s %(version)s")
def main(model, rate, out, data, eval_data, val_fraction, output_name, method, mode, finetune, structure, block, nm,
         channel_multiple, rate_of, no_shrink, quantize, target, qat, bits, storage, max_loss, min_rate, max_rate,
         max_trials, jobs, ray, optimize, scope, layer_floor, exclude, epochs, finetune_epochs, lam, eps, reweight_every,
         always_reweight, reconstruct, distill, lr, finetune_lr, batch_size, input_shape, fixed_input, synth_samples, seed, no_simplify, workdir, resume, threads, no_latency,
         max_drop, report_path, plot, layer_rates, device, quiet, verbose):
    """Prune an ONNX model to --rate with reweighted group-lasso training in ONNX Runtime,
    and write it back as the same graph: pruned weights exactly zero, or (filter/channel)
    the removed channels gone from the graph.

    \b
    Example:
      onnxprune models/lenet5.onnx --rate 0.9 --data models/mnist_train.npz --eval-data models/mnist_test.npz
      onnxprune models/resnet_mnist.onnx --structure filter --rate 0.5 --data models/mnist_train.npz
      onnxprune models/lenet5.onnx --rate 0.97 --quantize int8 --qat --data models/mnist_train.npz
      onnxprune models/lenet5.onnx --max-loss 0.5 --data models/mnist_train.npz

    Per-layer sensitivity and suggested per-layer rates: onnxprune analyze MODEL --data F (see
    onnxprune analyze --help).
    """
    from .api import prune
    from .config import PruneConfig
    from .report import write_json

    out = out if out is not None else model.with_name(model.stem + ".pruned.onnx")
    _log_to_stderr(quiet, verbose)
    with _one_line_errors():
        if report_path is not None and not (report_path.parent if str(report_path.parent) else Path(".")).is_dir():
            raise OnnxPruneError(f"report folder {report_path.parent} does not exist")
        if report_path is not None and report_path.is_dir():
            raise OnnxPruneError(f"--report {report_path} is a folder; give a file name (e.g. {report_path / 'report.json'})")
        config = PruneConfig.from_options(
            rate=rate, out=out, output_name=output_name, method=method, mode=mode, finetune_baseline=finetune,
            scope=scope, layer_floor=layer_floor, structure=structure, block=block, nm=nm,
            channel_multiple=channel_multiple, rate_of=rate_of, shrink=not no_shrink, quantize=quantize,
            target=target, qat=qat, bits=bits, storage=storage, optimize=optimize, latency=not no_latency,
            exclude=exclude, epochs=epochs, finetune_epochs=finetune_epochs, lam=lam, eps=eps,
            reweight_every=reweight_every, always_reweight=always_reweight, reconstruct=reconstruct, distill=distill, lr=lr, finetune_lr=finetune_lr, batch_size=batch_size,
            val_fraction=val_fraction, input_shapes=input_shape, synth_samples=synth_samples, seed=seed,
            simplify=not no_simplify, inputs=fixed_input, workdir=workdir, max_drop=max_drop, resume=resume, threads=threads,
            max_loss=max_loss, min_rate=min_rate, max_rate=max_rate, max_trials=max_trials, jobs=jobs, ray=ray,
            plot=plot, layer_rates=layer_rates or (), device=device)
        result = prune(model, data=data, eval_data=eval_data, config=config,
                       progress=_no_bars if quiet else _progress_bars)
        if report_path is not None:
            write_json({"command": shlex.join(["onnxprune", *sys.argv[1:]]), **result.report}, report_path)
    if not quiet:
        click.echo(result.summary())


@contextlib.contextmanager
def _one_line_errors():
    """An error the library explains ends as one line on stderr and exit 2 (3: the quality gate);
    Ctrl-C as 130. Either way nothing was written."""
    try:
        yield
    except QualityError as e:
        click.echo(f"onnxprune: error: {e}", err=True)
        sys.exit(3)
    except OnnxPruneError as e:
        click.echo(f"onnxprune: error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("onnxprune: interrupted; nothing was written", err=True)
        sys.exit(130)


def _log_to_stderr(quiet: bool, verbose: int = 0) -> None:
    """The library's log lines (warnings; with -q errors only; -v info, -vv debug) as
    `warning: …` on stderr."""
    logger = logging.getLogger("onnxprune")
    for h in list(logger.handlers):
        if getattr(h, "onnxprune_cli", False):
            logger.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.onnxprune_cli = True
    handler.setFormatter(logging.Formatter("%(levelname_lower)s: %(message)s"))
    handler.addFilter(_lower_level)
    logger.addHandler(handler)
    logger.setLevel(logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)])
    logger.propagate = False
    # in a terminal (or with -v), each stage says what it is doing as it starts
    logging.getLogger("onnxprune.stage").setLevel(
        logging.INFO if (sys.stderr.isatty() or verbose) and not quiet else logging.WARNING)


def _lower_level(record: logging.LogRecord) -> bool:
    record.levelname_lower = record.levelname.lower()
    return True


class _Bar:
    def __init__(self, bar):
        self.bar = bar
        self.loss = float("nan")

    def update(self, n, loss):
        self.loss = loss
        self.bar.update(n)


@contextlib.contextmanager
def _progress_bars(total: int, label: str):
    """A bar in a terminal; elsewhere (CI, a log file) a line at every tenth of the phase."""
    if not sys.stderr.isatty():
        yield _Lines(total, label)
        return
    holder = {}
    with click.progressbar(length=total, label=f"{label:<11}", file=sys.stderr, show_pos=True, width=28,
                           item_show_func=lambda _: f"loss {holder['bar'].loss:.4f}" if "bar" in holder else "") as bar:
        holder["bar"] = _Bar(bar)
        yield holder["bar"]


class _Lines:
    """Progress as periodic one-line updates, for output that is not a terminal."""

    def __init__(self, total: int, label: str, parts: int = 10) -> None:
        self.total, self.label, self.parts = max(total, 1), label, parts
        self.done, self.start, self.shown = 0, time.monotonic(), 0
        # a line as it starts: a search's first trial can take minutes before its first tenth
        click.echo(f"{label}: started, {total} {'trials at most' if label == 'trials' else 'steps'}", err=True)

    def update(self, n: int, loss: float) -> None:
        self.done += n
        part = self.done * self.parts // self.total
        if n and part > self.shown:
            self.shown = part
            click.echo(f"{self.label}: step {self.done}/{self.total} ({100 * self.done // self.total}%), "
                       f"loss {loss:.4g}, {time.monotonic() - self.start:.0f} s", err=True)


def _no_bars(total: int, label: str):
    from .train import no_progress  # imported when run: `--help` need not load ONNX Runtime

    return no_progress(total, label)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="Samples, as for pruning (.npz, one array per input, optional 'labels').")
@click.option("--eval-data", type=click.Path(path_type=Path), default=None,
              help="Measure on this .npz instead of a held-out share of --data.")
@click.option("--val-fraction", type=float, default=0.1, show_default=True, help="Share of --data held out.")
@click.option("--structure", type=click.Choice(list(STRUCTURES)), default="unstructured", show_default=True,
              help="Which groups a unit loses; with filter/channel a unit is a coupled channel space.")
@click.option("--rates", default=",".join(f"{r:g}" for r in (0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98)), show_default=True,
              help="Rates each unit is pruned to, comma-separated.")
@click.option("--tolerance", type=float, default=0.5, show_default=True,
              help="Points a unit may cost for its suggested rate.")
@click.option("-o", "--out", type=click.Path(path_type=Path), default=None,
              help="The JSON file (table and suggested rates; --layer-rates reads it). Default: "
                   "<stem>.sensitivity.json beside the model; the plot goes beside it as .png.")
@click.option("--input-shape", multiple=True, metavar="NAME=D1xD2..", help="As for pruning.")
@click.option("--input", "fixed_input", multiple=True, metavar="NAME=VALUE", help="As for pruning.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("-q", "--quiet", is_flag=True, help="No table.")
@click.option("-v", "--verbose", count=True, help="More log lines on stderr.")
def analyze(model, data, eval_data, val_fraction, structure, rates, tolerance, out, input_shape, fixed_input, seed,
            quiet, verbose):
    """Per-layer sensitivity: each layer (with filter/channel, each coupled channel space) pruned
    alone, one-shot, at a few rates; the points it costs, a plot, and suggested per-layer rates
    for `onnxprune MODEL --layer-rates FILE`.

    \b
    Example:
      onnxprune analyze models/resnet_mnist.onnx --data models/mnist_train.npz
      onnxprune models/resnet_mnist.onnx --layer-rates models/resnet_mnist.sensitivity.json --data models/mnist_train.npz
    """
    from . import sensitivity
    from .config import PruneConfig
    from .export import check_output_path
    from .report import write_json

    _log_to_stderr(quiet, verbose)
    out = out if out is not None else model.with_name(model.stem + ".sensitivity.json")
    with _one_line_errors():
        try:
            chosen = sorted({float(r) for r in rates.split(",") if r.strip()})
        except ValueError:
            raise OnnxPruneError(f"--rates {rates!r} is not a comma-separated list of numbers") from None
        if not chosen or not all(0 < r < 1 for r in chosen):
            raise OnnxPruneError(f"--rates must be in (0, 1), not {rates!r}")
        check_output_path(out, model)
        config = PruneConfig.from_options(structure=structure, val_fraction=val_fraction, input_shapes=input_shape,
                                          inputs=fixed_input, seed=seed, latency=False)
        result = sensitivity.analyze(model, data=data, eval_data=eval_data, config=config, rates=chosen,
                                     tolerance=tolerance)
        write_json(result.report, out)
        picture = out.with_suffix(".png")
        try:
            sensitivity.plot(result.report, picture)
        except ImportError:
            picture = None
    if not quiet:
        click.echo(result.summary())
        click.echo(f"written           {out}")
        click.echo(f"plot              {picture}" if picture else
                   "plot              not drawn: pip install 'onnxprune[plot]'")


SHARED_FLAGS = {"-q", "--quiet", "--verbose"}
_VERBOSITY = re.compile(r"-v+")


def entry() -> None:
    """The `onnxprune` command: `onnxprune analyze …` for sensitivity, else pruning."""
    args = sys.argv[1:]
    # `onnxprune -v analyze …`: flags both commands take may come first
    lead = next((i for i, a in enumerate(args) if a not in SHARED_FLAGS and not _VERBOSITY.fullmatch(a)), len(args))
    if lead < len(args) and args[lead] == "analyze":
        analyze(args[lead + 1:] + args[:lead], prog_name="onnxprune analyze")
    else:
        main(prog_name="onnxprune")


if __name__ == "__main__":
    entry()
