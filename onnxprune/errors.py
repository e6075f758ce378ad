"""The one exception type that reaches users as a one-line message."""


class OnnxPruneError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class QualityError(OnnxPruneError):
    """The pruned model lost more than --max-drop allows, or collapsed: nothing was written (exit 3)."""
