"""What the dock widgets share: the model of each viewer, one-line notifications, jobs in threads.

A :class:`Job` runs one long task of a widget in a ``napari.qt.threading`` worker with a progress
bar and a Cancel button. A :class:`~biomedseg.core.errors.UserError` raised by the task never
leaves the worker as an exception (napari would show it with its traceback): it comes back as a
value and is shown as a notification with the command line's one-line message, also kept in the
widget's status line; the viewer keeps working and nothing is added.
"""

from __future__ import annotations

import logging
import threading
import weakref
from dataclasses import dataclass

from magicgui.widgets import Label, ProgressBar, PushButton

from biomedseg.core.errors import UserError

log = logging.getLogger("biomedseg")

_MODELS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # viewer -> ModelState
#: viewer -> [WeakMethod of a widget's callback(state)] (weak: a closed viewer and its widgets can go)
_LISTENERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def current_model(viewer):
    """The model loaded in ``viewer``'s Model widget (``None`` before one is loaded)."""
    return _MODELS.get(viewer)


def set_model(viewer, state) -> None:
    """Make ``state`` the model of ``viewer`` and tell the other widgets."""
    _MODELS[viewer] = state
    for ref in list(_LISTENERS.get(viewer, [])):
        callback = ref()
        if callback is not None:
            callback(state)


def on_model_change(viewer, method) -> None:
    """Call the bound ``method(state)`` whenever ``viewer``'s model changes (held weakly)."""
    _LISTENERS.setdefault(viewer, []).append(weakref.WeakMethod(method))


def require_model(viewer):
    state = current_model(viewer)
    if state is None:
        raise UserError("no model loaded: open a run folder or exported file in the Model widget first")
    return state


def one_line(exc: BaseException) -> str:
    """The message the command line prints for ``exc`` (without its ``error:``): a ``UserError`` as
    it is, an ``OSError`` as ``file: reason``, anything else as ``Type: first line`` (as ``predict``
    reports one failed input)."""
    if isinstance(exc, UserError):
        return str(exc)
    if isinstance(exc, OSError):
        return f"{exc.filename}: {exc.strerror or exc}" if exc.filename else str(exc)
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    return type(exc).__name__ + (f": {first}" if first else "")


def notify_error(message: str, status: Label | None = None) -> str:
    from napari.utils.notifications import show_error

    if status is not None:
        status.value = message
    show_error(message)
    return message


@dataclass(frozen=True)
class Failed:
    """What a task returns instead of raising a ``UserError`` or ``OSError``."""

    message: str


def _guarded(fn):
    """``fn`` with its ``UserError`` / ``OSError`` returned as :class:`Failed` (a generator's too)."""
    import inspect

    if inspect.isgeneratorfunction(fn):

        def gen(*args, **kwargs):
            try:
                return (yield from fn(*args, **kwargs))
            except (UserError, OSError) as exc:
                return Failed(one_line(exc))

        return gen

    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (UserError, OSError) as exc:
            return Failed(one_line(exc))

    return call


class Job:
    """A widget's long task: progress bar, Cancel, status line (added to ``container``)."""

    def __init__(self, container, what: str, soft_cancel: bool = False):
        self.what = what
        self.soft_cancel = soft_cancel  # cancel asks the task to stop (its result still counts)
        self.progress = ProgressBar(min=0, max=0, value=0, visible=False, label="progress")
        self.cancel_button = PushButton(text="Cancel", visible=False)
        self.status = Label(value="")
        self.cancel_button.changed.connect(self.cancel)
        container.extend([self.progress, self.cancel_button, self.status])
        self.cancelled = threading.Event()
        self.worker = None

    @property
    def busy(self) -> bool:
        return self.worker is not None

    def fail(self, exc_or_message) -> str:
        message = exc_or_message if isinstance(exc_or_message, str) else one_line(exc_or_message)
        return notify_error(message, self.status)

    def start(self, fn, *args, done=None, step=None, total: int = 0, **kwargs) -> bool:
        """Run ``fn(*args, **kwargs)`` in a worker; ``done(result)`` in the GUI thread unless it
        failed or was cancelled; a generator's yields go to ``step(value)`` (``total``: how many)."""
        from napari.qt.threading import create_worker

        if self.busy:
            self.fail(f"{self.what}: still running; wait or cancel it first")
            return False
        self.cancelled.clear()
        worker = create_worker(_guarded(fn), *args, _start_thread=False, **kwargs)
        self.progress.max, self.progress.value, self.progress.visible = total, 0, True
        self.cancel_button.visible = True
        self.status.value = f"{self.what}..."
        worker.returned.connect(lambda result: self._returned(result, done))
        worker.finished.connect(self._finished)
        if step is not None and hasattr(worker, "yielded"):
            worker.yielded.connect(step)
        self.worker = worker
        worker.start()
        return True

    def _returned(self, result, done) -> None:
        if isinstance(result, Failed):
            self.fail(result.message)
        elif self.cancelled.is_set() and not self.soft_cancel:
            self.status.value = f"{self.what}: cancelled"
        elif done is not None:
            try:
                done(result)
            except (UserError, OSError) as exc:
                self.fail(exc)

    def _finished(self) -> None:
        if self.cancelled.is_set() and not self.soft_cancel:  # a generator stopped: nothing returned
            self.status.value = f"{self.what}: cancelled"
        self.progress.visible = self.cancel_button.visible = False
        self.worker = None

    def cancel(self, *_) -> None:
        """Ask the task to stop: a generator stops at its next step and whatever a cancelled task
        returns is dropped; with ``soft_cancel`` the task reads :attr:`cancelled` itself (training
        stops after its epoch and the run is finished as usual)."""
        if self.worker is None:
            return
        self.cancelled.set()
        self.status.value = f"{self.what}: cancelling..."
        if not self.soft_cancel:
            self.worker.quit()

    def step(self, value: int | None = None, text: str | None = None) -> None:
        if value is not None:
            self.progress.value = min(value, self.progress.max) if self.progress.max else 0
        if text is not None:
            self.status.value = text
