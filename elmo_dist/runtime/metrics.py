"""One `log(metrics, step)` interface: TensorBoard scalars on the main process; and the progress bar.

    tensorboard --logdir RUN_DIR

Events go to `RUN_DIR/tensorboard/`. On resume the writer purges events past the resumed step, so a
run killed after its last checkpoint leaves no orphan points in the curves.
"""
from __future__ import annotations

import sys
from pathlib import Path


def progress_bar(mode: str, is_main: bool, total: int, initial: int):
    """A tqdm bar over the steps on the main process's terminal (`logging.progress`: auto, bar or
    lines); None where log lines are wanted instead."""
    if not is_main or mode == "lines" or (mode == "auto" and not sys.stderr.isatty()):
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)


class MetricsLogger:
    def __init__(self, run_dir: str | Path, enabled: bool, tensorboard: bool, purge_step: int | None = None):
        self.enabled = enabled
        self.writer = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.logdir = Path(run_dir) / "tensorboard"
            self.writer = SummaryWriter(str(self.logdir), purge_step=purge_step)

    def log(self, metrics: dict, step: int) -> None:
        if self.writer is None:
            return
        for name, value in metrics.items():
            self.writer.add_scalar(name, float(value), step)

    def text(self, tag: str, text: str, step: int = 0) -> None:
        if self.writer is not None:
            # markdown code block so that YAML indentation survives TensorBoard's renderer
            self.writer.add_text(tag, "```\n" + text + "\n```", step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
