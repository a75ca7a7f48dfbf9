"""Training run directories: which checkpoint a path means.

MaxText's training writes `<base_output_directory>/<run_name>/checkpoints/<step>/items` (Orbax's
CheckpointManager: one directory per saved step, `commit_success.txt` once it is whole; a step being
written, or one whose writer died, has none, and Orbax's temporary `<step>.orbax-checkpoint-tmp-*`
directories are not steps). A checkpoint path may be the item itself (`.../<step>/items`), its step
directory, the run's `checkpoints/` directory or the run directory: the last two mean the latest
committed step, or the one `step` names.
"""
from __future__ import annotations

from transforms import orbax_layout, orbax_reader, storage
from transforms.errors import ConversionError

CHECKPOINTS = "checkpoints"


def is_items(path: str) -> bool:
  return storage.exists(storage.join(path, orbax_layout.METADATA))


def committed(step_dir: str) -> bool:
  items = storage.join(step_dir, orbax_layout.ITEMS)
  return any(storage.exists(storage.join(d, orbax_layout.COMMIT_MARKER)) for d in (step_dir, items))


def steps_dir(path: str) -> str | None:
  """The directory holding the numbered steps, when `path` is a run or its checkpoints/ directory."""
  path = path.rstrip("/")
  for candidate in (path, storage.join(path, CHECKPOINTS)):
    names = storage.list_names(candidate)
    if any(n.isdigit() and storage.exists(storage.join(candidate, n, orbax_layout.ITEMS)) for n in names):
      return candidate
  return None


def committed_steps(run: str) -> list[int]:
  """The committed steps of a run (or its checkpoints/ directory), in order."""
  where = steps_dir(run)
  if where is None:
    return []
  return sorted(int(n) for n in storage.list_names(where) if n.isdigit() and committed(storage.join(where, n)))


def step_items(run: str, step: int) -> str:
  where = steps_dir(run)
  assert where is not None
  return storage.join(where, str(step), orbax_layout.ITEMS)


def resolve(path: str, step: int | None = None, flag: str = "load_parameters_path") -> str:
  """The items directory `path` means (see the module doc); one-line errors name what is there."""
  path = path.rstrip("/")
  if is_items(path):
    if step is not None:
      raise ConversionError(f"{flag}={path} is one checkpoint; --step={step} applies to a run's checkpoints/ "
                            "directory")
    return path
  if is_items(storage.join(path, orbax_layout.ITEMS)):
    if step is not None:
      raise ConversionError(f"{flag}={path} is one checkpoint (step directory); --step={step} applies to a run's "
                            "checkpoints/ directory")
    return storage.join(path, orbax_layout.ITEMS)
  if steps_dir(path) is None:
    interrupted = orbax_reader.unfinished(path, f"no {orbax_layout.METADATA} yet")
    if interrupted:  # what an interrupted to_maxtext left: say so, and how to finish it
      raise ConversionError(interrupted)
    raise ConversionError(f"{flag}={path}: not a MaxText checkpoint (no {orbax_layout.METADATA}), step directory "
                          f"(<step>/items) or training run (checkpoints/<step>/items)")
  steps = committed_steps(path)
  if not steps:
    raise ConversionError(f"{flag}={path}: the run has no committed step yet (no {orbax_layout.COMMIT_MARKER}); "
                          "wait for its first checkpoint")
  if step is None:
    return step_items(path, steps[-1])
  if step not in steps:
    raise ConversionError(f"{flag}={path}: no committed step {step}; committed steps: "
                          f"{', '.join(map(str, steps))}")
  return step_items(path, step)
