"""A step hook that interrupts training at a chosen step, as Ctrl-C would (shared by the resume tests)."""


class StopAt:
    """Raise ``KeyboardInterrupt`` after optimizer step ``step``."""

    def __init__(self, step: int):
        self.step = step

    def after_optimizer_step(self, state) -> None:
        if state.step == self.step:
            raise KeyboardInterrupt
