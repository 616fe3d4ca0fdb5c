"""Model families: each adapts one kind of network to the model interface in base.py."""
