"""The `onnxprune` command's entry point: ONNX Runtime is a separate wheel (`onnxruntime`, or
`onnxruntime-gpu` for CUDA), so its absence is one line, not an import traceback."""
import sys

MISSING = ("onnxprune: error: ONNX Runtime is not installed; install it: pip install onnxruntime "
           "(or pip install onnxruntime-gpu for CUDA; 'onnxprune[cpu]' and 'onnxprune[gpu]' bring them)\n")


def entry() -> None:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        sys.stderr.write(MISSING)
        sys.exit(2)
    from .cli import entry as run

    run()
