"""The teacher feature cache: Spatial Forcing targets computed once per dataset, read by training.

Why: the teacher (VGGT's aggregator, ~10 TFLOP for three 518-px views) costs 65-90 % of a
π0 training step, yet its targets are a fixed function of the recorded, un-augmented frames.
`build_cache` runs it once over a dataset (batched, on the GPU, resumable) and stores the
targets already resampled to the VLA's 16×16 patch grid; training reads them with memmap
slicing (`TeacherCache.get`). The twin's geometry teacher (teacher/geometry.py) is cached the
same way; it reads the depth and poses recorded with the dataset instead of the videos.

The modules, each on one idea:

    errors       CacheError and its kinds (not found, incomplete, stale)
    store        the on-disk form: a cache directory's files, `Layout`, durable row writes
    codec        the stored tokens: bf16, or fp8 e4m3 with a scale per token
    fingerprint  hashes of a dataset's pixels, of a checkpoint file, of weights in memory
    key          `Preprocessing` and `CacheKey`: what a cache was computed from
    reader       `TeacherCache` (a built cache) and finding the one for a key
    frames       the teacher's inputs: a dataset's frames, decoded in batches
    locks        the build's file locks
    shards       one cache built by several processes
    build        `build_cache`: create a cache and compute its missing rows
    entry        `cache_teacher` / `open_cache`: from the CLI's and training's settings to a cache
"""

from __future__ import annotations

from sf_policy.teacher.cache.entry import cache_teacher, open_cache
from sf_policy.teacher.cache.reader import TeacherCache

__all__ = ["TeacherCache", "cache_teacher", "open_cache"]
