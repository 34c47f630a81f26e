"""Flax models, one file per system (`dan.py`: DANv1/DANv2); shared blocks in `layers.py`."""
