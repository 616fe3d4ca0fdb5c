"""Model loading primitives: safe checkpoint reading, the released format, presets and the Hub."""
