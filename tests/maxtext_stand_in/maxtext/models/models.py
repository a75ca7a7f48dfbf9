import json
import os

import numpy as np

import maxtext


class _Model:
  def __init__(self, config):
    self.config = config
    self.hf = None

  def apply(self, params, ids, positions, segments, enable_dropout, rngs):
    maxtext.CALLS.append(("apply", tuple(ids.shape)))
    assert not enable_dropout and "aqt" in rngs
    batch, n = ids.shape
    assert batch == self.config.global_batch_size_to_train_on and str(ids.dtype) == "int32"
    assert np.array_equal(np.asarray(positions), np.broadcast_to(np.arange(n), (batch, n)))
    assert np.all(np.asarray(segments) == 1)
    if self.hf is None:
      from pipeline.check_logits import converted_model  # pylint: disable=import-outside-toplevel
      config_dir = os.environ["STAND_IN_HF_CONFIG"]  # the test's; MaxText's config has no such key
      with open(os.path.join(config_dir, "config.json")) as f:
        hf_config = json.load(f)
      self.hf = converted_model(params["params"], hf_config, config_dir, None, None)
    from pipeline.check_logits import forward  # pylint: disable=import-outside-toplevel
    row = forward(self.hf, np.asarray(ids[0]).tolist())
    return np.broadcast_to(row, (batch, *row.shape))


def transformer_as_linen(config, mesh, quant, model_mode):
  assert model_mode == "train" and quant is None
  return _Model(config)
