"""Robustness evaluation that holds up: strong attacks, strength checks, certificates, reports.

``evaluate(model, dataset, indices, attacks)`` is the core; :mod:`.suite` runs a whole comparison
of several models, :mod:`.report` writes it as JSON, CSV and a self-contained HTML file,
:mod:`.request` does both for saved runs (an :class:`EvaluationRequest`), from the command line
(:mod:`.cli`) or as a background job (:mod:`.background`); under ``torchrun`` :mod:`.shards` shares
the scans among the processes.
"""

from pipeline.evaluation.certify import (
    ABSTAIN,
    Certificate,
    CertifiedCurve,
    certified_accuracy_curve,
    certify,
)
from pipeline.evaluation.defenses import (
    BitDepthReduction,
    Defended,
    DefenseResult,
    InputTransform,
    JPEGDefense,
    MedianSmoothing,
    RandomShift,
    evaluate_defense,
    make_defense,
)
from pipeline.evaluation.ensemble import Ensemble, EnsembleResult, evaluate_ensemble, load_ensemble
from pipeline.evaluation.metrics import accuracy, confusion_matrix, per_class_recall, psnr, ssim
from pipeline.evaluation.reference import REFERENCE_STUDY, ReferenceTable, reference_attacks, reference_table
from pipeline.evaluation.request import EvaluationRequest, evaluate_runs
from pipeline.evaluation.robustness import (
    AttackResult,
    AttackSpec,
    CombinedResult,
    Example,
    Outcome,
    RobustnessReport,
    combine,
    evaluate,
)
from pipeline.evaluation.strength import StrengthCheck, StrengthReport, StrengthSettings, strength_checks
from pipeline.evaluation.suite import EvaluationSuite, ModelEvaluation, SuiteSettings, evaluate_models
from pipeline.evaluation.sweeps import (
    MinimalEpsilon,
    SweepResult,
    epsilon_sweep,
    minimal_epsilon_distribution,
    sweep_from_report,
)
from pipeline.evaluation.transfer import TransferResult, transfer_matrix

__all__ = [
    "ABSTAIN",
    "AttackResult",
    "AttackSpec",
    "BitDepthReduction",
    "Certificate",
    "CertifiedCurve",
    "CombinedResult",
    "Defended",
    "DefenseResult",
    "Ensemble",
    "EnsembleResult",
    "EvaluationRequest",
    "EvaluationSuite",
    "Example",
    "InputTransform",
    "JPEGDefense",
    "MedianSmoothing",
    "MinimalEpsilon",
    "ModelEvaluation",
    "Outcome",
    "REFERENCE_STUDY",
    "RandomShift",
    "ReferenceTable",
    "RobustnessReport",
    "StrengthCheck",
    "StrengthReport",
    "StrengthSettings",
    "SuiteSettings",
    "SweepResult",
    "TransferResult",
    "accuracy",
    "certified_accuracy_curve",
    "certify",
    "combine",
    "confusion_matrix",
    "epsilon_sweep",
    "evaluate",
    "evaluate_defense",
    "evaluate_ensemble",
    "evaluate_models",
    "evaluate_runs",
    "load_ensemble",
    "make_defense",
    "minimal_epsilon_distribution",
    "per_class_recall",
    "psnr",
    "reference_attacks",
    "reference_table",
    "ssim",
    "strength_checks",
    "sweep_from_report",
    "transfer_matrix",
]
