"""The executor's task recorder: the C one and its Python twin do the same."""
import os
import threading
import time

import pytest

from zray.broker import protocol as p
from zray.worker import task_recorder
from zray.worker.task_recorder import PyRecorder

IMPLEMENTATIONS = [PyRecorder]
if task_recorder.Recorder is not PyRecorder:
    IMPLEMENTATIONS.append(task_recorder.Recorder)


def test_the_c_recorder_is_built_in_ci():
    """The README's install builds the C recorder (where a compiler is, as
    in CI); without it zray runs, slower."""
    if task_recorder.Recorder is PyRecorder:
        if os.environ.get("CI") == "true":
            pytest.fail("zray/worker/_task_recorder.c was not built: "
                        "pip install -e . needs a C compiler and Python's headers")
        pytest.skip("the C recorder is not built here (no C compiler at install)")


@pytest.fixture(params=IMPLEMENTATIONS, ids=lambda cls: "python" if cls is PyRecorder else "c")
def recorder(request):
    return request.param(p.TS_FINISHED)


def test_a_finished_task_is_packed_as_the_record_says(recorder):
    before = time.time()
    slot = recorder.start(b"t" * 16, 3, 7)
    assert isinstance(slot, int)
    assert recorder.finish(slot) is None
    short = recorder.start(b"short", 0, -1)         # padded with zeros, as struct's 16s
    assert recorder.finish(short) is None
    assert len(recorder) == 2
    records, infos = recorder.take()
    first, second = p.TASK_EVENT_RECORD.iter_unpack(records)
    task_id, attempt, state, end, start, info = first
    assert (task_id, attempt, state, info) == (b"t" * 16, 3, p.TS_FINISHED, 7)
    assert before <= start <= end <= time.time()
    assert second[0] == b"short" + bytes(11) and second[5] == -1
    assert sorted(infos) == [-1, 7]
    assert recorder.take() == (b"", []) and len(recorder) == 0


@pytest.mark.parametrize("task_id, attempt, info", [
    (b"t" * 16, 0, {"name": "f"}),      # an info that is no index
    (b"t" * 16, 0, None),
    (b"t" * 16, 0, 2 ** 31),            # an index past int32
    (b"t" * 16, 0, True),               # a bool is no index
    (b"t" * 16, 2 ** 32, 1),            # an attempt past 32 bits
    (b"t" * 24, 0, 1),                  # a task id the record cannot hold
])
def test_what_a_record_cannot_hold_comes_back_unpacked(recorder, task_id, attempt, info):
    slot = recorder.start(task_id, attempt, info)
    unpacked = recorder.finish(slot)
    assert unpacked[:2] == (task_id, attempt) and unpacked[3] is info
    assert isinstance(unpacked[2], float)
    assert len(recorder) == 0 and recorder.running() == []
    with pytest.raises(KeyError):
        recorder.finish(slot)               # forgotten


def test_running_tasks_are_listed_and_popped_by_id(recorder):
    a = recorder.start(b"a" * 16, 0, 1)
    recorder.start(b"b" * 16, 2, {"name": "g"})
    running = sorted(recorder.running())
    assert [(t, n, info) for t, n, _, info in running] == [(b"a" * 16, 0, 1),
                                                            (b"b" * 16, 2, {"name": "g"})]
    attempt, start, info = recorder.pop(b"b" * 16)
    assert (attempt, info) == (2, {"name": "g"}) and start <= time.time()
    assert recorder.pop(b"b" * 16) is None and recorder.pop(b"nobody") is None
    assert recorder.finish(a) is None
    assert recorder.running() == [] and len(recorder) == 1
    with pytest.raises(KeyError):
        recorder.finish(a)
    with pytest.raises(KeyError):
        recorder.finish(10_000)


def test_slots_are_reused_and_many_may_run_at_once(recorder):
    slots = [recorder.start(i.to_bytes(16, "big"), 0, i) for i in range(1000)]
    assert len(set(slots)) == 1000 and len(recorder.running()) == 1000
    for slot in reversed(slots):
        assert recorder.finish(slot) is None
    records, infos = recorder.take()
    assert [r[0] for r in p.TASK_EVENT_RECORD.iter_unpack(records)] == \
        [i.to_bytes(16, "big") for i in reversed(range(1000))]
    assert sorted(infos) == list(range(1000))


def test_threads_recording_at_once_lose_nothing(recorder):
    """Threads of a threaded actor start and finish their calls at once."""
    def calls(first):
        for i in range(first, first + 2000):
            slot = recorder.start(i.to_bytes(16, "big"), 0, first)
            assert recorder.finish(slot) is None
    threads = [threading.Thread(target=calls, args=(k * 10_000,)) for k in range(8)]
    taken = []
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        taken.append(recorder.take()[0])         # as the I/O thread does, meanwhile
    for thread in threads:
        thread.join()
    taken.append(recorder.take()[0])
    ids = [r[0] for r in p.TASK_EVENT_RECORD.iter_unpack(b"".join(taken))]
    assert sorted(ids) == sorted(i.to_bytes(16, "big") for k in range(8)
                                 for i in range(k * 10_000, k * 10_000 + 2000))
    assert recorder.running() == []


def test_bad_arguments_are_refused(recorder):
    with pytest.raises(TypeError):
        recorder.start("not bytes", 0, 1)
    with pytest.raises((OverflowError, ValueError)):
        recorder.start(b"t" * 16, -1, 1)
    assert recorder.running() == []


def test_a_task_finished_while_take_makes_its_objects_is_kept(recorder):
    """take() makes Python objects; the garbage collector may run then, and
    a finalizer (or another thread) may finish a task meanwhile: its record
    is neither lost nor taken twice."""
    import gc
    ran = []

    class FinishesATask:
        def __del__(self):
            recorder.finish(recorder.start(b"late".ljust(16, b"\0"), 0, 99))
            ran.append(True)

    recorder.finish(recorder.start(b"t" * 16, 0, 1))
    threshold = gc.get_threshold()
    gc.collect()
    try:
        garbage = FinishesATask()
        garbage.cycle = garbage
        del garbage
        gc.set_threshold(gc.get_count()[0])     # the next tracked object made collects:
        first, first_infos = recorder.take()    # the list of infos take() makes
    finally:
        gc.set_threshold(*threshold)
    gc.collect()
    assert ran
    second, second_infos = recorder.take()
    ids = [r[0] for r in p.TASK_EVENT_RECORD.iter_unpack(first + second)]
    assert sorted(ids) == [b"late".ljust(16, b"\0"), b"t" * 16]
    assert sorted(first_infos + second_infos) == [1, 99]
