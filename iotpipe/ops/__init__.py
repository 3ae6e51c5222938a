"""Day-two operations: commands that read (and repair) the pipeline's data, not its resources.

They find the env's resources by their deterministic names (config.Names) and never change
what `up` manages.
"""
