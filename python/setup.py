# The wheel ships a native library (libetha_tensor_bus.so) when one was copied into the package:
# mark the distribution as platform-specific so the wheel is tagged for this platform, not
# py3-none-any (which would install, and then fail to load, anywhere else).
from setuptools import setup
from setuptools.dist import Distribution


class NativeDistribution(Distribution):
    def has_ext_modules(self):
        return True


setup(distclass=NativeDistribution)
