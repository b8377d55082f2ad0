"""How the commands end: SIGTERM and SIGHUP raised as an exception, so that their cleanup (temporary files, partial
folders) runs as on Ctrl-C; once one stop arrived the next ones are ignored until that cleanup is done; every error
or stop printed as one line with its exit code (2; 128 + the signal: 130 Ctrl-C, 143 SIGTERM, 129 SIGHUP)."""
import contextlib
import signal
import sys
import threading

STOPS = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated", signal.SIGHUP: "hung up"}
_holding = False  # a stops_raise block holds the handlers (a command run inside another: framepack-native convert)


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived; a BaseException like KeyboardInterrupt, so `except Exception` does not swallow it."""

    def __init__(self, signum=signal.SIGTERM):
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def stops_raise():
    """While the block runs in the main thread, Ctrl-C raises KeyboardInterrupt and SIGTERM / SIGHUP Terminated; the
    first stop sets all three to be ignored until the block ends, so a second one cannot cut the cleanup short.
    A signal the process was started ignoring (nohup, a background job) stays ignored; nested blocks share them."""
    global _holding
    if threading.current_thread() is not threading.main_thread() or _holding:
        yield
        return

    def handler(signum, frame):
        for stop in previous:
            signal.signal(stop, signal.SIG_IGN)
        raise KeyboardInterrupt() if signum == signal.SIGINT else Terminated(signum)

    previous = {}
    for stop in STOPS:
        if signal.getsignal(stop) is not signal.SIG_IGN:
            previous[stop] = signal.signal(stop, handler)
    _holding = True
    try:
        yield
    finally:
        _holding = False
        for stop, old in previous.items():
            signal.signal(stop, old if old is not None else signal.SIG_DFL)


def _say(line):
    with contextlib.suppress(OSError):  # after a hang-up the terminal is gone: the cleanup matters, not the line
        print(line, file=sys.stderr)


def run_command(fn, errors, unfinished):
    """fn() -> exit code; `errors`, Ctrl-C, SIGTERM, SIGHUP -> one stderr line ("...; {unfinished}"), 2 / 130 / 143 /
    129. errors: the bad-input exception classes, or a function returning them, called inside the handling so that a
    Ctrl-C while it imports them (torch: seconds) is one line too. The line is printed while stops are still ignored.
    unfinished: the text, or a function returning it (what the stop leaves depends on how far the command got)."""
    def left():
        return unfinished() if callable(unfinished) else unfinished

    with stops_raise():
        try:
            if not isinstance(errors, tuple):
                errors = errors()
            return fn()
        except KeyboardInterrupt:
            _say(f"{STOPS[signal.SIGINT]}; {left()}")
            return 128 + signal.SIGINT
        except Terminated as e:
            _say(f"{STOPS.get(e.signum, 'terminated')}; {left()}")
            return 128 + e.signum
        except Exception as e:
            if not isinstance(errors, tuple) or not isinstance(e, errors):
                raise
            _say(f"error: {e}")
            return 2
