"""The training engine: device and precision, preprocessing, the train loop, evaluation."""
