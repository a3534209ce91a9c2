"""Running a trained model, apart from training: what a checkpoint, prediction, export, the
service and the engine's evaluation all need.

``normalization`` (``Normalization``, ``InputTransform``: uint8 pixels -> normalised inputs),
``pixel_classifier`` (``PixelClassifier``: pixels -> normalise -> TTA -> logits, written once),
``batched`` (``predict_logits``: in batches, stored images read one batch ahead by ``prefetch``),
``device`` (device, precision, ``configure_process``) and ``constants`` (the names the torch-free
ONNX path shares). This package imports no torch itself, nor does ``constants``; the engine
(training) imports it, never the other way round.
"""
