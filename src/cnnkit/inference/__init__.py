"""Using a trained model: load it (a checkpoint or an exported ``.onnx`` file) and predict.

``predictor`` (``load_predictor``: one interface for both kinds), ``batch_prediction``
(``predict_paths``: files, folders, globs and zips in bounded chunks; table, JSON or CSV),
``image_inputs`` (what paths name, read from disk or zips), ``onnx_runtime`` (``OnnxClassifier``).
Nothing in this package imports torch unless a checkpoint is loaded: an ``.onnx`` model runs on
ONNX Runtime alone.
"""
