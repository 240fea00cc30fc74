"""Workstation side: checkpoint loaders, JEPA models in torch, ONNX export. Needs `ami-edge[export]`."""
