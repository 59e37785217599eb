"""Damage grades per building from pre- and post-event scenes, on the engine's blocks and executors."""
