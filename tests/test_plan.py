"""The plan alone: target tree equals MaxText's, every tensor used once, headers only, clear errors."""
import json
import os

import pytest

from pipeline import planner as plan_mod
from transforms.errors import ConversionError
from pipeline.planner import plan_to_maxtext
from tests import goldens
from transforms import safetensors_io, storage
from transforms.safetensors_io import read_header, write_safetensors


@pytest.fixture
def hf(tmp_path):
  return lambda family="llama3.1": goldens.copy_hf(family, str(tmp_path / family))


@pytest.mark.parametrize("family", goldens.FAMILIES)
@pytest.mark.parametrize("layout", ["scan", "unscan"])
def test_planned_tree_equals_maxtext_tree(family, layout):
  plan = plan_to_maxtext(goldens.path(family, "hf"), scan_layers=layout == "scan")
  ours = {a.path: {"shape": list(a.shape), "dtype": a.dtype} for a in plan.arrays}
  theirs = {k: v for k, v in goldens.tree(family, layout).items() if k != "step"}
  assert ours == theirs
  assert plan.family == family


@pytest.mark.parametrize("family", goldens.FAMILIES)
def test_every_source_tensor_is_used_exactly_once(family):
  plan = plan_to_maxtext(goldens.path(family, "hf"))
  names = [s.name for t in plan.tasks for s in t.sources]
  assert len(names) == len(set(names))
  on_disk = set(safetensors_io.list_checkpoint(goldens.path(family, "hf")))
  assert set(names) | set(plan.unused) == on_disk
  assert plan.unused == ()


def test_scanned_slices_cover_each_stacked_array_once():
  plan = plan_to_maxtext(goldens.path("llama3.1", "hf"), scan_layers=True)
  by_array = {}
  for t in plan.tasks:
    by_array.setdefault(t.array.path, []).append(t.index)
  for path, indexes in by_array.items():
    array = next(a for a in plan.arrays if a.path == path)
    if "/layers/" in path:
      assert sorted(indexes) == [((1, i),) for i in range(array.shape[1])]
    else:
      assert indexes == [()]


def test_chunks_are_one_on_the_stacked_axis_and_split_16_ways():
  plan = plan_to_maxtext(goldens.path("llama3.1", "hf"), scan_layers=True)
  arrays = {a.path: a for a in plan.arrays}
  query = arrays["params/params/decoder/layers/self_attention/query/kernel"]
  assert query.shape == (64, 3, 4, 32) and query.chunks == (4, 1, 4, 32)
  out = arrays["params/params/decoder/layers/self_attention/out/kernel"]
  assert out.shape == (4, 3, 32, 64) and out.chunks == (4, 1, 2, 64)  # 4 heads: 32 is the first split
  assert arrays["params/params/token_embedder/embedding"].chunks == (32, 64)
  coarse = plan_to_maxtext(goldens.path("llama3.1", "hf"), chunk_split=1)
  assert {a.path: a.chunks for a in coarse.arrays}[query.path] == (64, 1, 4, 32)


def test_plan_reads_headers_only(monkeypatch):
  ranges = []
  real = storage.read_bytes

  def spy(path, start=None, end=None):
    ranges.append((path, start, end))
    return real(path, start, end)
  monkeypatch.setattr(storage, "read_bytes", spy)
  plan_to_maxtext(goldens.path("qwen3", "hf"))
  shard = goldens.path("qwen3", "hf", "model.safetensors")
  data_start = min(r.start for r in read_header(shard).values())
  shard_reads = [(s, e) for p, s, e in ranges if p.endswith(".safetensors")]
  assert shard_reads and all(s is not None and e is not None and e <= data_start for s, e in shard_reads)


def test_family_is_detected_and_model_name_must_agree():
  assert plan_to_maxtext(goldens.path("qwen2.5", "hf"), model_name="qwen2.5-7b").family == "qwen2.5"
  with pytest.raises(ConversionError, match=r"model_name=llama3.1-8b is a llama3.1 model but .*config.json "
                                            r"describes Qwen3ForCausalLM \(qwen3\)"):
    plan_to_maxtext(goldens.path("qwen3", "hf"), model_name="llama3.1-8b")
  with pytest.raises(ConversionError, match="model_name=gpt-9 is not a MaxText model name"):
    plan_to_maxtext(goldens.path("qwen3", "hf"), model_name="gpt-9")


def _edit_config(model_dir, **changes):
  path = os.path.join(model_dir, "config.json")
  with open(path) as f:
    config = json.load(f)
  config.update(changes)
  with open(path, "w") as f:
    json.dump(config, f)


def test_unsupported_architecture(hf):
  d = hf()
  _edit_config(d, architectures=["BertModel"])
  with pytest.raises(ConversionError, match=r"config.json: unsupported architecture \['BertModel'\]"):
    plan_to_maxtext(d)


