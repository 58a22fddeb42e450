"""The lean inference path against the training definition: numpy preprocessing vs the MONAI transforms, the
ONNX graph vs eager MONAI UNets, and whole ``Segmenter`` results vs the MONAI + eager torch pipeline."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.networks.nets import UNet

from monaiunetseg.model.bundle import load_networks, read_spec
from monaiunetseg.model.fast_preprocess import GridPlan, model_grid_volume, neighbour_slices
from monaiunetseg.model.onnx_backend import OnnxRunner
from monaiunetseg.model.postprocess import PostProcessing
from monaiunetseg.model.predictor import Segmenter
from monaiunetseg.model.state_dict import StateDictError, read_state_dict
from monaiunetseg.model.torch_backend import SliceBatchInferer
from monaiunetseg.model.transforms import preprocessing
from monaiunetseg.model.unet_graph import UnsupportedNetwork, ensemble_graph

from conftest import BUNDLE_DIR, SAMPLE_FLAIR
from segment_data import dice, flipped, permuted, upsampled_in_plane

SHIPPED = BUNDLE_DIR / "models" / "model.pt"


def _rotated_z(array: np.ndarray, affine: np.ndarray, degrees: float) -> tuple[np.ndarray, np.ndarray]:
    """Same voxels, the grid turned about the slice axis: an oblique affine whose nearest axes are the original's."""
    a = np.deg2rad(degrees)
    rot = np.eye(4)
    rot[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    return array, rot @ affine


@pytest.fixture(scope="module")
def sample() -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(SAMPLE_FLAIR)
    return np.asarray(img.dataobj)[:, :, 14:24].astype(np.float32), img.affine


def _variants(array: np.ndarray, affine: np.ndarray) -> dict:
    return {
        "axial": (array, affine),
        "sagittal": permuted(array, affine, (1, 2, 0)),
        "permuted_flipped": flipped(*permuted(array, affine, (2, 0, 1)), (1,)),
        "flipped": flipped(array, affine, (0, 1, 2)),
        "fine512": upsampled_in_plane(array, affine, 2),  # shrunk to 256: MONAI's anti-aliasing Gaussian
        "rectangular": (np.ascontiguousarray(array[30:230]), affine),  # padded to a square FOV, not resized
        "coarse128": (np.ascontiguousarray(array[::2, ::2]), affine @ np.diag([2.0, 2.0, 1.0, 1.0])),  # enlarged
        "rect_fine": upsampled_in_plane(np.ascontiguousarray(array[30:230]), affine, 2),  # padded, then shrunk
        "oblique": _rotated_z(array, affine, 20.0),
    }


def _monai(array: np.ndarray, affine: np.ndarray, normalisation: str = "tissue"):
    """(the MONAI preprocessing, its output): the inverse must be taken with the same instance."""
    pre = preprocessing(["image"], normalisation=normalisation)
    image = MetaTensor(torch.from_numpy(np.ascontiguousarray(array[None], dtype=np.float32)),
                       affine=torch.as_tensor(affine, dtype=torch.float64))
    return pre, pre({"image": image})["image"]


@pytest.mark.parametrize("name", list(_variants(np.zeros((4, 4, 4)), np.eye(4))))
def test_numpy_preprocessing_equals_the_monai_transforms(sample, name):
    """Forward (orientation, square padding, resize with anti-aliasing, intensity normalisation) and inverse."""
    array, affine = _variants(*sample)[name]
    pre, ref = _monai(array, affine)
    plan = GridPlan.of(array.shape, affine)
    mine = model_grid_volume(array[None], plan)
    expected = ref.as_tensor().numpy()[0].transpose(2, 0, 1)  # (D, H, W)
    assert mine.shape == (expected.shape[0], 1, 256, 256) and mine.dtype == np.float32
    np.testing.assert_allclose(mine[:, 0], expected, rtol=0, atol=2e-5)

    prob = np.random.default_rng(0).random(expected.shape, dtype=np.float32)
    pred = MetaTensor(torch.from_numpy(prob.transpose(1, 2, 0)[None].copy()), affine=ref.affine,
                      applied_operations=ref.applied_operations)
    back = pre.inverse({"image": pred})["image"].as_tensor().numpy()[0]
    out = np.full(array.shape, np.nan, dtype=np.float32)
    plan.orient(out)[...] = plan.from_model(prob).transpose(1, 2, 0)
    assert back.shape == array.shape and not np.isnan(out).any()
    np.testing.assert_allclose(out, back, rtol=0, atol=2e-6)


def test_channels_are_scaled_each_and_stacked_as_in_training(sample):
    array, affine = sample
    two = np.stack([array, array * 3.0 + 7.0])
    volume = model_grid_volume(two, GridPlan.of(array.shape, affine))
    np.testing.assert_allclose(volume[:, 0], volume[:, 1], atol=1e-5)  # channel-wise percentiles
    stacks = neighbour_slices(volume, 0, 3, context=1)
    assert stacks.shape == (3, 6, 256, 256)
    ref = SliceBatchInferer(context=1).slices(torch.from_numpy(volume.transpose(1, 2, 3, 0).copy()), 0, 3).numpy()
    np.testing.assert_array_equal(stacks, ref)


# ------------------------------------------------------------------------------------------------ the graph


def _random_unet(args: dict, seed: int) -> UNet:
    """A MONAI UNet with random weights and batch-norm statistics (so the folding is really exercised)."""
    torch.manual_seed(seed)
    net = UNet(**args)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
            if isinstance(m, torch.nn.PReLU):
                m.weight.uniform_(0.05, 0.4)
    return net.eval()


def _softmax_fg(nets, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return np.mean([torch.softmax(n(torch.from_numpy(x)), 1)[:, 1].numpy() for n in nets], axis=0)


def _run_graph(graph: bytes, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(graph, providers=["CPUExecutionProvider"]).run(None, {"image": x})[0][:, 0]


BASE = {"spatial_dims": 2, "in_channels": 1, "out_channels": 2, "channels": [4, 8, 16], "strides": [2, 2],
        "num_res_units": 2, "norm": "batch"}


@pytest.mark.parametrize("changes", [
    {},
    {"num_res_units": 0},
    {"num_res_units": 1, "strides": [2, 1]},  # a stride-1 transposed convolution
    {"in_channels": 3, "out_channels": 3, "channels": [4, 8, 16, 32], "strides": [2, 2, 2]},  # 2.5D, softmax of 3
])
def test_graph_equals_eager_monai_unet(changes, tmp_path: Path):
    args = {**BASE, **changes}
    nets = [_random_unet(args, seed) for seed in (1, 2)]
    for i, net in enumerate(nets):
        torch.save(net.state_dict(), tmp_path / f"m{i}.pt")
    states = [read_state_dict(tmp_path / f"m{i}.pt") for i in range(2)]
    x = np.random.default_rng(3).normal(0.3, 0.4, (3, args["in_channels"], 32, 48)).astype(np.float32)
    np.testing.assert_allclose(_run_graph(ensemble_graph(args, states[:1]), x), _softmax_fg(nets[:1], x), atol=2e-5)
    np.testing.assert_allclose(_run_graph(ensemble_graph(args, states), x), _softmax_fg(nets, x), atol=2e-5)


def test_shipped_weights_on_real_slices_and_valid_onnx(sample):
    spec = read_spec(BUNDLE_DIR)
    array, affine = sample
    x = model_grid_volume(array[None], GridPlan.of(array.shape, affine))[:6]
    runner = OnnxRunner(spec.network_args, [SHIPPED])
    expected = _softmax_fg(load_networks(spec, [SHIPPED]), x)
    np.testing.assert_allclose(runner.foreground(x), expected, atol=1e-5)
    assert runner.session.get_modelmeta().custom_metadata_map["weights_0"].startswith("model.pt sha256:")
    onnx = pytest.importorskip("onnx")  # the hand-written protobuf is a valid ONNX model
    onnx.checker.check_model(onnx.load_model_from_string(runner.graph), full_check=True)


def test_unsupported_networks_and_weights_are_refused(tmp_path: Path):
    spec = read_spec(BUNDLE_DIR)
    state = read_state_dict(SHIPPED)
    for bad in ({"norm": "instance"}, {"act": "relu"}, {"dropout": 0.1}, {"spatial_dims": 3}):
        with pytest.raises(UnsupportedNetwork):
            ensemble_graph({**spec.network_args, **bad}, [state])
    with pytest.raises(UnsupportedNetwork, match="shape"):
        ensemble_graph({**spec.network_args, "channels": [12, 24, 48, 96, 128]}, [state])
    with pytest.raises(UnsupportedNetwork, match="does not use"):
        ensemble_graph(spec.network_args, [{**state, "extra.weight": np.zeros(3, np.float32)}])
    torch.save({"model": torch.nn.Linear(2, 2)}, tmp_path / "pickled_module.pt")  # code, not a state_dict
    with pytest.raises(StateDictError, match="refusing to load"):
        read_state_dict(tmp_path / "pickled_module.pt")
    (tmp_path / "garbage.pt").write_bytes(b"\0" * 64)
    with pytest.raises(StateDictError):
        read_state_dict(tmp_path / "garbage.pt")


# ------------------------------------------------------------------------------------------------ Segmenter


def reference_probabilities(array: np.ndarray, affine: np.ndarray, nets, flip_tta: bool = False,
                            normalisation: str = "percentile") -> np.ndarray:
    """The previous inference path: MONAI transforms, eager torch over slice batches, MONAI's inverse (with the
    normalisation the weights were trained on: the shipped ones', ``percentile``)."""
    pre = preprocessing(["image"], normalisation=normalisation)
    image = MetaTensor(torch.from_numpy(np.ascontiguousarray(array[None], dtype=np.float32)),
                       affine=torch.as_tensor(affine, dtype=torch.float64))
    data = pre({"image": image})

    def foreground(x: torch.Tensor) -> torch.Tensor:  # mean softmax foreground over members and flips
        views = [x, torch.flip(x, dims=(-2,))] if flip_tta else [x]
        probs = [torch.softmax(net(v), dim=1)[:, 1:2] for net in nets for v in views]
        if flip_tta:
            probs = [p if i % 2 == 0 else torch.flip(p, dims=(-2,)) for i, p in enumerate(probs)]
        return torch.stack(probs).mean(0)

    with torch.inference_mode():
        prob = SliceBatchInferer(batch_size=32)(data["image"].as_tensor()[None], foreground)[0]
    pred = MetaTensor(prob, affine=data["image"].affine, applied_operations=data["image"].applied_operations)
    return pre.inverse({"image": pred})["image"].as_tensor()[0].numpy()


@pytest.mark.parametrize("name", ["axial", "sagittal", "fine512", "rect_fine"])
def test_segmenter_matches_the_monai_and_torch_pipeline(segmenter, sample, name):
    assert segmenter.backend == "onnx", segmenter.backend_note
    array, affine = _variants(*sample)[name]
    expected = reference_probabilities(array, affine, load_networks(segmenter.spec, segmenter.weights),
                                       normalisation=segmenter.spec.normalisation)
    prob = segmenter.probabilities(array, affine)
    assert prob.shape == array.shape and prob.dtype == np.float32
    assert np.abs(prob - expected).max() < 1e-4
    labels = segmenter.segment(array, affine)
    assert labels.dtype == np.uint8 and labels.shape == array.shape
    assert labels.any() and dice(labels, expected > 0.5) >= 0.999


def test_onnx_and_torch_backends_agree_with_ensemble_and_flips(sample, tmp_path: Path):
    state = torch.load(SHIPPED, weights_only=True)
    state = {k: v.clone() for k, v in state.items()}
    state["model.2.1.conv.unit0.conv.bias"] += torch.tensor([-1.5, 1.5])  # a bolder member
    torch.save(state, tmp_path / "bold.pt")
    array, affine = sample
    kwargs = {"device": "cpu", "weights": [SHIPPED, tmp_path / "bold.pt"], "flip_tta": True}
    fast, eager = Segmenter(backend="onnx", **kwargs), Segmenter(backend="torch", **kwargs)
    assert (fast.backend, eager.backend) == ("onnx", "torch")
    np.testing.assert_allclose(fast.probabilities(array, affine), eager.probabilities(array, affine), atol=1e-5)
    expected = reference_probabilities(array, affine, load_networks(eager.spec, eager.weights), flip_tta=True,
                                       normalisation=eager.spec.normalisation)
    np.testing.assert_allclose(fast.probabilities(array, affine), expected, atol=1e-4)


def test_auto_backend_falls_back_to_torch_for_weights_it_cannot_read(tmp_path: Path):
    legacy = tmp_path / "legacy.pt"  # the pre-zip torch format: torch reads it, the lean reader does not
    torch.save(torch.load(SHIPPED, weights_only=True), legacy, _use_new_zipfile_serialization=False)
    segmenter = Segmenter(device="cpu", weights=legacy)
    assert segmenter.backend == "torch" and "StateDictError" in segmenter.backend_note
    with pytest.raises(StateDictError):
        Segmenter(device="cpu", weights=legacy, backend="onnx")


def test_min_mean_prob_on_a_uint8_probability_map():
    mask = np.zeros((20, 20, 6), np.uint8)
    mask[2:6, 2:6, 1:3] = 1
    mask[12:18, 12:18, 2:5] = 1
    prob = np.where(mask, 0.9, 0.1).astype(np.float32)
    prob[2:6, 2:6, 1:3] = 0.62
    pp = PostProcessing(min_mean_prob=0.7)
    kept = pp(mask, prob)
    assert kept[14, 14, 3] and not kept[3, 3, 1]
    np.testing.assert_array_equal(pp(mask, np.rint(prob * 255).astype(np.uint8), prob_scale=255.0), kept)


def test_cli_imports_no_torch_monai_ignite_scipy_signal_or_matplotlib(tmp_path: Path):
    code = (
        "import sys\n"
        "from monaiunetseg.cli import main\n"
        "import monaiunetseg.batch.run, monaiunetseg.batch.single\n"
        f"rc = main(['segment', {str(SAMPLE_FLAIR)!r}, '-o', {str(tmp_path / 'out')!r}, '--quiet', '--device', 'cpu'])\n"
        "heavy = [m for m in ('torch', 'monai', 'ignite', 'scipy.signal', 'matplotlib', 'onnx') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
        "sys.exit(rc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout, proc.stdout
    assert (tmp_path / "out" / "TCGA_DU_A5TR_19970726_flair_seg.nii.gz").is_file()


# This process's own peak RSS: VmHWM, not ru_maxrss, which Linux carries over from the forking parent (pytest).
PEAK_KB = ("def peak_kb():\n"
           "    for line in open('/proc/self/status'):\n"
           "        if line.startswith('VmHWM:'):\n"
           "            return int(line.split()[1])\n")


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux /proc for the process's own peak RSS")
def test_peak_rss_of_a_512x512x200_volume(tmp_path: Path):
    """Issue 13's memory target (< 1 GiB for a 512 x 512 x 200 int16 volume), as a whole CLI process."""
    img = nib.load(SAMPLE_FLAIR)
    fine, affine = upsampled_in_plane(np.asarray(img.dataobj).astype(np.int16), img.affine, 2)
    big = np.ascontiguousarray(np.tile(fine, (1, 1, 6))[:, :, :200])
    path = tmp_path / "big.nii"  # uncompressed: quick to write
    nib.save(nib.Nifti1Image(big, affine), path)
    del fine, big
    code = (
        "import sys\n"
        "from monaiunetseg.cli import main\n"
        f"{PEAK_KB}"
        f"rc = main(['segment', {str(path)!r}, '-o', {str(tmp_path / 'out')!r}, '--quiet', '--device', 'cpu'])\n"
        "print('PEAK_KB', peak_kb())\n"
        "sys.exit(rc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    peak_mb = int(proc.stdout.split("PEAK_KB")[1].split()[0]) / 1024
    assert peak_mb < 1024, f"peak RSS {peak_mb:.0f} MB"
    seg = nib.load(tmp_path / "out" / "big_seg.nii.gz")
    assert seg.shape == (512, 512, 200) and np.array_equal(seg.affine, nib.load(path).affine)


@pytest.mark.parametrize("fill", [-1e6, -np.finfo(np.float32).max])
def test_fill_value_background_is_replaced_alike_in_both_paths(sample, segmenter, fill):
    """Issue 22.6: a background of -1e6 (or -FLT_MAX) in place of 0 collapsed the percentile scaling: ok, 0 mL.
    The fill is replaced by the lowest real intensity, the same way in the numpy path and the MONAI transforms,
    and the labelmap is the one of the 0 background; normal images are left exactly as they were."""
    from monaiunetseg.model.fast_preprocess import fill_value

    array, affine = sample
    for variant in _variants(array, affine).values():
        assert fill_value(variant[0]) is None  # normal images: no fill found, nothing changes
    assert (array == 0).mean() > 0.05
    filled = np.where(array == 0, np.float32(fill), array).astype(np.float32)
    assert fill_value(filled) == (pytest.approx(fill), float(array[array > 0].min()))
    _, ref = _monai(filled, affine)
    mine = model_grid_volume(filled[None], GridPlan.of(filled.shape, affine))
    np.testing.assert_allclose(mine[:, 0], ref.as_tensor().numpy()[0].transpose(2, 0, 1), rtol=0, atol=2e-5)
    assert np.abs(mine).max() < 100  # no overflow, no squeezed brain
    plain = segmenter.segment(array, affine)
    labels = segmenter.segment(filled, affine)
    assert plain.sum() > 100 and dice(labels, plain) > 0.98


@pytest.mark.parametrize("n, bound_mib", [(4096, 48), (16384, 256)])
def test_plan_of_an_absurdly_long_axis_stays_small(n: int, bound_mib: int):
    """Issue 22.10: a 16384x2x2 NIfTI (101 KB) ran for over 15 min at 4.3 GB: the anti-aliasing was an n x n float64
    matrix built from its diagonals. Now the plan's memory grows with n only (MODEL_GRID x n matrices)."""
    import tracemalloc

    tracemalloc.start()
    try:
        plan = GridPlan.of((n, 2, 2), np.diag([-1.0, -1.0, 1.0, 1.0]))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < bound_mib * 2**20, f"{peak / 2**20:.0f} MiB"
    assert plan.forward[0].shape == (256, n) or plan.forward[1].shape == (256, n)
    volume = model_grid_volume(np.ones((1, n, 2, 2), dtype=np.int16), plan)
    assert volume.shape == (2, 1, 256, 256) and np.isfinite(volume).all()


@pytest.mark.parametrize("normalisation", ["tissue", "percentile"])
def test_both_normalisations_are_the_same_in_numpy_and_in_the_monai_transforms(sample, normalisation):
    array, affine = _variants(*sample)["sagittal"]
    _, ref = _monai(array, affine, normalisation)
    mine = model_grid_volume(array[None], GridPlan.of(array.shape, affine), normalisation=normalisation)
    np.testing.assert_allclose(mine[:, 0], ref.as_tensor().numpy()[0].transpose(2, 0, 1), rtol=0, atol=2e-5)
