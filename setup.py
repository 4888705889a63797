"""edgeml: compile ONNX models ahead of time to OpenCL and run them with a lean device runtime."""
from setuptools import setup, find_packages

setup(
    name="edgeml",
    version="0.1.0",
    description="Ahead-of-time OpenCL compiler and lean on-device runtime for robot and car models",
    python_requires=">=3.11",
    packages=find_packages(include=["edgeml*", "compiled*", "ipc*", "tools*"]),
    package_data={"ipc": ["*.capnp"], "compiled": ["*.capnp"]},
    install_requires=["numpy", "pyopencl", "pycapnp"],
    extras_require={
        "bus": ["pyzmq", "pycapnp"],
        "compile": ["onnx"],
        "dev": ["pytest", "pytest-xdist", "hypothesis", "onnxruntime", "onnx", "pyzmq", "pycapnp"],
        "bench": ["onnxruntime", "tinygrad"],
    },
    entry_points={"console_scripts": [
        "edgeml-compile=tools.compile:main",
        "edgeml-validate=tools.validate:main",
        "edgeml-inspect=tools.inspect:main",
        "edgeml-bench=tools.bench:main",
        "edgeml-bus=tools.bus:main",
        "edgeml-camerad=tools.camerad:main",
        "edgeml-modeld=tools.modeld:main",
        "edgeml-profile=tools.profile:main",
    ]},
)
