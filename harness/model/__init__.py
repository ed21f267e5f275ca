"""The model part: the dLLM policy wrapper (masked-diffusion forward), the ELBO estimator, the LLaDA
sampler, the built-in tiny model and device selection. It knows no task and no objective.
"""
