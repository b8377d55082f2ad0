"""SIGTERM as an exception: the commands' cleanup (temporary files, partial folders) then runs as on Ctrl-C."""
import contextlib
import signal
import threading


class Terminated(BaseException):
    """SIGTERM arrived; a BaseException like KeyboardInterrupt, so `except Exception` does not swallow it."""


@contextlib.contextmanager
def sigterm_raises():
    """While the block runs in the main thread, SIGTERM raises Terminated instead of killing the process."""
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return

    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the cleanup short
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
