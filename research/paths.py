"""One path abstraction for everything a run reads or writes: local paths and `gs://` URIs.

Files go through `etils.epath` (the `os` backend for local paths, fsspec/gcsfs for
`gs://`), so a `--workdir=gs://BUCKET/run` sends config, metrics, results, reports,
tokenizers and (through Orbax) checkpoints straight to the bucket. What epath alone does
not give, this module adds:
- `absolute`: a local path made absolute (Orbax needs it); a URI is left alone.
- atomic writes: locally a temporary file and a rename (a crash never leaves half a file);
  an object store's upload is already all-or-nothing, and its "rename" is a copy.
- `append_text`: object stores cannot append; the object is rewritten whole.
Paths stay strings everywhere else (`os.path.join` joins URIs correctly).
"""
from __future__ import annotations

import glob as glob_lib
import os
import re
import shutil

from etils import epath

_URI = re.compile(r'^[A-Za-z][A-Za-z0-9+.-]*://')


def is_remote(path: str) -> bool:
  """True for a URI such as `gs://bucket/run` (anything with a scheme)."""
  return bool(_URI.match(os.fspath(path)))


def absolute(path: str) -> str:
  """A local path absolute, with `~` expanded (relative to the current directory); a URI
  unchanged."""
  path = os.fspath(path)
  if is_remote(path):
    return path.rstrip('/')
  return os.path.abspath(os.path.expanduser(path))


def path(p: str) -> epath.Path:
  return epath.Path(p)


def exists(p: str) -> bool:
  return epath.Path(p).exists()


def isdir(p: str) -> bool:
  return epath.Path(p).is_dir()


def isfile(p: str) -> bool:
  return epath.Path(p).is_file()


def makedirs(p: str) -> None:
  """Creates `p` and its parents (on an object store, directories are implicit)."""
  if not is_remote(p):
    os.makedirs(p, exist_ok=True)


def listdir(p: str) -> list[str]:
  """Names in directory `p` ([] when it does not exist)."""
  d = epath.Path(p)
  return sorted(child.name for child in d.iterdir()) if d.is_dir() else []


def glob(pattern: str) -> list[str]:
  """Paths matching a shell pattern, sorted; a URI pattern (`gs://B/runs/mnist1d_*`) is
  matched in its bucket."""
  if not is_remote(pattern):
    return sorted(glob_lib.glob(pattern))
  first_wildcard = min((i for i, c in enumerate(pattern) if c in '*?['), default=len(pattern))
  base = pattern[:pattern.rfind('/', 0, first_wildcard)]
  rest = pattern[len(base) + 1:]
  if not rest:
    return [pattern] if exists(pattern) else []
  return sorted(os.fspath(p) for p in epath.Path(base).glob(rest))


def read_text(p: str) -> str:
  return epath.Path(p).read_text()


def read_bytes(p: str) -> bytes:
  return epath.Path(p).read_bytes()


def write_bytes_atomic(p: str, data: bytes) -> None:
  """Writes `p` so that a reader sees the old file or the whole new one, never half."""
  if is_remote(p):
    epath.Path(p).write_bytes(data)  # one upload: the object appears complete or not at all
    return
  tmp = f'{p}.tmp{os.getpid()}'
  with open(tmp, 'wb') as f:
    f.write(data)
  os.replace(tmp, p)


def write_text_atomic(p: str, text: str) -> None:
  write_bytes_atomic(p, text.encode('utf-8'))


def append_text(p: str, text: str) -> None:
  """Appends `text` to `p` (created if missing). In a bucket that is a download and an
  upload of the whole object: fine for a metrics log written every few steps."""
  if not is_remote(p):
    with open(p, 'a') as f:
      f.write(text)
    return
  target = epath.Path(p)
  old = target.read_text() if target.exists() else ''
  target.write_text(old + text)


def remove(p: str) -> None:
  epath.Path(p).unlink()


def move(src: str, dst: str) -> None:
  """Moves a file or directory tree. An object store has no rename and no directories:
  every object is copied, then the originals deleted (a crash in between leaves both)."""
  if not (is_remote(src) or is_remote(dst)):
    shutil.move(src, dst)
    return
  source = epath.Path(src)
  if source.is_file():
    epath.Path(dst).write_bytes(source.read_bytes())
    source.unlink()
    return
  for f in files_under(src):
    epath.Path(os.path.join(dst, os.path.relpath(f, src))).write_bytes(epath.Path(f).read_bytes())
  source.rmtree()


def files_under(root: str) -> list[str]:
  """Every file below `root`, recursively, sorted (in a bucket: one listing, not one per
  level; epath refuses `**` globs there)."""
  if not is_remote(root):
    return sorted(os.path.join(d, f) for d, _, files in os.walk(root) for f in files)
  import fsspec  # pylint: disable=import-outside-toplevel
  fs, bare = fsspec.core.url_to_fs(root)
  fs.invalidate_cache(bare)  # another handle (epath's) may have written since
  scheme = root.split('://', 1)[0]
  return sorted(f'{scheme}://{p}' for p in fs.find(bare))


def upload_tree(local_dir: str, dst: str) -> int:
  """Copies every file under `local_dir` to the same relative path under `dst`; returns
  the number copied. For writers that only write local files (TensorBoard, profiler)."""
  count = 0
  for root, _, files in os.walk(local_dir):
    for name in files:
      relative = os.path.relpath(os.path.join(root, name), local_dir)
      with open(os.path.join(root, name), 'rb') as f:
        epath.Path(os.path.join(dst, relative)).write_bytes(f.read())
      count += 1
  return count
