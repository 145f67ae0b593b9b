"""solo-npu: SOLOv2 instance segmentation training and deployment on Ascend NPUs, CUDA GPUs and CPUs."""

__version__ = "0.1.0"