def test_shape_that_does_not_match_config(hf):
  d = hf()
  _edit_config(d, intermediate_size=128)
  with pytest.raises(ConversionError, match=r"model.safetensors: tensor model.layers.0.mlp.gate_proj.weight has "
                                            r"shape \[96, 64\] but config.json implies \[128, 64\]"):
    plan_to_maxtext(d)


def test_missing_config_and_bad_save_dtype(tmp_path, hf):
  with pytest.raises(ConversionError, match="config.json: no such file"):
    plan_to_maxtext(str(tmp_path))
  with pytest.raises(ConversionError, match="--save_dtype=int8"):
    plan_to_maxtext(hf(), save_dtype="int8")


def _split_into_shards(model_dir):
  """Rewrites the single-file checkpoint as two shards plus an index, as the Hub lays them out."""
  single = os.path.join(model_dir, "model.safetensors")
  tensors = {n: safetensors_io.read_tensor(r) for n, r in read_header(single).items()}
  os.remove(single)
  names = sorted(tensors)
  shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
  weight_map = {}
  for shard, shard_names in shards.items():
    write_safetensors(os.path.join(model_dir, shard), {n: tensors[n] for n in shard_names})
    weight_map.update({n: shard for n in shard_names})
  with open(os.path.join(model_dir, "model.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {}, "weight_map": weight_map}, f)
  return weight_map


def test_sharded_checkpoint_plans_like_the_single_file(hf):
  d = hf()
  _split_into_shards(d)
  sharded = plan_to_maxtext(d)
  single = plan_to_maxtext(goldens.path("llama3.1", "hf"))
  assert sharded.arrays == single.arrays
  assert {os.path.basename(s.file) for t in sharded.tasks for s in t.sources} == {
      "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}


def test_tensor_missing_from_index(hf):
  d = hf()
  weight_map = _split_into_shards(d)
  del weight_map["model.layers.2.self_attn.k_proj.weight"]
  with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
    json.dump({"weight_map": weight_map}, f)
  with pytest.raises(ConversionError, match="tensor model.layers.2.self_attn.k_proj.weight is missing"):
    plan_to_maxtext(d)


def test_missing_shard(hf):
  d = hf()
  _split_into_shards(d)
  os.remove(os.path.join(d, "model-00002-of-00002.safetensors"))
  with pytest.raises(ConversionError, match="model-00002-of-00002.safetensors"):
    plan_to_maxtext(d)


def test_truncated_shard(hf):
  d = hf()
  shard = os.path.join(d, "model.safetensors")
  os.truncate(shard, os.path.getsize(shard) - 100)
  with pytest.raises(ConversionError, match=r"model.safetensors: truncated"):
    plan_to_maxtext(d)


def test_plan_is_deterministic():
  a = plan_to_maxtext(goldens.path("llama3.1", "hf"))
  b = plan_to_maxtext(goldens.path("llama3.1", "hf"))
  assert a == b


def test_every_known_model_name_resolves_to_a_family_that_can_size_it():
  from models.known_configs import known_config, known_model_names  # pylint: disable=import-outside-toplevel
  from pipeline.planner import family_of_model_name  # pylint: disable=import-outside-toplevel
  names = known_model_names()
  assert {"llama3.1-8b", "qwen3-30b-a3b", "deepseek3-671b", "gpt-oss-120b", "mixtral-8x7b", "qwen3-next-80b-a3b",
          "gemma3-27b"} <= set(names)
  for name in names:
    config = known_config(name)
    family = plan_mod.detect_family(config, name, f"the built-in config of {name}")
    assert family is family_of_model_name(name)
    sizes = plan_mod.family_sizes(family, {**config, "use_multimodal": False}, name)
    scan = not (family.scan_refused and family.scan_refused(config))  # Qwen3-VL runs unscanned only
    placements = plan_mod.placements(family, {**config, "use_multimodal": False}, sizes, scan_layers=scan)
    assert placements, name


@pytest.mark.parametrize("golden", sorted(d for d in os.listdir(goldens.GOLDENS)
                                          if os.path.isdir(os.path.join(goldens.GOLDENS, d, "hf"))))
def test_auto_detection_picks_every_goldens_family(golden):
  with open(goldens.path(golden, "maxtext_model.json")) as f:
    meta = json.load(f)
  family = plan_mod.detect_family(plan_mod.read_config(goldens.path(golden, "hf")), meta["mt_model_name"])
  assert family.name == meta["family"].removesuffix("-mm")


def test_tasks_name_their_parameter_uniquely_where_two_stacks_share_a_path():
  import models  # pylint: disable=import-outside-toplevel
  family = models.BY_NAME["deepseek3"]
  plan = plan_to_maxtext(goldens.path("deepseek3", "hf"))
  query = [t for t in plan.tasks if t.array.path.endswith("self_attention/wq_a/kernel")]
  assert {family.param(t.param).stack for t in query} == {"dense_layers", "moe_layers"}
  assert all(family.param(t.param).stack in t.array.path for t in query)
  with pytest.raises(KeyError, match="has 2 parameters"):
    family.param("decoder/{layers}/self_attention/wq_a/kernel")
