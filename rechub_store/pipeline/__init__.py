"""Compositions of the lower layers that more than one caller needs (the CLI, the nightly job,
tuning, notebooks): `pipeline.train` is training with validation under the ranking protocol.

Layer: above `ranking` (it wires ranking into training), below `retrieval`. Why a layer of its own:
`training` may not import `ranking` (ranking sits above it, because retrieval and evaluation share
it), so the fit loop takes its validation as a parameter and this layer gives it.
"""
