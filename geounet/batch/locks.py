"""Per-scene locks and crash recovery as the batch uses them (the primitives live in the io layer).

A scene's lock is ``OUTDIR/.<stem>.lock`` (:class:`~geounet.io.locks.SceneLock`, ``flock``,
non-blocking, the holder's pid written inside). With it held,
:func:`~geounet.io.folders.recover_interrupted` removes the hidden
``.<stem>.partial-<token>`` / ``.<stem>.old-<token>`` folders of processes that are gone,
putting the previous outputs back first if a run died between moving them aside and moving
the new ones in. A folder's process is gone when its liveness lock
``OUTDIR/.geounet-<token>.alive`` is missing or can be taken: no process ids are compared,
so a reused pid (PID 1 in every container) is never taken for a live run. See
:mod:`geounet.io.locks` and :mod:`geounet.io.folders`; ``geounet predict`` uses them too.
"""

from __future__ import annotations

from geounet.io.folders import recover_interrupted, stale_folders
from geounet.io.locks import SceneLock, locked_reason, process_token, scene_lock

__all__ = ["SceneLock", "locked_reason", "process_token", "recover_interrupted", "scene_lock", "stale_folders"]
