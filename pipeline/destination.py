"""What a run does to its destination: takes it exclusively, checks it has room, and after a failure
or an interrupt leaves one checkpoint's data there and nothing else.

- `claim`: the writer lock (transforms/writer_lock.py) before anything is written. A second run
  stops at once with one line naming the holder. A dead holder's lock is taken over only with
  --resume or --overwrite: on this host a holder is known dead (its pid is gone); another host's (or
  a Dataflow job's) cannot be checked from here, so the flag is the user's word that it is gone.
  Released on success and on any failure; a job that does not wait (Dataflow) releases it in its
  last step. Once a run holds it, the job sweeps the stale temporary files of ours (pipeline/outputs.py).
- `check_space`: before the first byte, the plan's bytes against each local file system's free
  space (gs:// and hf:// have none to check).
- `guarded`: a failure or an interrupt of the pipeline. The run's temporary files are removed; an
  interrupt keeps what was stored (resumable) and says how much; a full disk removes everything the
  run wrote, or with --resume keeps it, and the one line says which.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from typing import Callable, Iterator, Protocol, Sequence

from pipeline import interrupts
from pipeline.cli import error_line
from pipeline.runner import human_bytes
from transforms import disk_full, files, hub_io, storage, writer_lock
from transforms.errors import ConversionError

# Room kept beyond the plan's bytes for what it does not count: metadata files, OCDBT's B-tree nodes,
# zarr's shard indices (16 bytes a chunk), zstd's frame headers on incompressible data.
MARGIN_FRACTION = 0.01
MARGIN_BYTES = 16 * 2**20


@dataclasses.dataclass
class Claim:
  """This run's hold on a destination (None for hf://, where the Hub keeps every commit instead)."""
  destination: str
  held: writer_lock.Held | None
  created: bool  # the destination directory did not exist before this run
  handed_over: bool = False

  def hand_over(self) -> None:
    """The submitted job releases the lock in its last step; the driver must not."""
    self.handed_over = True


def _busy(destination: str, holder: writer_lock.Holder | None, alive: bool | None, flag: str) -> ConversionError:
  who = holder.describe() if holder else f"an unreadable lock file {writer_lock.lock_path(destination)}"
  if alive:
    return ConversionError(f"{destination} is being written by another conversion ({who}); wait for it to finish, "
                           f"or use another {flag}")
  if alive is False:
    return ConversionError(f"{destination} is held by a conversion that died ({who}, no longer running); pass "
                           "--resume to finish its work or --overwrite to start over")
  return ConversionError(f"{destination} is being written by another conversion ({who}), which ckptflow cannot "
                         "check from here; if that run is gone (killed, a lost VM, a failed Dataflow job), pass "
                         "--resume to finish its work or --overwrite to start over")


def acquire(destination: str, me: writer_lock.Holder, take_over: bool, flag: str) -> Claim:
  """Takes the destination's lock for `me`, or raises the one line that says who holds it."""
  if hub_io.is_hub(destination):
    return Claim(destination, None, False)
  created = not files.exists(destination)
  path = writer_lock.lock_path(destination)
  for _ in range(3):  # a lock released between our create and our read: try again
    try:
      held = writer_lock.create(path, me)
    except FileNotFoundError:  # another run removed the directory it had created, or swept our temporary file
      continue
    except OSError as e:
      reason = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
      raise ConversionError(f"{destination}: not writable ({reason})") from None
    if held is not None:
      return Claim(destination, held, created)
    found = writer_lock.read(path)
    if found is None:
      continue
    holder, generation = found
    alive = holder.alive() if holder else None
    if alive or not take_over:
      raise _busy(destination, holder, alive, flag)
    held = writer_lock.replace(path, me, holder, generation)
    if held is None:
      continue
    why = "no longer running" if alive is False else "not checkable from here; --resume/--overwrite says it is gone"
    print(f"note: {destination}: took over the lock of {holder.describe() if holder else 'an unreadable lock'} "
          f"({why})", file=sys.stderr)
    return Claim(destination, held, created)
  raise ConversionError(f"{destination}: the lock {path} keeps changing hands; another conversion is starting there")


def release(claim: Claim) -> None:
  if claim.handed_over:
    return
  writer_lock.release(claim.held)
  if claim.created and storage.is_local(claim.destination):
    with contextlib.suppress(OSError):
      os.rmdir(claim.destination)  # only if the run left it empty


