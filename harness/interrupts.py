"""A stop signal that cannot be lost: the command's SIGINT/SIGTERM handler records it here before raising
``KeyboardInterrupt``.

Python drops an exception raised inside a finalizer (``Exception ignored in ... __del__``): a Ctrl-C that
lands while the garbage collector runs one (during an import, say) would vanish, and a long run would train
on. The trainer reads :func:`requested` when its loop starts and between steps, so a recorded stop is
honoured at the next step boundary (a checkpoint first) even when the exception was swallowed.
"""
from __future__ import annotations

_signal: int | None = None


def record(signum: int) -> None:
    """Note that the process was asked to stop by ``signum``."""
    global _signal
    _signal = signum


def requested() -> int | None:
    """The signal that asked the process to stop, or ``None``."""
    return _signal


def clear() -> None:
    """Forget the recorded stop (it has been honoured: the run that read it stopped)."""
    global _signal
    _signal = None


def raise_stop(signum, frame) -> None:  # noqa: ARG001
    """A signal handler: record ``signum`` (kept even if the exception is swallowed inside a finalizer),
    then raise ``KeyboardInterrupt``."""
    record(signum)
    raise KeyboardInterrupt(f"signal {signum}")


def install() -> None:
    """SIGTERM (and Ctrl-C) raise ``KeyboardInterrupt`` in the main thread, the signal recorded first."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, raise_stop)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # Ctrl-C: the same, recorded
            signal.signal(signal.SIGINT, raise_stop)
