"""The public Python API (``ModelProvisioner``), engine handoffs, and the JSON shapes both front ends use."""
