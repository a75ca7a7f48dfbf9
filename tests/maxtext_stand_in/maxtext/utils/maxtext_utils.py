import types

import numpy as np


def create_device_mesh(config):
  import jax  # pylint: disable=import-outside-toplevel
  return np.array(jax.devices()[:1])


def init_initial_state(model, tx, config, is_training, rng):
  return types.SimpleNamespace(params={"params": "initialised"})


def setup_decode_state(config, mesh, checkpoint_manager, init_state_fn):
  state = init_state_fn()
  # MaxText restores params from config.load_parameters_path here; the stand-in's model reads it.
  state.params = {"params": config.values["load_parameters_path"]}
  return state, None
