r"""Files that are written once and read many times: processed datasets and cached graphs.

* **Atomic, collision-free writes.** :func:`write_checked` writes every file to its own
  temporary file (:func:`tempfile.mkstemp`, in the target folder) and renames it into place
  with :func:`os.replace`, so a crash never leaves a truncated file and several processes
  (e.g. DDP ranks processing a dataset for the first time) never share a temporary name.
* **Checksums.** Beside each file goes a small JSON record holding its SHA-1 (and whatever
  the caller adds, e.g. a fingerprint of the raw inputs); :func:`checksum_problem` compares
  the two, which catches truncated, emptied, replaced or bit-flipped files
  (:func:`torch.load` reads most flipped bytes without complaint).
* **Fingerprints** of input files (:func:`fingerprint_files`): name, size, modification time
  and SHA-1 of each; :func:`fingerprint_changes` compares names, sizes and contents only, so
  a file that was copied or touched without changing its content is not "changed".

Hashing streams the file in 1 MiB blocks (about 1 GB/s; MMRec's 230 MB Baby image
features take a quarter of a second).
"""
import hashlib
import json
import os
import os.path as osp
import tempfile
from typing import Any, Callable, Dict, Iterable, Optional

_BLOCK = 1 << 20


def _default_mode() -> int:
    # mkstemp creates files readable by their owner only; give the final file the mode a
    # plain open() would, so that a shared dataset folder stays readable by the team.
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


_MODE = _default_mode()


def file_sha1(path: str) -> str:
    r"""The SHA-1 hex digest of the file :obj:`path`, read in blocks."""
    h = hashlib.sha1()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(_BLOCK), b''):
            h.update(block)
    return h.hexdigest()


def fingerprint_files(paths: Iterable[str]) -> Dict[str, Dict[str, Any]]:
    r"""Map each file's base name to its :obj:`size`, :obj:`mtime_ns` and :obj:`sha1`."""
    out = {}
    for path in paths:
        st = os.stat(path)
        out[osp.basename(path)] = dict(size=st.st_size, mtime_ns=st.st_mtime_ns,
                                       sha1=file_sha1(path))
    return out


def fingerprint_changes(old: Dict[str, Dict[str, Any]],
                        new: Dict[str, Dict[str, Any]]) -> Optional[str]:
    r"""Say which files were added, removed or changed (size or content; the modification
    time alone does not count) between two :func:`fingerprint_files` results, or return
    :obj:`None` if none was."""
    def key(record: Dict[str, Any]) -> tuple:
        return record.get('size'), record.get('sha1')

    changes = ([f"'{n}' was removed" for n in sorted(old) if n not in new] +
               [f"'{n}' was added" for n in sorted(new) if n not in old] +
               [f"'{n}' changed" for n in sorted(new)
                if n in old and key(old[n]) != key(new[n])])
    return ', '.join(changes) or None


def temp_beside(path: str) -> str:
    r"""A new, empty temporary file of this process's own, in :obj:`path`'s folder (so
    that :func:`os.replace` onto :obj:`path` is atomic)."""
    fd, tmp = tempfile.mkstemp(dir=osp.dirname(path) or '.',
                               prefix=f'.{osp.basename(path)}.', suffix='.tmp')
    os.close(fd)
    os.chmod(tmp, _MODE)
    return tmp


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    r"""Write :obj:`path` with :obj:`write(tmp_path)` into a temporary file of its own beside
    it (:func:`temp_beside`), flush it to disk and rename it onto :obj:`path`: a kill at any
    moment leaves the old file or the new one, never half of one, and concurrent writers
    never share a temporary name. Creates the folder if needed."""
    os.makedirs(osp.dirname(path) or '.', exist_ok=True)
    tmp = temp_beside(path)
    try:
        write(tmp)
        with open(tmp, 'rb') as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)


def write_checked(path: str, write: Callable[[str], None], record_path: str,
                  record: Optional[Dict[str, Any]] = None) -> None:
    r"""Write :obj:`path` with :obj:`write(tmp_path)` and, beside it, the JSON
    :obj:`record_path` holding :obj:`record` plus the file's :obj:`sha1`.

    Both go through their own temporary file and :func:`os.replace`, the record first: a
    reader sees no file, the old pair, a new pair, or (for an instant, or after a crash
    between the two renames) a record that does not match the file, which
    :func:`checksum_problem` reports; never a torn file.
    """
    tmps = []
    try:
        tmps.append(temp_beside(path))
        write(tmps[0])
        record = dict(record or {}, sha1=file_sha1(tmps[0]))
        tmps.append(temp_beside(record_path))
        with open(tmps[1], 'w', encoding='utf-8') as f:
            json.dump(record, f, indent=1, sort_keys=True)
        os.replace(tmps[1], record_path)
        os.replace(tmps[0], path)
    finally:
        for tmp in tmps:
            if osp.exists(tmp):
                os.remove(tmp)


def read_record(record_path: str) -> Optional[Dict[str, Any]]:
    r"""The JSON record written by :func:`write_checked`, or :obj:`None` if it is missing
    or unreadable."""
    try:
        with open(record_path, encoding='utf-8') as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def checksum_problem(path: str, record: Optional[Dict[str, Any]],
                     record_path: str) -> Optional[str]:
    r"""What is wrong with :obj:`path` given its :obj:`record` (read from
    :obj:`record_path`), or :obj:`None` if its SHA-1 matches."""
    if record is None:
        return (f"'{record_path}', which records its checksum, is missing or unreadable "
                f"(written by an older version, or interrupted)")
    try:
        sha1 = file_sha1(path)
    except OSError as e:
        return f"'{path}' cannot be read ({e})"
    if sha1 != record.get('sha1'):
        return (f"'{path}' is corrupted (truncated, replaced or modified): its checksum "
                f"differs from the one recorded in '{record_path}'")
    return None
