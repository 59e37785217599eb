"""Training a segmentation model from GeoTIFF scenes and labels (``geounet train``); scoring one (``geounet evaluate``).

``config`` (the YAML config and its checks), ``data`` (scenes on the training grid,
chips), ``augment``, ``losses``, ``validation`` (IoU on held-out scenes), ``card``
(the model file and its card), ``checkpoint`` (resume), ``loop`` (``train_model``);
``evaluate`` scores a model file through the prediction path.
"""
