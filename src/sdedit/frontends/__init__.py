"""Front-ends: the sdedit command, the released command line, batch, sweep and the web UI."""
