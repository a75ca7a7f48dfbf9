"""ckptflow's command lines, options, planning and pipeline construction.

Every entry point (`python -m pipeline.to_maxtext`, `ckptflow`) starts here, so Apache Beam, when
something imports it, comes without the cloud I/O a local job does not use (beam_import.py).
"""
from pipeline import beam_import

beam_import.install()
