"""onnxprune from a checkout, without installing it: `python cli.py model.onnx --rate 0.9`.
The installed command (`onnxprune`) runs the same entry point, onnxprune/_launch.py."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from onnxprune._launch import entry  # noqa: E402

if __name__ == "__main__":
    entry()
