"""Day-two operations (replay, health, logs, readings): commands that read and repair the
pipeline's data, not its resources.

They find the env's resources by their deterministic names (config.Names) or through the engine,
and never change what `up` manages.
"""
