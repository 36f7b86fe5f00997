"""`mnisttk inspect`: per-layer error and measured time of an int8 model against its float source.
`profile` runs it (the layers, their error, ONNX Runtime's profile), `layer_error` the per-layer
numbers from both models' intermediate outputs, `report` the Markdown and plot. Edge side: numpy and
onnxruntime only."""
