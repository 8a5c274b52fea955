"""Guards against a broken Qt binding: PySide6 6.12.0 dropped a reference to True on every signal emit,
which crashed the app ('Fatal Python error: bool_dealloc') after a few thousand streamed tokens."""

import sys

from PySide6.QtCore import QObject, Signal


class _Emitter(QObject):
    number = Signal(int)
    flag = Signal(bool)
    payload = Signal(object)


def test_emitting_signals_keeps_reference_counts_of_true_and_false():
    emitter = _Emitter()
    received = []
    emitter.number.connect(lambda v: received.append(v))
    emitter.flag.connect(lambda v: None)
    emitter.payload.connect(lambda v: None)
    before = sys.getrefcount(True), sys.getrefcount(False)
    for i in range(500):
        emitter.number.emit(i)
        emitter.flag.emit(i % 2 == 0)
        emitter.payload.emit(False)
    assert (sys.getrefcount(True), sys.getrefcount(False)) == before
    assert len(received) == 500
