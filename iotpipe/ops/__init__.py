"""Day-two operations on an env's data (replay, ...): they read and repair what the pipeline
stored, and use the engine only to find the env's resources."""
