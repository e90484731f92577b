import os

from setuptools import find_packages, setup

here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "requirements.txt")) as f:
    requirements = [line.strip() for line in f if line.strip() and not line.startswith("#")]

setup(
    name="mdistiller",
    version="0.1.0",
    description="Knowledge distillation for image classifiers, with frequency-domain methods and a dense-prediction adapter.",
    packages=find_packages(include=["mdistiller", "mdistiller.*", "mdistiller_dense", "mdistiller_dense.*"]),
    python_requires=">=3.9",
    install_requires=requirements,
    extras_require={"test": ["pytest>=7.4", "PyWavelets>=1.4"]},
)
