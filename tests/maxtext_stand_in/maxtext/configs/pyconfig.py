import types

import maxtext


def initialize_pydantic(argv):
  maxtext.CALLS.append(("initialize_pydantic", list(argv)))
  assert argv[1].endswith("base.yml"), argv
  values = dict(a.split("=", 1) for a in argv[2:])
  batch = int(values.get("per_device_batch_size", "1"))
  return types.SimpleNamespace(values=values, mesh_axes=("data",), init_weights_seed=0,
                               global_batch_size_to_train_on=batch)
