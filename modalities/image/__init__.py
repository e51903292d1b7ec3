"""Images: the patch adapter, the VTP model and the embedded sample images."""
