"""Run logs: dvclive (live/metrics.json + one .tsv history per metric under live/plots/) and TensorBoard events.

dvc.yaml declares live/plots of every train stage as DVC plots (x: step), so `dvc plots show` draws each history
and `dvc plots diff` overlays them across commits and experiments; live/metrics.json is a plain output.

The evaluation history also lives in every checkpoint, so on resume both logs are rewritten from the
checkpoint's history: no duplicated or missing rows after a crash between a report and the next checkpoint.
The step of every record is the step clock in images, as the original's TensorBoard summaries.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from . import atomic

os.environ.setdefault("DVCLIVE_LOGLEVEL", "WARNING")


def _live(path: Path):
    """A dvclive `Live` that only writes files: it never opens the DVC repository or git.

    Stock `Live` opens the repository to manage experiments -- and, in a git repository without DVC, runs
    `dvc init` -- and crashes in a repository without commits. Here dvc.yaml declares the outputs and DVC runs
    the stage, so that integration is switched off (dvcyaml=False, save_dvc_exp=False, no repo access).
    """
    from dvclive import Live

    class FileOnlyLive(Live):
        def _init_dvc(self) -> None:
            self._dvc_repo = None

        def make_summary(self) -> None:
            # as Live's (same bytes), but renamed into place: a run killed mid-report never leaves an empty or
            # half metrics.json behind for `realmix runs` or `dvc metrics` to choke on
            if self._step is not None:
                self.summary["step"] = self.step
            atomic.write_text(self.metrics_file, json.dumps(self.summary, indent=4) + "\n")

    return FileOnlyLive(str(path), dvcyaml=False, save_dvc_exp=False, report=None)


# metrics.json (what `realmix runs` prints per run) keeps the headline figures; every metric, per-class
# accuracies included, has its full history under plots/metrics/.
SUMMARY = ("label/accuracy", "valid/accuracy", "valid/loss", "test/accuracy", "test/f1_macro", "raw/test/accuracy",
           "train/loss", "train/images_per_s")


class RunLogger:
    def __init__(self, live_dir: str | os.PathLike, tb_dir: str | os.PathLike | None,
                 history: list[dict[str, float]] = ()):
        self.live_dir = Path(live_dir)
        self.tb_dir = Path(tb_dir) if tb_dir is not None else None
        for d in (self.live_dir, self.tb_dir):
            if d is not None and d.exists():
                shutil.rmtree(d)
        self.live = _live(self.live_dir)
        self.latest: dict[str, float] = {}
        self.tb = None
        if self.tb_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.tb_dir))
        for record in history:
            self._write(record)
        self.flush()

    def log(self, record: dict[str, float]) -> None:
        """One evaluation: {"step": images, name: value, ...}."""
        self._write(record)
        self.flush()

    def _write(self, record: dict[str, float]) -> None:
        step = int(record["step"])
        self.latest = record
        self.live.step = step
        for name, value in record.items():
            if name == "step":
                continue
            self.live.log_metric(name, float(value))
            if self.tb is not None:
                self.tb.add_scalar(name, float(value), step)

    def flush(self) -> None:
        summary: dict = {}
        for key in SUMMARY:
            if key in self.latest:
                *parents, leaf = key.split("/")
                node = summary
                for part in parents:
                    node = node.setdefault(part, {})
                node[leaf] = float(self.latest[key])
        self.live.summary = summary
        self.live.make_summary()
        if self.tb is not None:
            self.tb.flush()

    def close(self) -> None:
        self.flush()
        if self.tb is not None:
            self.tb.close()
