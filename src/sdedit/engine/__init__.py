"""The SDEdit engine: noise schedules, the denoiser contract, reverse samplers and the edit loop on tensors."""
