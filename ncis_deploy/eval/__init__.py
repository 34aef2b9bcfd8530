"""Robustness evaluation: classifiers, evaluation data, attacks and the ``ncis-deploy eval`` harness."""

from ncis_deploy.eval.attacks import THREAT_MODELS, bpda, ensemble, eot, fgsm, full_gradient, mifgsm, pgd
from ncis_deploy.eval.classifiers import Classifier, EfficientNetLite0, load_classifier
from ncis_deploy.eval.core import ATTACKS, EvalOptions, plot, render_markdown, run_eval
from ncis_deploy.eval.dataset import EvalSet, bundled, from_folder

__all__ = ["ATTACKS", "THREAT_MODELS", "Classifier", "EfficientNetLite0", "EvalOptions", "EvalSet", "bpda", "bundled",
           "ensemble", "eot", "fgsm", "from_folder", "full_gradient", "load_classifier", "mifgsm", "pgd", "plot",
           "render_markdown", "run_eval"]
