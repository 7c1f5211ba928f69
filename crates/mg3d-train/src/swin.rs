//! 3D Swin Transformer in tch with MONAI SwinViT names (being written).
