"""How the commands end: SIGTERM raised as an exception, so that their cleanup (temporary files, partial folders)
runs as on Ctrl-C, and every error or stop printed as one line with its exit code (2, 130, 143)."""
import contextlib
import signal
import sys
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


def run_command(fn, errors, unfinished):
    """fn() -> exit code; `errors`, Ctrl-C, SIGTERM -> one stderr line, 2 / 130 / 143 ("...; {unfinished}")."""
    try:
        with sigterm_raises():
            return fn()
    except errors as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted; {unfinished}", file=sys.stderr)
        return 130
    except Terminated:
        print(f"terminated; {unfinished}", file=sys.stderr)
        return 143
