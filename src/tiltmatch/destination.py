"""Where a command writes: one folder, checked before anything is written, and replaced only
once the new contents are safe.

Every writer (``train``, ``eval``, ``bench``, ``convert-llada``, ``pretrain``, ``demo``, the
Python API's trainer and ``save_model``) goes through one :class:`Destination`:

1. :meth:`Destination.check` (nothing written): a destination that is a file, a symbolic
   link, a non-empty folder the writer did not create, a folder another tiltmatch process
   is writing, or one of the writer's own sources (or a folder holding one) is refused with
   one line; a non-empty folder or a link is accepted only with ``overwrite``, a source
   never. The caller validates everything else (config, sizes, imports) before going on.
2. :meth:`Destination.claim`: the old folder (with ``overwrite``) is renamed aside to a
   hidden sibling on the same filesystem (``.NAME.old-PID``), never deleted yet; a fresh
   folder holding a ``.tiltmatch-pending`` marker (locked while this process runs) takes
   its place. A *staged* writer (a model, an evaluation) writes into a hidden sibling
   (``.NAME.tmp-PID``) instead and touches the destination only at the commit.
3. :meth:`Destination.commit`, at the first checkpoint or result: the marker goes, the old
   folder is deleted (staged: renamed into place first).
4. :meth:`Destination.abandon`, on any failure before the commit: what the writer wrote
   goes and the old folder is renamed back, so a failed run leaves the destination as it
   found it.

A folder holding a pending marker that no live process holds was made by a writer that
stopped before its first checkpoint or result (killed, say): it holds nothing worth
keeping, and the next writer takes it without ``overwrite``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

#: marks a folder whose writer has not reached its first checkpoint or result
PENDING = ".tiltmatch-pending"
#: entries listed by name in a refusal (the rest counted)
_LISTED = 4


class DestinationError(FileExistsError):
    """A destination a writer must not touch; the message names it and what to do."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _suffix_pid(path: Path) -> int | None:
    """The pid a ``.NAME.old-PID`` / ``.NAME.tmp-PID`` sibling was made by."""
    tail = path.name.rpartition("-")[2]
    return int(tail) if tail.isdigit() else None


