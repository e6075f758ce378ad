"""The one exception type that reaches users as a one-line message."""


class OnnxPruneError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class QualityError(OnnxPruneError):
    """The pruned model lost more than --max-drop allows, or collapsed: nothing was written (exit 3)."""


class Diverged(OnnxPruneError):
    """Training produced a non-finite loss or weight: the phase stops at once."""

    def __init__(self, phase: str, step: int, what: str = "loss") -> None:
        super().__init__(f"training diverged: the {what} became non-finite in the {phase} phase at step {step}")
        self.phase, self.step = phase, step
