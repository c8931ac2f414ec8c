"""The files a configuration is read from: the file itself and the mailbox lists it names.

:class:`ConfigSources` records them as they were read, so the daemon can notice a change
without parsing anything: :attr:`ConfigSources.stamp` was taken when the files were read,
:meth:`ConfigSources.current_stamp` is the same thing taken now (the ``mailboxes_files``
patterns expanded again, every file stat'ed again), and :meth:`ConfigSources.changed` compares
the two. A watcher keeps the sources of the last attempt, good or rejected::

    watched = config.sources
    ...every few seconds, or on SIGHUP:
    if watched.changed():                     # edited, replaced, added or removed
        try:
            config = load_config(watched.config_file)
            watched = config.sources
        except ConfigError as exc:            # retried when a file changes again, not before
            watched = exc.sources or watched

Keeping the sources of a rejected attempt matters: its patterns may differ from the running
configuration's (a pattern added before its file exists), or be unknown (the file did not
parse, so only the file itself is watched until it changes).

Paths are absolute but symbolic links are not resolved, and a stamp follows them: replacing the
target of a link (the Kubernetes ConfigMap ``..data`` swap) changes the stamp.
"""

from __future__ import annotations

import bisect
import glob
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

FileStamp = tuple[int, int, int, int] | None
"""(device, inode, size, mtime in ns) of a file, None when it cannot be stat'ed."""

SourceStamp = tuple[tuple[str, FileStamp], ...]
"""Every source file with its :data:`FileStamp`, in the order they are read."""

_GLOB_MAGIC = re.compile(r"[*?[]")


@dataclass(frozen=True, slots=True)
class MailboxFile:
    """One file matched by ``mailboxes_files[pattern_index]`` and the entries it added."""

    pattern_index: int
    shown: str
    """The file as errors name it: relative to the configuration's directory when its pattern
    is relative, else absolute."""
    path: Path
    start: int
    """The index of its first entry in ``Config.mailboxes``."""
    count: int

    @property
    def key_path(self) -> str:
        """``mailboxes_files[0]: teams.yaml``."""
        return f"mailboxes_files[{self.pattern_index}]: {self.shown}"


@dataclass(frozen=True, slots=True)
class ConfigSources:
    """The files a configuration was read from, and how to tell whether they have changed."""

    config_file: Path | None = None
    """The configuration file (absolute); None for a configuration built from a mapping."""
    base_dir: Path = field(default_factory=Path.cwd)
    """Where relative paths start: the configuration file's directory."""
    patterns: tuple[str, ...] = ()
    """The ``mailboxes_files`` patterns, as written."""
    mailbox_files: tuple[MailboxFile, ...] = ()
    """Every file the patterns matched, in the order their entries were added."""
    stamp: SourceStamp = ()
    """The stamp of every source file, taken just before it was read."""

    @property
    def files(self) -> tuple[Path, ...]:
        """The configuration file (if any) then every mailbox file: the files to watch."""
        head = () if self.config_file is None else (self.config_file,)
        return head + tuple(f.path for f in self.mailbox_files)

    def current_stamp(self) -> SourceStamp:
        """The stamp now: a changed, replaced, added or removed file makes it differ from
        :attr:`stamp`. Nothing is read or parsed (a glob and a stat per file)."""
        return stamp_sources(self.config_file, self.base_dir, self.patterns)

    def changed(self) -> bool:
        """Whether a file was changed, replaced, added or removed since :attr:`stamp`."""
        return self.current_stamp() != self.stamp

    def mailbox_key_path(self, index: int) -> str:
        """The key path of entry *index* of ``Config.mailboxes``, as errors write it:
        ``mailboxes[3]`` or ``mailboxes_files[0]: teams.yaml[12]``."""
        at = bisect.bisect_right([f.start for f in self.mailbox_files], index) - 1
        if at >= 0 and index < self.mailbox_files[at].start + self.mailbox_files[at].count:
            found = self.mailbox_files[at]
            return f"{found.key_path}[{index - found.start}]"
        return f"mailboxes[{index}]"


def file_stamp(path: Path) -> FileStamp:
    """(device, inode, size, mtime) of *path*, following links; None if it cannot be stat'ed."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def expand(pattern: str, base_dir: Path) -> list[tuple[str, Path]]:
    """The files *pattern* names, sorted, as (name shown in errors, absolute path).

    A pattern without ``*``, ``?`` or ``[`` names one path, returned if anything exists there
    (a directory too: reading it then says what is wrong). A glob (``**`` for any depth)
    matches files only, and never hidden names (``..data`` of a ConfigMap mount).
    """
    absolute = Path(pattern).is_absolute()
    if not _GLOB_MAGIC.search(pattern):
        path = Path(pattern) if absolute else base_dir / pattern
        return [(pattern, path)] if os.path.lexists(path) else []
    # glob.glob, not Path.glob: a pattern may be absolute or climb out with ../
    root = None if absolute else base_dir
    names = glob.glob(pattern, root_dir=root, recursive=True)  # noqa: PTH207
    found = ((name, Path(name) if absolute else base_dir / name) for name in sorted(names))
    return [(name, path) for name, path in found if not path.is_dir()]


def stamp_sources(
    config_file: Path | None, base_dir: Path, patterns: tuple[str, ...]
) -> SourceStamp:
    """The stamp of a configuration file and of every file its patterns match now."""
    head = () if config_file is None else ((str(config_file), file_stamp(config_file)),)
    return head + tuple(
        (str(path), file_stamp(path))
        for pattern in patterns
        for _, path in expand(pattern, base_dir)
    )
