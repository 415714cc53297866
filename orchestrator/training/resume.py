"""Which checkpoint a restarted worker group or a relaunch resumes from: the latest intact one.

Ray Train hands back the latest reported checkpoint; it is used when its checksums verify. Otherwise (a
node died while it was being written, a truncated upload, a disk that filled) the kept checkpoints
beside it are tried newest first, with a warning; when none is intact the attempt fails rather than
silently training again from step 0.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from .checkpoint import DamagedCheckpoint, verify_checkpoint

PREFIX = "checkpoint_"  # Ray Train's checkpoint folder names: checkpoint_<timestamp>, sorting in time order


def _candidates(ckpt) -> list:
    """ckpt, then the other kept checkpoints of its run folder, newest first."""
    import pyarrow.fs as pafs
    import ray.train

    parent, _, name = ckpt.path.rstrip("/").rpartition("/")
    try:
        infos = ckpt.filesystem.get_file_info(pafs.FileSelector(parent))
    except OSError:
        infos = []
    older = sorted((i.base_name for i in infos if i.type == pafs.FileType.Directory
                    and i.base_name.startswith(PREFIX) and i.base_name < name), reverse=True)
    return [ckpt] + [ray.train.Checkpoint(f"{parent}/{n}", filesystem=ckpt.filesystem) for n in older]


def _warn(text: str) -> None:
    from ..console import warn

    warn(f"warning: {text}")


@contextlib.contextmanager
def intact_checkpoint(ckpt):
    """A local folder holding the newest intact checkpoint (None: no checkpoint, start fresh)."""
    if ckpt is None:
        yield None
        return
    damaged = []
    for c in _candidates(ckpt):
        with c.as_directory() as d:
            try:
                verify_checkpoint(Path(d))
            except DamagedCheckpoint as e:
                damaged.append(str(e))
                _warn(f"checkpoint {c.path} is damaged, trying the previous one: {e}")
                continue
            if damaged:
                _warn(f"resuming from {c.path} instead of the damaged latest checkpoint")
            yield d
            return
    raise DamagedCheckpoint(f"no intact checkpoint in {ckpt.path.rstrip('/').rpartition('/')[0]}: "
                            + "; ".join(damaged) + ". Relaunch under a new train.run_name to start over")
