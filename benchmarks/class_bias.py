"""What the fitted class bias (train.fit_class_bias) would give a finished run, without training it again.

    python benchmarks/class_bias.py --project /path/to/finished/project

Loads the project's adapter as evaluate does, predicts the validation and test splits, fits the
per-class bias on validation only (emotion_pipeline.training.class_bias, the same functions the train
stage uses), says whether the train stage would keep it (it must help on held-out halves of
validation), and prints validation and test accuracy / macro-F1 without and with it. The test
split plays no part in fitting or keeping it.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, default=Path("."), help="a project whose train stage has run")
    args = parser.parse_args()
    os.chdir(args.project)

    import torch

    from emotion_pipeline.config import load_params
    from emotion_pipeline.data.prepared import read_prepared
    from emotion_pipeline.evaluation.scores import accuracy, macro_f1
    from emotion_pipeline.inference.adapter import load_adapter_model, merged
    from emotion_pipeline.inference.predict import predict_proba
    from emotion_pipeline.paths import ADAPTER_DIR, PREPARED_DIR
    from emotion_pipeline.training.class_bias import cross_checked_class_bias, fit_class_bias

    params = load_params()
    splits, labels = read_prepared(PREPARED_DIR)
    model, tokenizer = load_adapter_model(params.model, ADAPTER_DIR, torch.device("cpu"))
    model = merged(model)
    # log-probabilities are the logits up to a per-row constant: the same argmax after any bias.
    scores = {name: np.log(np.clip(predict_proba(model, tokenizer, splits[name]["text"].tolist(), 128,
                                                 params.model.max_length), 1e-30, None))
              for name in ("validation", "test")}
    truth = {name: splits[name]["label"].to_numpy() for name in scores}
    kept, check = cross_checked_class_bias(scores["validation"], truth["validation"])
    # Shown below whether kept or not (when kept, it is the bias fitted on all of validation).
    bias = kept if kept is not None else fit_class_bias(scores["validation"], truth["validation"])
    print(f"held-out halves of validation: macro-F1 {check['held_out_macro_f1_without']:.4f} without, "
          f"{check['held_out_macro_f1_with']:.4f} with a bias fitted on the other half: "
          f"{'kept' if kept is not None else 'NOT kept (train.fit_class_bias would leave the model as trained)'}")

    print(f"bias fitted on validation: {', '.join(f'{n} {b:+.3f}' for n, b in zip(labels, bias))}\n")
    print("| split | accuracy | macro-F1 | accuracy with bias | macro-F1 with bias |")
    print("| --- | --- | --- | --- | --- |")
    for name in ("validation", "test"):
        plain, biased = scores[name].argmax(1), (scores[name] + bias).argmax(1)
        y = truth[name]
        print(f"| {name} | {accuracy(y, plain):.4f} | {macro_f1(y, plain, len(labels)):.4f} | "
              f"{accuracy(y, biased):.4f} | {macro_f1(y, biased, len(labels)):.4f} |")


if __name__ == "__main__":
    main()
