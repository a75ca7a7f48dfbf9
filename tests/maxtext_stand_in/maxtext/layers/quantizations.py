def configure_quantization(config):
  return None
