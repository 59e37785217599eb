"""Unattended batch runs (geounet run): pipeline configs, per-scene locks, crash recovery, reruns."""
