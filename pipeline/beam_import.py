"""Apache Beam without its cloud I/O until a job needs it.

With apache-beam[gcp] installed, `import apache_beam` also imports BigQuery, Pub/Sub, GCS (with
its auth stack) and the Dataflow API client: about a quarter of a tiny local conversion's 2.5-4 s
on the 2-core VM (docs/performance.md), for modules a local job never touches. ckptflow reads and
writes gs:// through gcsfs and tensorstore, not through Beam's FileSystems.

So, while apache_beam's own __init__ runs (and only then), optional imports Beam guards with
`except ImportError` report themselves missing: `apache_beam.io.gcp.bigquery` (apache_beam.io then
skips BigQuery, Pub/Sub and gcsio), FileSystems' gs://, and `google.cloud.dataflow`, which
DataflowRunner binds at import. A job on any runner other than the local one calls
`load_remote_io()` before it builds its pipeline, which imports what was skipped and binds
DataflowRunner's module; FileSystems looks a scheme up among the FileSystem subclasses loaded at
the time, so gs:// works from then on.

A process that imported apache_beam before this module (a Dataflow worker, whose harness starts
with Beam) is left as it is.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys

# Imported by apache_beam.io and apache_beam.io.filesystems inside `try: ... except ImportError`.
DEFERRED = ("apache_beam.io.gcp.bigquery", "apache_beam.io.gcp.gcsfilesystem")
# Bound at import by apache_beam.runners.dataflow.dataflow_runner (None when missing), used only by a
# Dataflow job. Not a lazily loaded module: the local runner's state cache sizes objects by walking
# every module's globals (objsize), which would load it in each run.
DATAFLOW_API = "google.cloud.dataflow"


class _WhileBeamImports(importlib.abc.MetaPathFinder):
  """Answers for apache_beam (found where Python would find it, to step aside once it is imported),
  DEFERRED and DATAFLOW_API; every other name goes to the finders after it."""

  def find_spec(self, name, path, target=None):
    if (name in DEFERRED or name == DATAFLOW_API) and "apache_beam" in sys.modules:  # Beam's __init__ runs
      raise ModuleNotFoundError(f"{name} is imported when a job needs it (pipeline/beam_import.py)", name=name)
    if name != "apache_beam":
      return None
    spec = importlib.machinery.PathFinder.find_spec(name, path, target)
    if spec is not None:
      spec.loader = _ThenStepAside(spec.loader, self)
    return spec


class _ThenStepAside(importlib.abc.Loader):
  """apache_beam's own loader, which takes the finder out once the package's __init__ has run."""

  def __init__(self, loader, finder: _WhileBeamImports):
    self.loader = loader
    self.finder = finder

  def create_module(self, spec):
    return self.loader.create_module(spec)

  def exec_module(self, module):
    try:
      self.loader.exec_module(module)
    finally:
      module.__loader__ = module.__spec__.loader = self.loader  # what reads Beam's package data sees its loader
      if self.finder in sys.meta_path:
        sys.meta_path.remove(self.finder)


def install() -> None:
  """Makes the next `import apache_beam` leave out the modules above (nothing if it is imported
  already). Installing imports nothing: an entry point that restarts itself before its imports
  (hugepages.py) does not pay for Beam twice."""
  if "apache_beam" not in sys.modules:
    sys.meta_path.insert(0, _WhileBeamImports())


def load_remote_io() -> None:
  """Imports what install() made apache_beam skip, for a job on a remote runner (Dataflow stages
  its files through FileSystems' gs://). What is not installed is skipped, as Beam skips it: the
  runner then fails as it would have, naming the missing extra."""
  for name in DEFERRED:
    try:
      importlib.import_module(name)
    except ImportError:
      pass
  from apache_beam.runners.dataflow import dataflow_runner  # pylint: disable=import-outside-toplevel
  if dataflow_runner.dataflow_api is None:
    try:
      dataflow_runner.dataflow_api = importlib.import_module(DATAFLOW_API)
    except ImportError:
      pass
