"""Research tools: training, the evaluation protocol, metrics, procedural landscapes and stroke simulation."""
