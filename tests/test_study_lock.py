"""Two studies into one folder never make the same cell twice: the second waits on the cell's lock, then reuses."""

from __future__ import annotations

import threading
import time

from robustprune.study.runner import cell_lock


def test_cell_lock_makes_the_second_runner_wait(tmp_path):
    events: list[str] = []
    inside = threading.Event()

    def first():
        with cell_lock(tmp_path, "cell"):
            events.append("first in")
            inside.set()
            time.sleep(0.3)
            events.append("first out")

    def second():
        inside.wait()
        with cell_lock(tmp_path, "cell"):
            events.append("second in")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert events == ["first in", "first out", "second in"]
    # other cells do not wait
    with cell_lock(tmp_path, "cell"), cell_lock(tmp_path, "other"):
        pass
