"""Per-epoch logging: ``metrics.csv`` (rewritten atomically each epoch) and TensorBoard events."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

COLUMNS = [
    "epoch",
    "iteration",
    "train_loss",
    "val_loss",
    "val_dice",
    "val_iou",
    "val_precision",
    "val_recall",
    "val_f1",
    "val_fp",
    "val_fn",
    "lr",
    "seconds",
    "images_per_s",
    "data_wait_share",
]


class RunLogger:
    """Collects one row per epoch; keeps rows from an earlier run when resuming."""

    def __init__(self, csv_path: Path, tensorboard_dir: Path | None = None, resume: bool = False):
        """Rows go to ``csv_path``; TensorBoard events to ``tensorboard_dir`` (``None``: none)."""
        self.csv_path = Path(csv_path)
        self.rows: list[dict] = []
        self.extra_columns: list[str] = []
        if resume and self.csv_path.is_file():
            with open(self.csv_path, newline="") as f:
                self.rows = list(csv.DictReader(f))
        self.tb = None
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(log_dir=str(tensorboard_dir))
            except Exception:  # tensorboard missing or broken: CSV still works
                self.tb = None

    def truncate(self, epoch: int) -> None:
        """Drop rows after ``epoch`` (rows of a crashed run past the resumed checkpoint)."""
        self.rows = [r for r in self.rows if int(float(r["epoch"])) <= epoch]

    def log(self, row: dict) -> None:
        for k in row:
            if k not in COLUMNS and k not in self.extra_columns:
                self.extra_columns.append(k)
        self.rows.append(row)
        self._write_csv()
        if self.tb is not None:
            step = int(row["iteration"])
            for k, v in row.items():
                if k not in ("epoch", "iteration") and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, step)
            self.tb.flush()

    def _write_csv(self) -> None:
        cols = COLUMNS + self.extra_columns
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in self.rows:
            w.writerow({k: _fmt(r.get(k, "")) for k in cols})
        tmp = self.csv_path.with_suffix(".csv.tmp")
        tmp.write_text(buf.getvalue())
        os.replace(tmp, self.csv_path)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.6g}"
    return v
