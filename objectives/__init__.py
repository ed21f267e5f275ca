"""RL objectives for diffusion LLMs. Adding one: a new file with a class and its config, plus one line below."""

from objectives.bgpo import BGPO
from objectives.cj_grpo import CJGRPO
from objectives.coupled_grpo import CoupledGRPO
from objectives.d2_stepmerge import D2StepMerge
from objectives.diffu_grpo import DiffuGRPO
from objectives.espo import ESPO
from objectives.gdpo import GDPO
from objectives.justgrpo import JustGRPO
from objectives.spg import SPG
from objectives.tracerl import TraceRL
from objectives.vrpo import VRPO
from objectives.vrpo_exact import VRPOExact
from objectives.wd1 import WD1

OBJECTIVES: dict[str, type] = {
    "bgpo": BGPO,
    "vrpo": VRPO,
    "diffu-grpo": DiffuGRPO,
    "vrpo-exact": VRPOExact,
    "spg": SPG,
    "espo": ESPO,
    "wd1": WD1,
    "gdpo": GDPO,
    "cj-grpo": CJGRPO,
    "tracerl": TraceRL,
    "d2-stepmerge": D2StepMerge,
    "justgrpo": JustGRPO,
    "coupled-grpo": CoupledGRPO,
}
