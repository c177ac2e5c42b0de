"""ffmpeg: the argv lists (one module), probing, verifying and assembling the film."""
