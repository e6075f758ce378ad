"""`python -m onnxprune`: the same command as `onnxprune`."""
from ._launch import entry

entry()
