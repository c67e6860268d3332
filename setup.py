"""The one compiled module: the consume path's event parse (stream_detector/_fastparse.c).

Everything else is in pyproject.toml. ``optional``: without a C compiler the package still
installs, and events.py parses every record in Python (slower, same decisions).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("stream_detector._fastparse", ["stream_detector/_fastparse.c"],
                             optional=True, extra_compile_args=["-O2"])])
