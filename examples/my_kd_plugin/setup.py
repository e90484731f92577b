from setuptools import find_packages, setup

setup(name="my_kd_plugin", version="0.1", packages=find_packages(), install_requires=["mdistiller"])
