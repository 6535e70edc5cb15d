"""Built-in modelopt plugin: OpenVINO IR format, exporters (torch / ONNX -> OpenVINO), the
``openvino`` backend and NNCF optimizers (post-training INT8, accuracy control, weight
compression). Installed with ``pip install modelopt-core[openvino]``."""
