"""Whether a conversion's output is up to date: committed, made with the same options, from sources
that have not changed since (their fingerprints in its ckptflow_manifest.json).

The batch command skips such jobs; `to_huggingface --all_steps` skips such steps of a training run.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any

from apache_beam.options.pipeline_options import PipelineOptions

from pipeline import to_maxtext_job
from transforms.errors import ConversionError
from pipeline.options import ConversionOptions
from pipeline.plan_hf import INDEX_FILE
from transforms import orbax_layout, storage
from transforms.lora import ADAPTER_CONFIG
from transforms.manifest import MANIFEST

# Manifest options that say how a run went, not what the output is.
RUN_ONLY_OPTIONS = ("resume", "overwrite")


@dataclasses.dataclass(frozen=True)
class Job:
  name: str
  direction: str
  source: str
  destination: str
  flags: tuple[str, ...]  # the whole command line of the conversion, as --flags

  def options(self) -> ConversionOptions:
    return PipelineOptions(list(self.flags)).view_as(ConversionOptions)


@dataclasses.dataclass(frozen=True)
class Decision:
  run: bool
  reason: str


def manifest_path(job: Job) -> str:
  if job.direction == "to_maxtext":
    return storage.join(job.destination, to_maxtext_job.STEP, MANIFEST)
  return storage.join(job.destination, MANIFEST)


def output_state(job: Job) -> str:
  """'committed', 'incomplete' or 'missing'."""
  if job.direction == "to_maxtext":
    step = storage.join(job.destination, to_maxtext_job.STEP)
    if storage.exists(storage.join(step, orbax_layout.COMMIT_MARKER)):
      return "committed"
    return "incomplete" if storage.exists(step) else "missing"
  names = storage.list_names(job.destination)
  if "config.json" in names or ADAPTER_CONFIG in names:  # written last, after every shard and the index
    return "committed"
  ours = [n for n in names if n.endswith(".safetensors") or n in (INDEX_FILE, MANIFEST)]
  return "incomplete" if ours else "missing"


def _read_manifest(path: str) -> dict[str, Any] | None:
  if not storage.exists(path):
    return None
  try:
    manifest = json.loads(storage.read_text(path))
  except (ValueError, ConversionError):
    return None
  return manifest if isinstance(manifest, dict) else None


def decide(job: Job) -> Decision:
  """Skip only a committed output whose manifest matches this job's options and current sources."""
  state = output_state(job)
  if state != "committed":
    return Decision(True, "no output yet" if state == "missing" else "output incomplete (never committed)")
  manifest = _read_manifest(manifest_path(job))
  if manifest is None:
    return Decision(True, f"no readable {MANIFEST}")
  if manifest.get("direction") != job.direction:
    return Decision(True, f"the output was made by {manifest.get('direction')}")
  recorded, options = manifest.get("options"), job.options()
  if not isinstance(recorded, dict) or not recorded:
    return Decision(True, "the manifest records no options")
  for key, value in sorted(recorded.items()):
    if key not in RUN_ONLY_OPTIONS and getattr(options, key, None) != value:
      return Decision(True, f"option {key} changed: {value!r} -> {getattr(options, key, None)!r}")
  sources = manifest.get("sources")
  if not isinstance(sources, dict) or not sources:
    return Decision(True, "the manifest records no source files")
  for path, fingerprint in sorted(sources.items()):
    if not storage.exists(path):
      return Decision(True, f"source {path} is gone")
    if storage.fingerprint(path) != fingerprint:
      return Decision(True, f"source {path} changed")
  return Decision(False, "up to date")
