"""Reading stored chunks from OCDBT data files ourselves gives exactly what tensorstore reads."""
import os
import shutil

import pytest
import tensorstore as ts

from tests import goldens
from transforms import ocdbt_index, storage
from transforms.errors import ConversionError


def tensorstore_values(items):
  kv = ts.KvStore.open({"driver": "ocdbt", "base": storage.kvstore_spec(items)}).result()
  return {key: kv.read(key).result().value for key in kv.list().result()}


@pytest.mark.parametrize("family", ["llama3.1", "qwen3-moe"])
def test_every_value_of_maxtexts_checkpoints_reads_the_same(family):
  """MaxText's checkpoints: a root manifest whose values live in each process's sub-database."""
  items = goldens.items(family, "scan")
  index = ocdbt_index.stored_values(items)
  assert index is not None
  expected = tensorstore_values(items)
  assert sorted(index.values) == sorted(expected)
  assert any(isinstance(v, tuple) and "ocdbt.process_" in v[0] for v in index.values.values())
  assert all(index.read(key) == value for key, value in expected.items())
  assert index.read(b"no/such/key") is None


def test_a_deep_tree_with_inline_values_reads_the_same(tmp_path):
  """Interior nodes carry their subtree's common key prefix; small values sit in the leaves."""
  kv = ts.KvStore.open({"driver": "ocdbt", "base": f"file://{tmp_path}",
                        "config": {"max_decoded_node_bytes": 200, "max_inline_value_bytes": 4}}).result()
  for i in range(60):
    kv.write(b"arr/c/%d/0" % i, b"v" * (i % 7 + 1) + bytes([i])).result()
  manifest = ts.ocdbt.dump(ts.KvStore.open(f"file://{tmp_path}").result()).result()
  latest = max(manifest["versions"], key=lambda v: v["generation_number"])
  assert latest["root_height"] > 1 and manifest["version_tree_nodes"]  # older versions moved out of the manifest
  index = ocdbt_index.stored_values(str(tmp_path))
  expected = tensorstore_values(str(tmp_path))
  assert len(expected) == 60 and {type(v) for v in index.values.values()} == {bytes, tuple}
  assert all(index.read(key) == value for key, value in expected.items())
  # A new version of the database is indexed again, not served from the old index.
  kv.write(b"arr/c/0/0", b"changed").result()
  assert ocdbt_index.stored_values(str(tmp_path)).read(b"arr/c/0/0") == b"changed"


def test_a_truncated_data_file_is_one_line_naming_it(tmp_path):
  items = shutil.copytree(goldens.items("llama3.1", "scan"), tmp_path / "items")
  index = ocdbt_index.stored_values(str(items))
  key, (path, offset, length) = next((k, v) for k, v in index.values.items() if isinstance(v, tuple) and v[2] > 100)
  os.chmod(path, 0o644)
  with open(path, "r+b") as f:
    f.truncate(offset + length // 2)
  with pytest.raises(ConversionError, match="damaged") as e:
    index.read(key)
  assert path in str(e.value) and "\n" not in str(e.value)
