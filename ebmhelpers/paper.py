"""What the paper reports, transcribed from its text with the section each item comes from.

*Investigations into Compressing Energy-Based Models* (P. Sousa). Its text is at
``../shared/paper/sousa-compressing-ebms.txt`` beside this repository's checkout;
``tests/test_paper.py`` reads the tables and quoted sentences below back from that file. The
paper's figures exist only as prose: what it says about Figures 2-4 is quoted verbatim
(:data:`CLAIMS`). Where the paper is silent (the SGLD settings, the buffer size, the learning
rate) the series follows its reference [14], P. Lippe's UvA tutorial 8, and says so there.

Nothing here is computed: :mod:`ebmhelpers.verdicts` sets these numbers beside this project's.
"""

from __future__ import annotations

from dataclasses import dataclass

PAPER_TITLE = "Investigations into Compressing Energy-Based Models"
PAPER_TEXT = "../shared/paper/sousa-compressing-ebms.txt"  # relative to the repository root


@dataclass(frozen=True)
class Reported:
    """One number the paper reports: its value, unit, the section and the words it comes with."""

    value: float
    unit: str
    section: str
    text: str  # the paper's words around the number, verbatim


# ---- §3.1 and §4.1 the network and the classifier behind IS and FID ------------------------------
NETWORK = "resnet18"  # §3.1 "an adjusted version of the ResNet18 architecture" (a key of models.BASELINES)
# §4.1 says no more of the classifier whose logits and features IS and FID use than CLAIMS["classifier"]:
# no architecture, no weights. Scores on its scale can be set beside another classifier's only by their place
# between the same references (real digits, noise), which the paper does not report.
CLASSIFIER_PUBLISHED = False

# ---- §4.2 the baseline ---------------------------------------------------------------------
BASELINE_FID = Reported(5275.0, "", "§4.2", "achieved an FID score of 5,275")
BASELINE_IS = Reported(1.13, "", "§4.2", "IS of 1.13")
BASELINE_EPOCHS = Reported(60, "epochs", "§4.2", "trained for 60 epochs over 2 days on an NVIDIA A100 GPU")
BASELINE_DAYS = Reported(2, "days", "§4.2", "trained for 60 epochs over 2 days on an NVIDIA A100 GPU")
BASELINE_GPU = "NVIDIA A100"

# ---- §4.3 Table 1 (baseline vs static int8) ---------------------------------------------------
TABLE1_SECTION = "§4.3, Table 1"
TABLE1 = {  # model -> (model size in MB, inference time in s), as the table prints them
    "Baseline": (134.1, 0.0263),
    "Static Quantized": (11.3, 0.0132),
}
TABLE1_COMPRESSION = Reported(11.9, "x", "§4.3", "has a compression ratio of 11.9x and 50% faster inference time")
TABLE1_FASTER = Reported(0.50, "fraction", "§4.3", "has a compression ratio of 11.9x and 50% faster inference time")

# ---- §4.3 Table 2 (OOD scores on digits 4, 5, 9) ------------------------------------------------
TABLE2_SECTION = "§4.3, Table 2"
TABLE2_TRANSFORMS = ("noise", "rotation", "reduction")  # the paper's column groups
TABLE2_DIGITS = (4, 5, 9)
# The paper's transform names -> this project's OOD sets (metrics.PAPER_OOD_SETS): "rotation" is the
# upside-down digit ("an upside-down 5 resembling a 2", §4.3), "reduction" the size-reduced digit.
TABLE2_OOD_SET = {"noise": "noise", "rotation": "flip", "reduction": "reduced"}
TABLE2 = {  # model -> {(transform, digit): score}
    "Baseline": dict(
        zip(
            [(t, d) for t in TABLE2_TRANSFORMS for d in TABLE2_DIGITS],
            (-0.45, -0.35, -0.21, -0.01, -0.01, 0.00, -0.03, -0.04, -0.05),
        )
    ),
    "Static Quantization": dict(
        zip(
            [(t, d) for t in TABLE2_TRANSFORMS for d in TABLE2_DIGITS],
            (-0.02, -0.02, -0.02, -0.01, -0.01, -0.01, -0.02, -0.02, -0.02),
        )
    ),
}

# ---- §3.3.2 and §4.4 pruning (Figure 2) ---------------------------------------------------------
PRUNE_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # §4.4 "varied from 10% to 90%"
PRUNE_RATIOS_SECTION = "§4.4"
FINETUNE_EPOCHS = Reported(7, "epochs", "§4.4", "we also recorded the scores for post-training with 7 further epochs")
FINETUNE_FRACTION = FINETUNE_EPOCHS.value / BASELINE_EPOCHS.value  # 7 of 60 epochs
PRUNE_NORM = "l1"  # §3.3.2: "Both methods make use of filtering techniques such as $l_1$ norm"
PRUNE_NORM_SECTION = "§3.3.2"
PRUNE_SCOPES = ("global", "Conv2d")  # §3.3.2/§4.4: "applied both globally and to Conv2d layers only"

# ---- §3.4 and §4.5 distillation (Figure 3) ------------------------------------------------------
DISTILL_LOSS = "MSE of energies"  # §3.4, eq. 6: mean_i (E_teacher(x_i) - E_student(x_i))^2
DISTILL_LOSS_SECTION = "§3.4, eq. 6"
N_STUDENTS = Reported(6, "students", "§3.4", "We experimented with six student models")
DISTILL_EPOCHS = Reported(30, "epochs", "§4.5", "we trained the student models for 30 epochs")
DISTILL_EPOCH_FRACTION = (
    DISTILL_EPOCHS.value / BASELINE_EPOCHS.value
)  # §4.5 "half the epochs used to train the baseline"

