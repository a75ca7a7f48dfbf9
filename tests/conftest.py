# The suite imports Apache Beam as the command lines do (pipeline/beam_import.py), before any test module does.
import pipeline  # noqa: F401

pytest_plugins = ["tests.gcs_emulator"]
