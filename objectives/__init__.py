"""RL objectives for diffusion LLMs. Adding one: a new file with a class and its config, plus one line below."""

from objectives.bgpo import BGPO
from objectives.diffu_grpo import DiffuGRPO
from objectives.vrpo import VRPO
from objectives.vrpo_exact import VRPOExact

OBJECTIVES: dict[str, type] = {
    "bgpo": BGPO,
    "vrpo": VRPO,
    "diffu-grpo": DiffuGRPO,
    "vrpo-exact": VRPOExact,
}
