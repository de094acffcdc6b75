"""fusescope: build, train, evaluate and dissect multimodal fusion networks."""

__version__ = "0.1.0"
