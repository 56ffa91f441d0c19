"""Hydra configuration files for awdlm."""