def _lock(handle: IO[str]) -> bool:
    """Take an exclusive lock on an open marker; False when another process holds it."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - no flock (Windows): the pid check stands in
        return True
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def pending_holder(folder: Path) -> int | None:
    """The pid of the live process writing ``folder`` (its pending marker locked), else None.

    A marker nobody holds (its writer was killed, or failed) is stale: None.
    """
    marker = folder / PENDING
    try:
        handle = marker.open("r", encoding="utf-8")
    except OSError:
        return None
    with handle:
        if _lock(handle):
            return None
        text = handle.read().strip()
    pid = int(text) if text.isdigit() else -1
    return pid if pid == -1 or _pid_alive(pid) else None


def _listing(folder: Path) -> str:
    names = sorted(p.name for p in folder.iterdir())
    shown = ", ".join(names[:_LISTED])
    return shown + (f" and {len(names) - _LISTED} more" if len(names) > _LISTED else "")


def _same_or_inside(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


class Destination:
    """The folder a writer fills (see the module docstring for the protocol).

    ``what``: what is written, for messages ("run", "model", "evaluation").
    ``overwrite``: a non-empty folder (or a link) may be replaced; its old contents are
    kept aside until :meth:`commit`. ``sources``: what the writer reads; the destination
    is never one of them, nor a folder holding one. ``staged``: write everything into a
    hidden sibling, renamed into place at the commit (a model, an evaluation); otherwise
    the writer fills the destination in place (a run, which its checkpoints make
    resumable). ``reuse_marker``: a file name that marks a folder this kind of writer made
    and may continue (the benchmark's cache of runs). ``hint``: what a refusal suggests.
    ``writer``: False on the processes of a multi-process launch that do not write (every
    method then does nothing).
    """

    def __init__(
        self,
        path: str | Path,
        what: str = "output",
        overwrite: bool = False,
        sources: Sequence[str | Path] = (),
        staged: bool = False,
        reuse_marker: str | None = None,
        hint: str | None = None,
        writer: bool = True,
    ) -> None:
        self.path = Path(path).expanduser()
        self.what, self.overwrite, self.staged = what, overwrite, staged
        self.sources = [Path(s).expanduser() for s in sources]
        self.reuse_marker, self.writer = reuse_marker, writer
        self.hint = hint or (
            "pass --overwrite to replace it (the old folder is kept aside until the new "
            f"{what} is written) or choose another destination"
        )
        self.claimed = self.committed = False
        self._aside: Path | None = None
        self._tmp: Path | None = None
        #: how the folder was taken in place: "made" (created), "given" (an empty folder),
        #: "reused" (the writer's own, continued); None when staged or not claimed
        self._taken: str | None = None
        self._marker: IO[str] | None = None

    # -- checks (nothing written) -----------------------------------------------------------

    @property
    def reusable(self) -> bool:
        """Whether the folder was made by this kind of writer and may be continued."""
        return self.reuse_marker is not None and (self.path / self.reuse_marker).is_file()

    def check(self) -> None:
        """Refuse a destination this writer must not touch (see the module docstring)."""
        if not self.writer:
            return
        self._check_sources()
        self._check_parents()
        self._check_leftovers()
        path = self.path
        if path.is_symlink():
            if not self.overwrite:
                raise DestinationError(
                    f"{path} is a symbolic link (to {os.readlink(path)}); {self.hint}"
                )
            return
        if not path.exists():
            return
        if not path.is_dir():
            raise DestinationError(f"{path} exists and is not a folder")
        holder = pending_holder(path)
        if holder is not None:
            who = f" (pid {holder})" if holder > 0 else ""
            raise DestinationError(
                f"{path} is being written by another tiltmatch process{who}; wait for it or "
                "choose another destination"
            )
        if (path / PENDING).exists() or self.reusable or self.overwrite:
            return  # a stopped writer's folder, this writer's own, or replaced on purpose
        if any(path.iterdir()):
            raise DestinationError(f"{path} is not empty (holds {_listing(path)}); {self.hint}")

    def _check_sources(self) -> None:
        target = self.path.resolve()
        for source in self.sources:
            if not source.exists():
                continue
            for a, b in ((source.resolve(), target), (source.absolute(), self.path.absolute())):
                if _same_or_inside(a, b):
                    relation = "is" if a == b else "holds"
                    raise DestinationError(
                        f"{self.path} {relation} the source {source}: a command never writes "
                        "over what it reads; choose another destination"
                    )

    def _check_parents(self) -> None:
        """A file where a parent folder should be: the OS's own "Not a directory", named."""
        for parent in self.path.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(parent))
                return

    def _check_leftovers(self) -> None:
        parent, name = self.path.parent, self.path.name
        if not parent.is_dir():
            return
        for aside in sorted(parent.glob(f".{name}.old-*")):
            pid = _suffix_pid(aside)
            if pid is not None and pid != os.getpid() and not _pid_alive(pid):
                raise DestinationError(
                    f"{aside} holds what --overwrite moved aside from {self.path} before that "
                    f"command was stopped; put it back (mv {aside} {self.path}) or delete it"
                )

    # -- the protocol -------------------------------------------------------------------------

    @property
    def folder(self) -> Path:
        """Where the writer writes: the destination, or its staging sibling once claimed."""
        return self._tmp if self._tmp is not None else self.path

    def claim(self) -> Path:
        """Take the destination (after every other check passed); returns :attr:`folder`."""
        if not self.writer or self.claimed:
            return self.folder
        self.check()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.staged:
            self._remove_stale(".tmp-")
            self._tmp = self.path.parent / f".{self.path.name}.tmp-{os.getpid()}"
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp.mkdir()
        elif self.reusable and not self.overwrite:
            self._taken = "reused"  # the writer's own folder, continued as it is
        else:
            self._take_in_place()
        self.claimed = True
        return self.folder

    def _take_in_place(self) -> None:
        path = self.path
        if path.is_symlink() or (path.exists() and any(path.iterdir())):
            if (path / PENDING).exists() and not path.is_symlink():
                shutil.rmtree(path)  # a stopped writer's folder: nothing in it to keep
            else:
                self._aside = path.parent / f".{path.name}.old-{os.getpid()}"
                os.replace(path, self._aside)
        try:
            path.mkdir()
            self._taken = "made"
        except FileExistsError:  # an empty folder: the writer fills it in place
            if any(path.iterdir()):  # someone else got there between the check and now
                self._restore_aside()
                self.check()
                raise
            self._taken = "given"
        self._write_marker()
        if self.reuse_marker is not None:
            (path / self.reuse_marker).write_text("")

    def _write_marker(self) -> None:
        try:
            handle = (self.path / PENDING).open("x", encoding="utf-8")
        except FileExistsError:
            self.abandon()
            raise DestinationError(
                f"{self.path} is being written by another tiltmatch process; wait for it or "
                "choose another destination"
            ) from None
        _lock(handle)
        handle.write(str(os.getpid()))
        handle.flush()
        self._marker = handle

    def commit(self) -> None:
        """The new contents are safe (first checkpoint or result): drop the old folder."""
        if not self.writer or not self.claimed or self.committed:
            return
        if self._tmp is not None:
            self.check()  # nobody wrote the destination meanwhile
            if self.path.is_symlink() or self.path.exists():
                self._aside = self.path.parent / f".{self.path.name}.old-{os.getpid()}"
                os.replace(self.path, self._aside)
            os.replace(self._tmp, self.path)
            self._tmp = None
        if self._marker is not None:
            self._marker.close()
            self._marker = None
            (self.path / PENDING).unlink(missing_ok=True)
        self.committed = True
        if self._aside is not None:
            _remove(self._aside)
            self._aside = None

    def abandon(self) -> None:
        """Undo the claim: remove what was written, put the old folder back."""
        if not self.writer or self.committed:
            return
        if self._marker is not None:
            self._marker.close()
            self._marker = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        elif self._taken == "made":
            shutil.rmtree(self.path, ignore_errors=True)
        elif self._taken == "given" and self.path.is_dir():  # the empty folder, empty again
            for child in self.path.iterdir():
                _remove(child)
        self._restore_aside()
        self._taken = None
        self.claimed = False

    def _restore_aside(self) -> None:
        if self._aside is None:
            return
        if self.path.is_dir() and not self.path.is_symlink():
            shutil.rmtree(self.path, ignore_errors=True)
        os.replace(self._aside, self.path)
        self._aside = None

    def _remove_stale(self, kind: str) -> None:
        for stray in self.path.parent.glob(f".{self.path.name}{kind}*"):
            pid = _suffix_pid(stray)
            if pid is not None and pid != os.getpid() and not _pid_alive(pid):
                _remove(stray)

    def __enter__(self) -> Path:
        return self.claim()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if kind is None:
            self.commit()
        else:
            self.abandon()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
