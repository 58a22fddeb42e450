"""The MONAIUNetSeg MONAI bundle; a package only so that ``pip install .`` ships its configs and weights."""