@contextlib.contextmanager
def claim(destination: str, command: str, options: dict, take_over: bool,
          flag: str = "base_output_directory", remote: str | None = None) -> Iterator[Claim]:
  """Holds the destination for the block. `remote`: the runner (DataflowRunner) of a job that runs
  elsewhere and releases the lock itself; `flag` names the destination option in messages."""
  me = writer_lock.Holder.this_process(command, options, remote)
  try:
    held = acquire(destination, me, take_over, flag)
  except KeyboardInterrupt:  # between creating the lock and returning it: it must not outlive us
    if not hub_io.is_hub(destination):
      writer_lock.release(writer_lock.Held(writer_lock.lock_path(destination), me.run))
    raise
  try:
    yield held
  finally:
    release(held)


def lock_state(destination: str) -> tuple[str, bool | None] | None:
  """(who holds the destination, whether it is alive) when it is locked; None otherwise."""
  if hub_io.is_hub(destination):
    return None
  found = writer_lock.read(writer_lock.lock_path(destination))
  if found is None:
    return None
  holder = found[0]
  return (holder.describe() if holder else "an unreadable lock"), (holder.alive() if holder else None)


@dataclasses.dataclass(frozen=True)
class Need:
  """Bytes a run writes into one local directory, and what to tell the user if they do not fit."""
  directory: str
  nbytes: int
  hint: str
  reclaimed: int = 0  # bytes the run deletes there first (--overwrite)


def with_margin(nbytes: int) -> int:
  return int(nbytes * (1 + MARGIN_FRACTION)) + MARGIN_BYTES


def check_space(needs: Sequence[Need], free: Callable[[str], int] = disk_full.free_bytes) -> None:
  """One line if a local file system cannot hold what the run writes there (needs on one file system add up)."""
  by_device: dict[int, list[Need]] = {}
  for need in needs:
    if not storage.is_local(need.directory) or need.nbytes <= 0:
      continue
    by_device.setdefault(os.stat(disk_full.existing_parent(need.directory)).st_dev, []).append(need)
  for group in by_device.values():
    first = group[0]
    available = free(first.directory) + sum(n.reclaimed for n in group)
    total = sum(n.nbytes for n in group)
    if total > available:
      raise ConversionError(f"{first.directory} has {human_bytes(available)} free; this conversion writes "
                            f"{human_bytes(total)} ({first.hint})")


def local_bytes(path: str) -> int:
  """Bytes of the files under a local path (what --overwrite frees); 0 on gs://."""
  if files.is_gcs(path) or not os.path.exists(path):
    return 0
  if os.path.isfile(path):
    return os.path.getsize(path)
  return sum(os.path.getsize(os.path.join(root, n)) for root, _, names in os.walk(path) for n in names)


class Output(Protocol):
  """A direction's output, as failure handling sees it."""
  where: str  # the directory named in messages
  unit: str  # "slices" or "shards"
  fresh: bool  # nothing of it existed before this run (or --overwrite removed it)

  def stored(self) -> tuple[int, int]:
    """(finished units, planned units)."""

  def sweep(self) -> None:
    """Removes our temporary files."""

  def remove_written(self) -> None:
    """Removes everything this run wrote."""


@contextlib.contextmanager
def guarded(output: Output, resume: bool) -> Iterator[None]:
  """Runs the pipeline; after a failure leaves the output as the module docstring says."""
  try:
    yield
  except KeyboardInterrupt as e:
    interrupted = interrupts.as_interrupted(e)
    output.sweep()
    done, total = output.stored()
    if done == 0 and output.fresh:
      output.remove_written()
      interrupted.message = f"nothing was stored in {output.where} yet"
    else:
      interrupted.message = f"{done} of {total} {output.unit} stored in {output.where}; rerun with --resume"
    raise interrupted from None
  except Exception as e:  # pylint: disable=broad-except
    message = error_line(e)
    output.sweep()
    if not message or f": {disk_full.OUT_OF_SPACE} writing " not in message:
      raise
    if resume or not output.fresh:
      done, total = output.stored()
      raise ConversionError(f"{message}; kept the {done} of {total} {output.unit} stored so far: free space, then "
                            "rerun with --resume") from e
    output.remove_written()
    raise ConversionError(f"{message}; removed everything this run wrote: free space, then run it again") from e
