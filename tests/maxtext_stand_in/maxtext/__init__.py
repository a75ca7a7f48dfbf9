"""A stand-in for the `maxtext` package (which needs Python >= 3.12, so it cannot be installed on
the 3.11 machines this project is developed on). It offers exactly the API surface that
pipeline.check_logits.maxtext_logits calls, checks that it is called the way MaxText's own
forward-pass checker calls it, and computes logits with the checkpoint streamed through ckptflow's
inverse conversion. It tests the adapter's plumbing, not MaxText's model."""
CALLS = []
