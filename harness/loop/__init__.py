"""The RL loop: group advantages, the trainer (``rl_step``: rollout -> reward -> advantage -> loss -> step),
greedy evaluation, memory and time measurement, interval statistics.
"""
