"""Attention-gate maps (``attention-gates``) checked against hand-set gates.

A MONAI ``AttentionBlock`` computes its coefficients as
``psi = Sigmoid(BatchNorm(Conv1x1(relu(W_g g + W_x x))))``. With the 1x1
convolution's weights set to 0 and its bias to b, and a fresh BatchNorm in eval
mode (running mean 0, variance 1, weight 1, bias 0, eps 1e-5), every
coefficient is sigmoid(b / sqrt(1 + 1e-5)), whatever the input.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from model_factory import ThreeChannels, nifti, run_cli
from torch import nn

from napari_xai.core.errors import UserError
from napari_xai.core.explain import explain
from napari_xai.core.models import LoadedModel, ModelSpec
from napari_xai.core.methods.registry import RunContext
from napari_xai.core.methods.catalogue import get_method
from napari_xai.core.volumes import Volume

EPS = 1e-5
KWARGS = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [2, 4, 8], "strides": [2, 2]}
OUTER, INNER = "model.1.attention.psi", "model.1.submodule.1.attention.psi"  # 16^3 and 8^3 gates on a 16^3 input


def coefficient(b: float) -> float:
    """The hand-computed coefficient of a gate whose psi convolution has weight 0 and bias b."""
    return 1.0 / (1.0 + math.exp(-b / math.sqrt(1.0 + EPS)))


def set_gate(block, b: float) -> None:
    conv = block.psi[0].conv
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.fill_(b)


def attention_unet(seed=0, gates=(None, None)):
    from monai.networks.nets import AttentionUnet

    torch.manual_seed(seed)
    net = AttentionUnet(**KWARGS).eval()
    for block, b in zip((net.model[1].attention, net.model[1].submodule[1].attention), gates):
        if b is not None:
            set_gate(block, b)
    return net


def run(model, x, target=0, **params):
    m = get_method("attention-gates")
    return m.fn(model, x, target, m.parse(params), RunContext())


def loaded(net):
    return LoadedModel(module=net.eval(), spec=ModelSpec(channels=1), source="test", kind="python",
                       sha256="0" * 64, device=torch.device("cpu"), is_scripted=False)


def test_a_hand_set_gate_gives_a_constant_sigmoid_b_map_on_the_input_grid():
    from monai.networks.nets.attentionunet import AttentionBlock

    net = attention_unet(gates=(0.7, 0.7))
    x = torch.randn(1, 1, 16, 16, 16)
    out = run(net, x)
    assert out.relevance.shape == (1, 1, 16, 16, 16)
    torch.testing.assert_close(out.relevance, torch.full_like(out.relevance, coefficient(0.7)), rtol=0, atol=1e-6)
    assert out.used["gates"] == [OUTER, INNER]  # found by type, outermost first
    assert out.used["gate_shapes"] == {OUTER: [16, 16, 16], INNER: [8, 8, 8]}
    assert out.used["target_independent"] is True
    # one bare AttentionBlock (the gate alone) named with layer=
    block = AttentionBlock(spatial_dims=3, f_int=2, f_g=3, f_l=3).eval()
    set_gate(block, -1.5)

    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.gate = block

        def forward(self, x):
            return self.gate(g=x, x=x)

    one = run(Wrap(), torch.randn(1, 3, 6, 6, 6), layer="gate.psi")
    assert one.relevance.shape == (1, 3, 6, 6, 6)  # one map for all channels
    torch.testing.assert_close(one.relevance, torch.full_like(one.relevance, coefficient(-1.5)), rtol=0, atol=1e-6)
    assert "intermediate" not in one.used["_arrays"]  # a single gate: no extra maps


@pytest.mark.parametrize("combine", ["mean", "max", "product"])
def test_b_two_hand_set_gates_combine_as_computed_by_hand(combine):
    s1, s2 = coefficient(1.0), coefficient(-0.5)
    want = {"mean": (s1 + s2) / 2, "max": max(s1, s2), "product": s1 * s2}[combine]
    out = run(attention_unet(gates=(1.0, -0.5)), torch.randn(1, 1, 16, 16, 16), combine=combine)
    assert float(out.relevance.min()) == pytest.approx(want, abs=1e-6)
    assert float(out.relevance.max()) == pytest.approx(want, abs=1e-6)
    extra = out.used["_arrays"]["intermediate"]  # each gate on the input grid (napari: one layer per gate)
    assert sorted(extra) == sorted([OUTER, INNER])
    assert extra[OUTER].shape == extra[INNER].shape == (16, 16, 16)
    np.testing.assert_allclose(extra[OUTER], s1, atol=1e-6)
    np.testing.assert_allclose(extra[INNER], s2, atol=1e-6)
    assert out.used["gate_means"][INNER] == pytest.approx(s2, abs=1e-6)


def test_c_models_without_gates_and_bad_layers_give_one_line_errors():
    x = torch.rand(1, 1, 6, 6, 6)
    with pytest.raises(UserError) as err:
        run(ThreeChannels(), x)
    msg = str(err.value)
    assert "\n" not in msg
    assert "this model has no attention gates (modules of type AttentionBlock); pick one with layer=NAME" in msg
    assert msg.endswith("or use another method.")

    net = attention_unet(gates=(0.3, 0.3))
    x16 = torch.randn(1, 1, 16, 16, 16)
    for layer, why in (("model.9", "does not exist"), ("model.1.attention", r"output shape \(1, 2, 16, 16, 16\)")):
        with pytest.raises(UserError, match=why) as err:
            run(net, x16, layer=layer)
        assert "\n" not in str(err.value) and OUTER in str(err.value) and INNER in str(err.value)

    class SigmoidMap(nn.Module):  # no gate, but a single-channel map in [0, 1] that layer= may name
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv3d(1, 1, 1)
            self.sig = nn.Sigmoid()
            self.fc = nn.Linear(1, 2)

        def forward(self, x):
            return self.fc(self.sig(self.conv(x)).mean(dim=(2, 3, 4)))

    model = SigmoidMap()
    with torch.no_grad():
        model.conv.weight.fill_(0.0)
        model.conv.bias.fill_(2.0)
    with pytest.raises(UserError, match=r"layer=NAME \(single-channel maps in \[0, 1\] here: sig\)"):
        run(model, x)
    torch.testing.assert_close(run(model, x, layer="sig").relevance, torch.full((1, 1, 6, 6, 6), 1 / (1 + math.exp(-2.0))))


def test_d_explain_segmentation_path_maps_on_the_volume_grid_independent_of_target():
    net = attention_unet(seed=1)
    rng = np.random.default_rng(0)
    vol = Volume(data=rng.normal(size=(1, 16, 16, 16)).astype(np.float32), affine=np.diag([2.0, 2.0, 2.0, 1.0]), name="v")
    mask = np.zeros((16, 16, 16), bool)
    mask[4:10, 4:10, 4:10] = True
    rels = [explain(vol, loaded(net), "attention-gates", target=t, segmentation=True, mask=mask) for t in (0, 1)]
    rel = rels[0]
    assert rel.data.shape == (1, 16, 16, 16)
    assert 0.0 <= rel.data.min() <= rel.data.max() <= 1.0 and rel.data.std() > 0
    np.testing.assert_array_equal(rels[0].data, rels[1].data)  # the coefficients ignore the target class
    assert sorted(rel.intermediate) == sorted([OUTER, INNER])
    assert rel.provenance["params"]["target_independent"] is True and rel.provenance["segmentation"]
    # on a grid the model does not share, the coefficients are interpolated, not rescaled like relevance
    const = attention_unet(seed=1, gates=(0.4, 0.4))
    big = Volume(data=rng.normal(size=(1, 20, 20, 20)).astype(np.float32), affine=np.eye(4), name="big")
    moved = explain(big, loaded(const), "attention-gates", segmentation=True, mask=np.ones((20, 20, 20), bool),
                    target=1, input_shape=(16, 16, 16), params={"combine": "max"})
    assert moved.provenance["grid"]["resampled"] is True
    np.testing.assert_allclose(moved.data, coefficient(0.4), atol=1e-6)
    np.testing.assert_allclose(moved.intermediate[INNER], coefficient(0.4), atol=1e-6)


def test_d_explain_classifier_with_a_gate():
    from monai.networks.nets.attentionunet import AttentionBlock

    class GatedClassifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv3d(1, 2, 3, padding=1)
            self.gate = AttentionBlock(spatial_dims=3, f_int=2, f_g=2, f_l=2)
            self.fc = nn.Linear(2, 3)

        def forward(self, x):
            f = self.conv(x)
            return self.fc(self.gate(g=f, x=f).mean(dim=(2, 3, 4)))

    torch.manual_seed(0)
    net = GatedClassifier().eval()
    set_gate(net.gate, 0.25)
    vol = Volume(data=np.random.default_rng(1).normal(size=(1, 8, 8, 8)).astype(np.float32), affine=np.eye(4), name="v")
    rel = explain(vol, loaded(net), "attention-gates", target=2)
    np.testing.assert_allclose(rel.data, coefficient(0.25), atol=1e-6)
    assert rel.provenance["params"]["gates"] == ["gate.psi"] and rel.target == 2


def attention_bundle(folder, gates):
    """A MONAI bundle folder holding an AttentionUnet with hand-set gates (classes background, organ)."""
    bundle = folder / "att_bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "models").mkdir()
    network = {"_target_": "monai.networks.nets.AttentionUnet", **KWARGS}
    (bundle / "configs" / "inference.json").write_text(json.dumps({"network_def": network}))
    meta = {"network_data_format": {
        "inputs": {"image": {"type": "image", "num_channels": 1, "spatial_shape": [16, 16, 16]}},
        "outputs": {"pred": {"type": "segmentation", "channel_def": {"0": "background", "1": "organ"}}}}}
    (bundle / "configs" / "metadata.json").write_text(json.dumps(meta))
    torch.save(attention_unet(gates=gates).state_dict(), bundle / "models" / "model.pt")
    return bundle


def test_e_cli_explains_a_saved_attention_unet_bundle(tmp_path, capsys):
    import nibabel as nib

    bundle = attention_bundle(tmp_path, (1.0, -0.5))
    vol = nifti(tmp_path / "t1.nii.gz", shape=(16, 16, 16))
    mask = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(np.pad(np.ones((4, 4, 4), np.uint8), 6), np.diag([2.0, 2.0, 2.0, 1.0])), str(mask))
    out = tmp_path / "att.nii.gz"
    code, _, err = run_cli(capsys, "explain", vol, "--model", bundle, "--method", "attention-gates", "--mask", mask,
                           "--target", "organ", "--param", "combine=product", "--out", out, "--quiet",
                           "--out-intermediate")
    assert code == 0, err
    # each gate's own map beside --out, with its sidecar: the hand-set coefficients
    for point, b in ((OUTER, 1.0), (INNER, -0.5)):
        gate = tmp_path / f"att.at-{point}.nii.gz"
        np.testing.assert_allclose(np.asarray(nib.load(str(gate)).dataobj), coefficient(b), atol=1e-6)
        side = json.loads((tmp_path / f"att.at-{point}.nii.gz.xai.json").read_text())
        assert side["kind"] == "intermediate" and side["point"] == point
    # run again without --overwrite: refused in one line, and nothing written is lost
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = run_cli(capsys, "explain", vol, "--model", bundle, "--method", "attention-gates", "--mask", mask,
                           "--target", "organ", "--out", tmp_path / "att2.nii.gz", "--quiet", "--out-intermediate", "--param",
                           f"layer={OUTER}")
    assert code == 2 and "no intermediate maps" in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    data = np.asarray(nib.load(str(out)).dataobj)
    assert data.shape == (16, 16, 16)
    np.testing.assert_allclose(data, coefficient(1.0) * coefficient(-0.5), atol=1e-6)
    record = json.loads(out.with_name(out.name + ".xai.json").read_text())
    assert record["method"] == "attention-gates" and record["params"]["combine"] == "product"
    assert record["params"]["target_independent"] is True and record["params"]["gates"] == [OUTER, INNER]


def test_out_intermediate_is_refused_before_the_run_for_methods_without_intermediate_maps(tmp_path, capsys):
    vol = nifti(tmp_path / "t1.nii.gz", shape=(8, 8, 8))
    keep = tmp_path / "keep.nii.gz"
    keep.write_bytes(b"the user's earlier result")
    code, _, err = run_cli(capsys, "explain", vol, "--model", "demo", "--method", "saliency", "--out", keep,
                           "--overwrite", "--out-intermediate", "--quiet")
    assert code == 2 and "--out-intermediate needs a method with intermediate maps" in err and err.count("\n") == 1
    assert keep.read_bytes() == b"the user's earlier result"  # nothing was run, nothing lost