# ---- §5 the headline student (Figure 4) ---------------------------------------------------------
STUDENT_PARAMS = Reported(77_004, "parameters", "§5", "the student model with 77,004 parameters (943 KB)")
STUDENT_SIZE_KB = Reported(943, "KB", "§5", "the student model with 77,004 parameters (943 KB)")
STUDENT_RATIO = Reported(
    145, "x", "§5", "145x fewer parameters than the baseline"
)  # also the abstract's "1/145th-sized"
FIGURE4_PRUNING = ("unstructured", "Conv2d", 0.6)  # §5: "unstructured 60% pruning of Conv2d layers"
FIGURE4_SECTION = "§5"

# ---- what the paper says about its figures and tables, verbatim ------------------------------
CLAIMS: dict[str, tuple[str, str]] = {  # key -> (section, the paper's sentence or clause, verbatim)
    "abstract_headline": (
        "Abstract",
        "A 1/145th-sized student model created via distillation matches baseline image quality and anomaly detection.",
    ),
    "table2_noise": (
        "§4.3",
        "It shows the baseline model is more sensitive to noise, with quantized models less adept at noise detection.",
    ),
    "table2_rotation": ("§4.3", "Both models struggle with rotated digits, particularly with 5 and 9"),
    "table2_reduction": ("§4.3", "size reductions yield nearly zero scores from both models, indicating only"),
    "table2_reduction_end": ("§4.3", "a marginal ability to recognize these as non-authentic images."),
    "fig2_global": ("§4.4", "From Figure 2, an increased global pruning ratio significantly affects all three scores."),
    "fig2_fid": (
        "§4.4",
        "The FID score under unstructured pruning declines more sharply yet maintains higher overall "
        "values, suggesting better image quality retention than structured pruning.",
    ),
    "fig2_is": ("§4.4", "Both methods exhibit volatility for the IS score, with notable drops at 30% and 40% pruning."),
    "fig2_ood": (
        "§4.4",
        "unstructured pruning shows less stability but generally better performance over various pruning levels.",
    ),
    "fig2_conv": (
        "§4.4",
        "When only pruning the Conv2d layers, the FID and IS scores show a stable pre-training pruning "
        "performance slightly superior to its global counterparts, with unstructured pruning "
        "maintaining the upper hand.",
    ),
    "fig2_finetuned": (
        "§4.4",
        "The fine-tuned pruned models show increased performance even at the 80% and 90% "
        "pruning levels, maintaining close-to-perfect OOD scores.",
    ),
    "fig3_medium": (
        "§4.5",
        "Figure 3 reveals that for medium-sized student models, this strategy is indeed efficient "
        "in preserving performance across all metrics.",
    ),
    "fig3_smallest": (
        "§4.5",
        "even the smallest student models show a competitive performance to most pruned models from Figure 2",
    ),
    "fig3_vs_quantized": (
        "§4.5",
        "the student models are either comparable or superior in performance at OOD for transformed images.",
    ),
    "fig4_pruned": ("§5", "the pre-training pruned model has clearer digits"),
    "classifier": ("§4.1", "To compute the IS and FID scores, we trained a simple classifier."),
    "conclusion_student": (
        "§5",
        "the student model with 77,004 parameters (943 KB) is the most efficient for "
        "deployment in resource-constraint environments because of its reduced size, 145x "
        "fewer parameters than the baseline, and comparable performance with the larger "
        "alternatives.",
    ),
}

# ---- attributions: what the paper's equations and algorithms are ------------------------------
ATTRIBUTIONS = {
    "energy": "§3.1, eq. 4: the energy is the mean of the network's 10 logits",
    "eq5": "§3.1, eq. 5: the parameter gradient of that mean-of-logits energy (not the training loss)",
    "loss": "§3.2, Algorithm 2 lines 9-11: L_CD + alpha L_RG, with L_CD = mean(E(x+) - E(x-)) and "
    "L_RG = mean(E(x+)^2 + E(x-)^2)",
    "buffer": "§3.2, Algorithm 2 line 1 ('Initialize empty buffer'), line 4 (95% from the buffer, else U(-1, 1)) "
    "and line 12 (the samples are added to the buffer: it grows from empty)",
    "network": "§3.1: 'an adjusted version of the ResNet18 architecture' with Swish and without BatchNorm; the "
    "adjustment for 28x28 digits (3x3 stem, no max-pool) is this project's, the paper does not describe it",
    "sgld": "§2.3, Algorithm 1 (from [14]); the step size, noise, K and buffer size are not in the paper: "
    "they come from its reference [14], P. Lippe's UvA tutorial 8",
}


def table2_value(model: str, transform: str, digit: int) -> float:
    """One of Table 2's nine scores (``model`` 'Baseline' or 'Static Quantization')."""
    return TABLE2[model][(transform, digit)]


def table2_range(model: str, transform: str) -> tuple[float, float]:
    """(lowest, highest) of a model's three per-digit scores on one transform."""
    values = [TABLE2[model][(transform, d)] for d in TABLE2_DIGITS]
    return min(values), max(values)
