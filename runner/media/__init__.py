"""ffmpeg: the argv lists (one module), probing, verifying and assembling the film."""

SEGMENT_VERSION = 2  # 2: clips that match the film are stream-copied; joins retime the dts
"""Bumped whenever assembly makes other bytes from the same inputs (a segment or the join):
cached segments are made again, and the edit's key changes with it (it is part of
backends.registry.media_version), so one edit key never names two different films.
Here, not in assemble.py, so planning reads it without importing ffmpeg code."""
