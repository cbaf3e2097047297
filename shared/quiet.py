"""Quiet TensorFlow start-up for the commands: its C++ INFO lines hidden, every warning and error kept.

TensorFlow 2.21 prints, on import and again when a model first runs, lines such as::

    WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
    I0000 00:00:1796618423.830465   15489 port.cc:153] oneDNN custom operations are on. ...

from C++, straight to file descriptor 2, whatever ``TF_CPP_MIN_LOG_LEVEL`` says. Python cannot catch
them, so :func:`hide_native_info` puts a small filter process between descriptor 2 and the terminal: it
drops absl INFO lines (``I`` + date) and that preface, and passes every other byte on (``W``, ``E``
and ``F`` lines, tracebacks from native code, anything unknown). Python's own ``sys.stderr`` (errors,
warnings, progress bars) keeps writing to the terminal directly. A separate process rather than a
thread: it outlives a native crash of the command, so the crash's last lines still reach the terminal.
TensorFlow's Python-side ``tf.function`` retracing warnings are silenced in
:func:`featcache.shared.backbones.import_tensorflow`. ``--verbose`` (``FEATCACHE_VERBOSE=1``) shows it all.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys

VERBOSE_ENV = "FEATCACHE_VERBOSE"

# Run in the filter process: stdin is what the command's native code writes to descriptor 2.
_FILTER = r"""
import os, re, sys
info = re.compile(rb"^I\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w./-]+:\d+\] ")
preface = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
cont = b"To enable the following instructions:"
out = sys.stdout.buffer
for line in sys.stdin.buffer:
    if info.match(line) or line.rstrip(b"\n") == preface or line.startswith(cont):
        continue
    out.write(line)
    out.flush()
"""

_installed = False


def verbose() -> bool:
    """Whether the user asked to see TensorFlow's start-up and retracing messages."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def hide_native_info() -> bool:
    """Filter descriptor 2 as described above, once per process; True when the filter runs. Does nothing
    with ``--verbose``, when ``sys.stderr`` is not descriptor 2 (a test runner capturing it), or when the
    filter cannot start (the command then prints what TensorFlow prints)."""
    global _installed
    if _installed or verbose():
        return _installed
    try:
        if sys.stderr.fileno() != 2:
            return False
        terminal = os.dup(2)
        os.set_inheritable(terminal, False)
        proc = subprocess.Popen(
            [sys.executable, "-I", "-c", _FILTER], stdin=subprocess.PIPE, stdout=terminal, stderr=terminal
        )
    except (OSError, ValueError, io.UnsupportedOperation):
        return False
    assert proc.stdin is not None
    sys.stderr.flush()
    os.dup2(proc.stdin.fileno(), 2)  # native writes (and child processes' descriptor 2) go through the filter
    proc.stdin.close()
    sys.stderr = io.TextIOWrapper(os.fdopen(terminal, "wb", buffering=0), write_through=True, errors="backslashreplace")
    _installed = True
    return True


__all__ = ["VERBOSE_ENV", "hide_native_info", "verbose"]
