"""cnnkit: build, train, evaluate and serve convolutional image classifiers."""

__version__ = "0.1.0"
