"""The Retrain widget: fine-tune the loaded model on a DATA folder (``train --init``) or train from
scratch, with the validation Dice of each epoch shown as it comes."""

from __future__ import annotations

import queue
import threading

from magicgui.widgets import CheckBox, Container, FileEdit, Label, LineEdit, PushButton

from biomedseg.napari_plugin.widgets.common import Job, current_model, set_model


def train_steps(state, data, out, options, cancelled: threading.Event):
    """:func:`~biomedseg.napari_plugin.corrections.retrain` in a thread of its own; yields
    ``(epoch, metrics row)`` after each validated epoch and returns the run folder. Setting
    ``cancelled`` stops training after the current epoch (the run is finished as usual)."""
    from biomedseg.napari_plugin.corrections import retrain

    rows: queue.Queue = queue.Queue()
    result: dict = {}

    def on_epoch(epoch, row) -> bool:
        rows.put((epoch, dict(row)))
        return cancelled.is_set()

    def run() -> None:
        try:
            result["run"] = retrain(state, data, out, options, on_epoch)
        except BaseException as exc:  # noqa: BLE001 - handed to the worker, which reports it
            result["error"] = exc
        finally:
            rows.put(None)

    thread = threading.Thread(target=run, name="biomedseg-retrain", daemon=True)
    thread.start()
    while (item := rows.get()) is not None:
        yield item
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["run"]


def _dice(row: dict) -> str:
    value = row.get("val_dice")
    try:
        return f"{float(value):.3f}"
    except (TypeError, ValueError):
        return "-"


class RetrainWidget(Container):
    """DATA folder + new run folder + time budget: Train runs ``biomedseg train DATA --out RUN
    [--init MODEL] --time-budget B [--set ...] --allow-unlabelled``; Cancel stops after the epoch."""

    def __init__(self, napari_viewer):
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.data = FileEdit(mode="d", label="DATA folder")
        self.out = FileEdit(mode="d", label="new run folder")
        self.fine_tune = CheckBox(value=True, text="fine-tune the loaded model (--init); else from scratch")
        self.time_budget = LineEdit(value="5m", label="time budget")
        self.settings = LineEdit(value="", label="--set", tooltip="config options key=value, space separated")
        self.train_button = PushButton(text="Train")
        self.history = Label(value="", label="validation Dice")
        self.use_button = PushButton(text="Use the new run as the model", enabled=False)
        widgets = [self.data, self.out, self.fine_tune, self.time_budget, self.settings, self.train_button]
        self.extend([*widgets, self.history, self.use_button])
        self.job = Job(self, "training", soft_cancel=True)
        self.train_button.changed.connect(self.train)
        self.use_button.changed.connect(self.use_new_run)
        self.new_run = None

    def train(self, *_) -> None:
        from biomedseg.napari_plugin.corrections import RetrainOptions

        options = RetrainOptions(
            fine_tune=bool(self.fine_tune.value),
            time_budget=self.time_budget.value.strip() or None,
            settings=self.settings.value.split(),
        )
        self.history.value = ""
        self.use_button.enabled = False
        args = (current_model(self.viewer), str(self.data.value or ""), str(self.out.value or ""), options)
        self.job.start(train_steps, *args, self.job.cancelled, done=self._trained, step=self._epoch)

    def _epoch(self, item) -> None:
        epoch, row = item
        line = f"epoch {epoch}: {_dice(row)}"
        self.history.value = "\n".join([*self.history.value.splitlines()[-9:], line])
        self.job.step(text=f"training: {line}")

    def _trained(self, run_dir) -> None:
        self.new_run = run_dir
        self.use_button.enabled = True
        stopped = " (stopped early)" if self.job.cancelled.is_set() else ""
        self.job.status.value = f"new run{stopped}: {run_dir}"

    def use_new_run(self, *_) -> None:
        from biomedseg.napari_plugin.session import load_model

        if self.new_run is not None:
            self.job.start(load_model, str(self.new_run), done=lambda state: set_model(self.viewer, state))
