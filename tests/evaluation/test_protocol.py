"""curvext.evaluation.protocol and the demo/evaluate commands on a small digits model."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from curvext import data
from curvext.cli import main
from curvext.data import zoo
from curvext.detection.detector import CurvatureDetector
from curvext.evaluation.protocol import attack_suite, evaluate, write_outputs
from curvext.evaluation.rows import SCORES

PLAIN = "deepfool,pgd-linf,pgd-l2,cw"  # --attacks without the adaptive rows, where they are not the point


def zoo_squeezer():
    """The squeezer `curvext evaluate` picks for 1-channel images of a folder (greyscale)."""
    from curvext.adversarial.squeezers import squeezer_for

    return squeezer_for("folder", 1, 8)[1]


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    return zoo.train("lenet", "relu", "digits", cache=tmp_path_factory.mktemp("zoo")).model


def test_report_rows_metrics_and_resume(digits_model, tmp_path):
    test = data.load_digits("test").subset(60)
    det = CurvatureDetector(digits_model, num_directions=4, method="fd2", h=0.1)
    attacks = {k: v for k, v in attack_suite(cw_steps=20).items() if k in ("deepfool", "pgd-l2")}
    rep = evaluate(digits_model, test.images, test.labels, detector=det, attacks=attacks, out_dir=tmp_path,
                   progress=False)
    assert {(r.attack, r.score) for r in rep.rows} == {(a, s) for a in attacks for s in SCORES}
    for r in rep.rows:
        assert 0.0 <= r.auc <= 1.0 and 0.5 <= r.accuracy <= 1.0 and 0.0 <= r.tpr_calibrated <= 1.0
    # The curvext AUC equals the one computed from the raw rho arrays (orientation "higher").
    from sklearn.metrics import roc_auc_score

    rho_p = rep.rho_perturbed["pgd-l2"]
    y = np.r_[np.zeros(len(rep.rho_clean)), np.ones(len(rho_p))]
    auc = roc_auc_score(y, np.r_[rep.rho_clean, rho_p])
    row = next(r for r in rep.rows if r.attack == "pgd-l2" and r.score == "curvext")
    assert abs(row.auc - auc) < 1e-12
    assert rep.clean_sign_share == pytest.approx(float(np.mean(rep.rho_clean < 0)))
    # Paired shift: each perturbed image against its own clean image, in the report's orientation.
    success = torch.load(next(tmp_path.glob("cache/attack-pgd-l2-*.pt")), weights_only=False)["success"].numpy()
    sign = 1.0 if rep.orientation == "higher" else -1.0
    moved = sign * (rho_p - rep.rho_clean[success])
    assert row.paired_shift == pytest.approx(float(np.mean(moved > 0) + 0.5 * np.mean(moved == 0)), abs=1e-12)
    assert "| paired shift |" in rep.table()
    # Recovery at the best threshold never exceeds recovery with every perturbed image flagged
    # plus the images whose adversarial label is already right (none: attacks succeeded).
    assert row.recovery <= row.recovery_if_flagged + 1e-12
    assert "recovery if flagged" in rep.table()
    # Baselines recover by the model's runner-up class: recomputed from the cached adversarial images.
    adversarial = torch.load(next(tmp_path.glob("cache/attack-pgd-l2-*.pt")), weights_only=False)
    with torch.no_grad():
        runner_up = digits_model(adversarial["adversarial"]).topk(2, dim=1).indices[:, 1]
    keep = (digits_model(test.images).argmax(1) == test.labels)
    original = test.labels[keep][adversarial["success"]]
    for score in ("max-softmax", "logit-margin", "noise-consistency", "feature-squeezing"):
        base = next(r for r in rep.rows if r.attack == "pgd-l2" and r.score == score)
        assert base.recovery_if_flagged == pytest.approx(float((runner_up == original).double().mean()), abs=1e-12)
        assert 0.0 <= base.recovery <= 1.0
    # A rerun with the same settings reuses every cached attack: no attack runs again.
    calls = []
    spy = {k: (lambda m, x, y, _f=f: calls.append(1) or _f(m, x, y)) for k, f in attacks.items()}
    rep2 = evaluate(digits_model, test.images, test.labels, detector=det, attacks=spy, out_dir=tmp_path,
                    progress=False)
    assert calls == [] and rep2.dataframe().equals(rep.dataframe())
    # Another scale h scores the same cached adversarial images again: no attack runs, the
    # attacks' rows (success, norms, baselines) are unchanged and curvext's rho is not.
    det_h = CurvatureDetector(digits_model, num_directions=4, method="fd2", h=0.5)
    rep3 = evaluate(digits_model, test.images, test.labels, detector=det_h, attacks=spy, out_dir=tmp_path,
                    progress=False)
    assert calls == []
    base = [(r.attack, r.score, r.success_rate, r.median_norm, r.auc) for r in rep.rows
            if r.score not in ("curvext", "combined")]  # combined holds curvext
    assert base == [(r.attack, r.score, r.success_rate, r.median_norm, r.auc) for r in rep3.rows
                    if r.score not in ("curvext", "combined")]
    assert not np.allclose(rep3.rho_perturbed["pgd-l2"], rho_p)
    # The cached probe decision belongs to the orientation rule that made it: a fixed orientation
    # on the same images and h is used as given, not read back from the probe's cache.
    fixed = "lower" if rep.orientation == "higher" else "higher"
    det_fixed = CurvatureDetector(digits_model, num_directions=4, method="fd2", h=0.1, orientation=fixed)
    rep4 = evaluate(digits_model, test.images, test.labels, detector=det_fixed, attacks=spy, out_dir=tmp_path,
                    progress=False)
    assert calls == [] and rep4.orientation == fixed and rep4.settings["recovery"] == "max"
    paths = write_outputs(rep, tmp_path / "out")
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths)


def test_cache_never_serves_another_models_results(digits_model, tmp_path):
    """Two models of the same architecture on the same images (every one of them classified
    correctly by both) share an output folder: the second is attacked and scored anew."""
    test = data.load_digits("test").subset(40)
    other = zoo.build("lenet", "relu", "digits").eval()
    other.load_state_dict(digits_model.state_dict())
    with torch.no_grad():
        other.body[-1].bias += 0.05  # the same predictions, other logits
        assert torch.equal(other(test.images).argmax(1), digits_model(test.images).argmax(1))
    attacks = {"deepfool": attack_suite()["deepfool"]}
    calls = []
    spy = {"deepfool": lambda m, x, y: calls.append(m) or attacks["deepfool"](m, x, y)}
    for model in (digits_model, other, digits_model):
        det = CurvatureDetector(model, num_directions=2, method="fd2", h=0.1, orientation="higher")
        evaluate(model, test.images, test.labels, detector=det, attacks=spy, out_dir=tmp_path,
                 settings={"model": "lenet-relu"}, progress=False)
    assert calls == [digits_model, other]  # the third run reuses the first one's attack
    assert len(list((tmp_path / "cache").glob("attack-deepfool-*.pt"))) == 2
    assert len(list((tmp_path / "cache").glob("scores-deepfool-*.pt"))) == 2


def test_demo_command_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CURVEXT_CACHE", str(tmp_path / "zoo"))
    assert main(["demo", "--out", str(tmp_path / "demo"), "--images", "40", "--adaptive-images", "10",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "| attack | success |" in out and "cw-l2-k5" in out
    for row in ("adaptive-pgd", "adaptive-pgd-all", "adaptive-best-of-r"):  # adaptive rows by default
        assert f"| {row} |" in out
    assert "h chosen from the calibration images by the probe" in out  # --h auto is the default
    assert "calibrated on 150 clean calibration images disjoint from the" in out
    assert "feature squeezing 1-bit depth, 2x2 median" in out
    assert (tmp_path / "demo" / "eval-digits-lenet-relu-roc.png").is_file()


def test_evaluate_command_needs_data_dir_for_mnist(capsys):
    assert main(["evaluate", "--dataset", "mnist"]) == 2
    assert "--data-dir" in capsys.readouterr().err


def test_evaluate_command_compares_scales_on_one_set_of_attacks(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CURVEXT_CACHE", str(tmp_path / "zoo"))
    args = ["evaluate", "--images", "40", "--directions", "4", "--h", "0.1,0.5", "--no-progress",
            "--probe-norm", "linf", "--out", str(tmp_path / "out"), "--attacks", PLAIN]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.count("(PGD-linf probe), recovery by max curvature") == 2
    assert "## curvext by scale" in out and "| lenet-relu | fd2 | 0.1 |" in out and "| lenet-relu | fd2 | 0.5 |" in out
    attacks = sorted(p.name for p in (tmp_path / "out" / "cache").glob("attack-*.pt"))
    assert len(attacks) == 4  # one file per attack, shared by both scales
    assert len(list((tmp_path / "out" / "cache").glob("scores-*.pt"))) == 8
    assert (tmp_path / "out" / "eval-digits-lenet-relu-h0.5-roc.png").is_file()


@pytest.mark.parametrize("option, value", [("--images", "0"), ("--directions", "-1"), ("--classes", "0"),
                                           ("--eps-linf", "0"), ("--eps-l2", "inf"), ("--cw-confidence", "-1")])
def test_evaluate_command_rejects_bad_numbers(option, value, capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", option, value])
    assert option in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["0", "-1", "a", "0.1,,inf", ""])
def test_evaluate_command_rejects_bad_scales(bad, capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--h", bad])
    assert "--h" in capsys.readouterr().err


@pytest.mark.parametrize("option, bad", [("--probe-eps", "0"), ("--probe-eps", "inf"), ("--probe-eps", "x"),
                                         ("--probe-norm", "l1")])
def test_evaluate_command_rejects_bad_probe_settings(option, bad, capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", option, bad])
    assert option in capsys.readouterr().err


def test_evaluate_command_compiles_only_the_exact_method(tmp_path, monkeypatch, capsys):
    import curvext.detection.detector
    from curvext.curvature.quadratic_forms import scored_class_curvature_sums

    built = []

    class Recorded:  # stands in for the compiler: records the request, computes eagerly
        def __init__(self, model, batch_size, classes):
            built.append(model)
            self.model, self.classes = model, classes

        def __call__(self, x, V):
            return scored_class_curvature_sums(self.model, x, V, self.classes)

    monkeypatch.setattr(curvext.detection.detector, "CompiledCurvatureSums", Recorded)
    monkeypatch.setenv("CURVEXT_CACHE", str(tmp_path / "zoo"))
    args = ["evaluate", "--images", "30", "--directions", "2", "--activation", "relu,smooth", "--compile",
            "--no-progress", "--out", str(tmp_path / "out"), "--attacks", "deepfool"]
    assert main(args) == 0
    assert "## lenet-smooth" in capsys.readouterr().out
    assert len(built) == 1  # the smooth model (autograd) only; the ReLU one runs fd2 eagerly


def test_evaluate_command_names_a_missing_cuda_device(capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert main(["evaluate", "--device", "cuda", "--images", "10"]) == 2
    err = capsys.readouterr().err
    assert "--device cuda: CUDA is not available" in err and "Traceback" not in err and err.count("\n") == 1


def _digit_folder(folder, n=30):
    """The first n digits test images as 8x8 greyscale PNG files (to 8 bits)."""
    from PIL import Image

    folder.mkdir()
    images = data.load_digits("test").images[:n]
    for i, img in enumerate(images):
        Image.fromarray((img[0].numpy() * 255).round().astype(np.uint8)).save(folder / f"{i:03d}.png")
    return images


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit's deprecation notices
def test_evaluate_command_on_an_image_folder_with_a_normalised_checkpoint(digits_model, tmp_path, capsys):
    """A folder of unlabelled images and a user's TorchScript model that expects normalised
    inputs: labels are the model's own predictions, --normalize puts the statistics in front."""
    x = _digit_folder(tmp_path / "images")

    class ExpectsNormalised(torch.nn.Module):  # the user's model: inputs (x - 0.5) / 0.25
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, z):
            return self.model(z * 0.25 + 0.5)

    user = ExpectsNormalised(digits_model).eval()
    ckpt = tmp_path / "user.pt"
    torch.jit.save(torch.jit.trace(user.eval(), torch.rand(2, 1, 8, 8)), str(ckpt))
    args = ["evaluate", "--dataset", "folder", "--data-dir", str(tmp_path / "images"), "--checkpoint", str(ckpt),
            "--normalize", "0.5/0.25", "--image-size", "8", "--channels", "1", "--directions", "2", "--h", "0.1",
            "--orientation", "higher", "--no-progress", "--out", str(tmp_path / "out"), "--attacks", PLAIN,
            "--calibration-images", "0"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "30 correctly classified images" in out  # every image is 'correct' by its own prediction
    assert "| deepfool |" in out and (tmp_path / "out" / "eval-folder-checkpoint-roc.png").is_file()
    # The same run through the Python API on the same model and images gives the same table.
    from curvext.data.normalization import Normalized

    model = Normalized(zoo.load_checkpoint(ckpt), (0.5,), (0.25,)).eval()
    images = data.load_image_folder(tmp_path / "images", size=8, channels=1).images
    torch.testing.assert_close(images, x, rtol=0, atol=1 / 255)  # 8-bit PNG round trip
    det = CurvatureDetector(model, num_directions=2, method="fd2", h=0.1, orientation="higher")
    with torch.no_grad():
        labels = model(images).argmax(1)
    rep = evaluate(model, images, labels, detector=det, attacks=attack_suite(include=PLAIN.split(",")),
                   progress=False, squeezer=zoo_squeezer())
    assert rep.summary().splitlines()[4] in out  # the deepfool row of the AUC table


def test_evaluate_command_folder_needs_a_checkpoint(tmp_path, capsys):
    _digit_folder(tmp_path / "images", n=2)
    assert main(["evaluate", "--dataset", "folder", "--data-dir", str(tmp_path / "images")]) == 2
    assert "--checkpoint" in capsys.readouterr().err


def test_evaluate_command_sums_over_ten_classes_of_a_many_class_model(digits_model, tmp_path, capsys):
    """A 200-class model (the digits LeNet padded with 190 hopeless classes) is scored over its
    top 10 competing classes unless --classes says otherwise."""

    class ManyClasses(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = digits_model

        def forward(self, x):
            logits = self.model(x)
            return torch.cat([logits, logits.new_full((x.shape[0], 190), -1e3)], dim=1)

    ckpt = tmp_path / "many.pt2"
    batch = torch.export.Dim("batch", min=1)
    torch.export.save(torch.export.export(ManyClasses().eval(), (torch.rand(2, 1, 8, 8),),
                                          dynamic_shapes=({0: batch},)), str(ckpt))
    args = ["evaluate", "--checkpoint", str(ckpt), "--images", "12", "--directions", "2", "--h", "0.1",
            "--orientation", "higher", "--no-progress", "--out", str(tmp_path / "out"), "--attacks", "deepfool",
            "--calibration-images", "0"]
    assert main(args) == 0
    assert "200 classes; curvature summed over the top 10 competing classes" in capsys.readouterr().err
    scores = [torch.load(p, weights_only=False) for p in (tmp_path / "out" / "cache").glob("clean-*.pt")]
    assert [s["per_class"].shape[1] for s in scores] == [200] and scores[0]["competitors"].shape[1] == 10


def test_disjoint_calibration_split_and_adaptive_rows(digits_model, tmp_path, monkeypatch):
    """Scale, orientation and thresholds come from the calibration images only; the adaptive rows
    have the columns of the plain ones, and their cache depends on the detector they evade."""
    from curvext.detection import metrics

    test = data.load_digits("test")
    x, y, cal = test.images[:30], test.labels[:30], test.images[300:340]
    seen = []
    real = CurvatureDetector.resolve_orientation
    monkeypatch.setattr(CurvatureDetector, "resolve_orientation",
                        lambda self, xc, rho: seen.append(xc) or real(self, xc, rho))
    attacks = attack_suite(include=("pgd-l2", "adaptive-pgd", "adaptive-best-of-r"), pgd_steps=5, restarts=2,
                           adaptive_images=8)
    det = CurvatureDetector(digits_model, num_directions=4, method="fd2")
    rep = evaluate(digits_model, x, y, detector=det, attacks=attacks, out_dir=tmp_path, progress=False,
                   calibration_images=cal, scales=(0.05, 0.1))
    assert len(seen) == 1 and torch.equal(seen[0], cal)  # the probe saw the calibration images only
    assert rep.calibration_disjoint and rep.n_calibration == 40
    assert "40 clean calibration images disjoint" in rep.header()
    assert rep.scale_choice.n_clean == 40
    cal_rho = torch.load(next(tmp_path.glob("cache/calibration-*.pt")), weights_only=False)["rho"].numpy()
    sign = 1.0 if rep.orientation == "higher" else -1.0
    t = metrics.calibrate_threshold(sign * cal_rho, 0.05)
    assert det.threshold == pytest.approx(sign * t) and det.orientation == rep.orientation and det.recovery == "max"
    row = next(r for r in rep.rows if r.attack == "pgd-l2" and r.score == "curvext")
    assert row.tpr_calibrated == pytest.approx(float(np.mean(sign * rep.rho_perturbed["pgd-l2"] >= t)), abs=1e-12)
    assert rep.clean_fpr["curvext"] == pytest.approx(float(np.mean(sign * rep.rho_clean >= t)), abs=1e-12)
    benign_rho = torch.load(next(tmp_path.glob("cache/benign-*.pt")), weights_only=False)["rho"].numpy()
    assert benign_rho.shape == (40,)  # the calibration images, with benign noise
    assert rep.benign_fpr["curvext"] == pytest.approx(float(np.mean(sign * benign_rho >= t)), abs=1e-12)
    assert "| clean + benign noise (sigma 1/255) | 40 |" in rep.summary()
    adaptive = [r for r in rep.rows if r.attack.startswith("adaptive")]
    assert {r.score for r in adaptive} == set(SCORES) and {r.attack for r in adaptive} == {
        "adaptive-pgd", "adaptive-best-of-r"}
    success = torch.load(next(tmp_path.glob("cache/attack-adaptive-pgd-*.pt")), weights_only=False)["success"]
    assert success.shape == (8,)  # adaptive_images: the first 8 evaluated images
    assert "| adaptive-pgd |" in rep.summary() and "| adaptive-best-of-r |" in rep.summary()
    # Another detector (T) evades differently: the adaptive attacks run again, the plain one does not.
    det2 = CurvatureDetector(digits_model, num_directions=2, method="fd2")
    evaluate(digits_model, x, y, detector=det2, attacks=attacks, out_dir=tmp_path, progress=False,
             calibration_images=cal, scales=(0.05, 0.1))
    assert len(list(tmp_path.glob("cache/attack-pgd-l2-*.pt"))) == 1
    assert len(list(tmp_path.glob("cache/attack-adaptive-pgd-*.pt"))) == 2


def test_attacks_run_batch_by_batch_and_the_bar_counts_every_image(digits_model, tmp_path, monkeypatch):
    """The attack bar moves per batch of ``ATTACK_BATCH`` images, also when the attacks come from
    the cache, and reaches its total: every evaluated image of every attack row."""
    from curvext.evaluation import protocol

    class Bar:
        def __init__(self, *args, total=None, enabled=None, **kwargs):
            self.total, self.updates = total, []
            bars.append(self)

        def update(self, n=1):
            self.updates.append(n)

        def set_postfix_str(self, text):
            pass

        def close(self):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

    bars, sizes = [], []
    monkeypatch.setattr(protocol, "progress_bar", Bar)
    monkeypatch.setattr(protocol, "ATTACK_BATCH", 4)
    pgd_l2 = attack_suite(include=("pgd-l2",), pgd_steps=3)["pgd-l2"]
    attacks = {"pgd-l2": lambda model, x, y: sizes.append(x.shape[0]) or pgd_l2(model, x, y)}
    test = data.load_digits("test").subset(10)
    det = CurvatureDetector(digits_model, num_directions=2, method="fd2", h=0.1)
    rep = evaluate(digits_model, test.images, test.labels, detector=det, attacks=attacks, out_dir=tmp_path)
    n = rep.n_clean
    assert sizes == [4] * (n // 4) + ([n % 4] if n % 4 else [])
    assert bars[0].total == n and bars[0].updates == sizes + [0]  # the last 0: nothing read from the cache
    success = torch.load(next(tmp_path.glob("cache/attack-pgd-l2-*.pt")), weights_only=False)["success"]
    assert success.shape == (n,)
    evaluate(digits_model, test.images, test.labels, detector=det, attacks=attacks, out_dir=tmp_path)
    assert len(sizes) == len(bars[0].updates) - 1 and bars[1].updates == [n]  # all of it from the cache



def test_attacks_in_batches_equal_one_call_for_a_deterministic_attack(digits_model, monkeypatch):
    """DeepFool draws nothing at random: batch by batch, the cached success, norms and successful
    adversarial images are those of one call on all images, in the same order."""
    from curvext.adversarial.attacks import deepfool
    from curvext.evaluation import protocol

    monkeypatch.setattr(protocol, "ATTACK_BATCH", 3)
    x = data.load_digits("test").images[:10]
    with torch.no_grad():
        y = digits_model(x).argmax(1)
    whole = deepfool(digits_model, x, y)
    batched = protocol._attack_in_batches(deepfool, digits_model, x, y, protocol.progress_bar(enabled=False), [0])
    assert torch.equal(batched["success"], whole.success.cpu())
    # float32 kernels may pick other blockings for other batch sizes: rounding only (a few ulp)
    torch.testing.assert_close(batched["norms"], whole.norms.double(), rtol=1e-5, atol=0)
    torch.testing.assert_close(batched["adversarial"], whole.adversarial[whole.success], rtol=1e-5, atol=1e-6)
