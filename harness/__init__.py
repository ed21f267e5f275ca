"""dllm-rl-harness core: the policy wrapper, ELBO estimator, sampler, trainer, measurement and CLI."""
