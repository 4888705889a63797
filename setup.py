"""edgeml: compile ONNX models ahead of time to OpenCL and run them with a lean device runtime."""
from setuptools import setup, find_packages

setup(
    name="edgeml",
    version="0.1.0",
    description="Ahead-of-time OpenCL compiler and lean on-device runtime for robot and car models",
    python_requires=">=3.11",
    packages=find_packages(include=["edgeml*", "compiled*", "ipc*", "tools*"]),
    package_data={"ipc": ["*.capnp"], "compiled": ["*.capnp"]},
    install_requires=["numpy", "pyopencl", "pycapnp", "pyzmq", "cryptography", "tqdm"],   # the device side: runtime, bus, daemons (tqdm: progress bars)
    extras_require={
        "compile": ["onnx", "onnxruntime"],                         # the workstation: compile, validate
        "dev": ["pytest", "pytest-xdist", "hypothesis", "onnx", "onnxruntime"],
        "bench": ["onnx", "onnxruntime", "tinygrad"],
    },
    entry_points={"console_scripts": [
        "edgeml-compile=tools.compile:main",
        "edgeml-keygen=tools.keygen:main",
        "edgeml-tune=tools.tune:main",
        "edgeml-validate=tools.validate:main",
        "edgeml-inspect=tools.inspect_artifact:main",
        "edgeml-bench=tools.bench:main",
        "edgeml-bus=tools.bus:main",
        "edgeml-bench-bus=tools.bench_bus:main",
        "edgeml-camerad=tools.camerad:main",
        "edgeml-modeld=tools.modeld:main",
        "edgeml-profile=tools.profile_artifact:main",
    ]},
)
