"""The teacher: exact gradient relevancy maps (Chefer et al. 2021 as LVLM-Interpret computes them), lean and fast.

See docs/teacher.md for the rule, the algorithm and its costs.
"""

from .attention import TEACHER_ATTENTION, AttentionCapture, teacher_attention_forward
from .gradient import TeacherOutput, gradient_relevancy, gradient_relevancy_for_outputs
from .labels import relevancy_labels

__all__ = [
    "TEACHER_ATTENTION",
    "AttentionCapture",
    "TeacherOutput",
    "gradient_relevancy",
    "gradient_relevancy_for_outputs",
    "relevancy_labels",
    "teacher_attention_forward",
]
