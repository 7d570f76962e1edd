"""Use the second core for large runs: one forked helper takes half of the work.

Parsing, validating and rendering specs holds the GIL, so only a second process
helps. Forking is safe only while this process has a single thread (no lock can be
held by a thread that does not exist in the child), so with other threads running,
on one core, or for small inputs, everything runs here. Results come back through a
pipe and must pickle; if the helper dies, its share is done here.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Callable, Sequence
from itertools import accumulate
from multiprocessing.connection import Connection
from typing import TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


def can_fork_helper(work: int, min_work: int) -> bool:
    """Whether ``work`` units justify a helper, and forking one is safe here."""
    return (
        work >= min_work
        and (os.cpu_count() or 1) > 1
        and threading.active_count() == 1
        and "fork" in multiprocessing.get_all_start_methods()
        # daemonic processes (some worker pools) may not start children
        and not multiprocessing.current_process().daemon
    )


def split_point(weights: Sequence[int]) -> int:
    """The index that splits ``weights`` into two halves of about equal sum."""
    if not weights:
        return 0
    half = sum(weights) / 2
    totals = list(accumulate(weights))
    return min(
        range(len(totals) + 1), key=lambda i: abs((totals[i - 1] if i else 0) - half)
    )


def map_split(
    func: Callable[[Item], Result],
    items: Sequence[Item],
    *,
    min_work: int,
    weights: Sequence[int] | None = None,
) -> list[Result]:
    """``[func(i) for i in items]``, the second half in a forked helper when it pays."""
    weights = weights if weights is not None else [1] * len(items)
    if not can_fork_helper(sum(weights), min_work):
        return [func(item) for item in items]
    cut = split_point(weights)
    mine, theirs = items[:cut], items[cut:]
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    helper = context.Process(target=_serve, args=(func, theirs, sender), daemon=True)
    try:
        helper.start()
    except (AssertionError, OSError):  # cannot fork here after all: no helper
        receiver.close()
        sender.close()
        return [func(item) for item in items]
    sender.close()
    first = [func(item) for item in mine]
    try:
        second: list[Result] = receiver.recv()
    except (EOFError, OSError):  # the helper died: do its share here
        second = [func(item) for item in theirs]
    finally:
        receiver.close()
        helper.join()
    return first + second


def _serve(
    func: Callable[[Item], Result], items: Sequence[Item], sender: Connection
) -> None:
    try:
        sender.send([func(item) for item in items])
    finally:
        sender.close()
