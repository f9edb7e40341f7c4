"""Concept Relevance Propagation (``crp``, ``core/concepts.py``): conservation over all channels, a hand-built toy
whose two channels each see one known blob, shares, naming and the geometry of the maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from napari_xai.core.concepts import mask_share, top_concepts
from napari_xai.core.errors import UserError
from napari_xai.core.lrp import LrpConfig, RelevanceFilterHooks, run_config
from napari_xai.core.methods.catalogue import get_method
from napari_xai.core.methods.registry import RunContext
from napari_xai.core.models import LoadedModel, ModelSpec
from napari_xai.core.volumes import Volume

torch.set_num_threads(1)


class Plain(nn.Module):
    def __init__(self, bn: bool):
        super().__init__()
        norm = (lambda c: nn.BatchNorm3d(c)) if bn else (lambda c: nn.Identity())
        self.c1, self.n1, self.r1 = nn.Conv3d(1, 4, 3, padding=1), norm(4), nn.ReLU()
        self.c2, self.n2, self.r2 = nn.Conv3d(4, 6, 3, padding=1), norm(6), nn.ReLU()
        self.c3, self.n3, self.r3 = nn.Conv3d(6, 5, 3, stride=2, padding=1), norm(5), nn.ReLU()
        self.pool, self.flat, self.fc = nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(5, 3)

    def forward(self, x):
        x = self.r1(self.n1(self.c1(x)))
        x = self.r2(self.n2(self.c2(x)))
        x = self.r3(self.n3(self.c3(x)))
        return self.fc(self.flat(self.pool(x)))


class Residual(nn.Module):
    """conv -> [a + conv(relu(conv(a)))] -> relu -> pool -> linear: a residual sum around c2/c3."""

    def __init__(self):
        super().__init__()
        self.c1, self.r1 = nn.Conv3d(1, 4, 3, padding=1), nn.ReLU()
        self.c2, self.r2, self.c3 = nn.Conv3d(4, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 4, 3, padding=1)
        self.r3, self.pool, self.flat, self.fc = nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(4, 2)
        self.out = nn.Identity()  # the residual sum's output, as a layer to condition on

    def forward(self, x):
        a = self.r1(self.c1(x))
        s = self.out(a + self.c3(self.r2(self.c2(a))))
        return self.fc(self.flat(self.pool(self.r3(s))))


def _init(net: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm3d):  # non-trivial running statistics: the merge changes weights and biases
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) * 0.1)
    return net.eval()


def _x(seed=0, shape=(12, 12, 12)):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((1, 1, *shape), generator=g) + 0.1


def _crp(model, x, target, ctx=None, **params):
    out = get_method("crp").run(model, x, target, params, ctx or RunContext())
    return out.relevance, out.used


def _rel_err(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).sum() / max(np.abs(b).sum(), 1e-12))


CONSERVATION = []  # (case, error) for the report


@pytest.mark.parametrize("case", ["plain", "batchnorm", "residual-after-sum"])
@pytest.mark.parametrize("rules", ["lrp-epsilon-plus", "lrp-gamma", "lrp"])
def test_all_channels_conditional_maps_sum_to_the_unconditioned_map(case, rules):
    torch.manual_seed(3)
    if case == "residual-after-sum":
        net, layer = _init(Residual(), 1), "out"
    else:
        net, layer = _init(Plain(bn=case == "batchnorm"), 2), "c2"
    x = _x(1)
    target = int(net(x).argmax())
    ctx = RunContext()
    rel, used = _crp(net, x, target, ctx, layer=layer, channels="all", each=True, unconditioned=True, rules=rules)
    # an independent reference: the plain LRP run of the registry (its own forward and backward pass)
    plain = get_method("lrp" if rules == "lrp" else rules).run(net, x, target, {}, RunContext()).relevance
    summed = rel.detach().numpy()[0].sum(axis=0)
    ref = plain.detach().numpy()[0].sum(axis=0)
    err = _rel_err(summed, ref)
    CONSERVATION.append((case, rules, err))
    assert err < 0.01, (case, rules, err)
    assert abs(summed.sum() - ref.sum()) <= 0.01 * abs(ref.sum())
    # the shares at the layer sum to its total, and the channel set is the whole layer
    n = len(used["channel_relevance"])
    assert used["channels"] == list(range(n))
    assert used["concept_share"] == pytest.approx(1.0, rel=1e-6)
    if case == "batchnorm":
        assert used["merged_batchnorm"] == 3
    if case.startswith("residual"):
        assert used["residual_sums"] >= 1


def test_relevance_bypassing_the_layer_is_in_no_concept():
    """Inside a residual branch, the channel maps add up to the relevance through the branch; with the
    relevance that takes the skip (the same LRP pass with the branch's relevance zeroed at that layer) they
    make the unconditioned map."""
    net = _init(Residual(), 4)
    x = _x(2)
    target = int(net(x).argmax())
    rel, used = _crp(net, x, target, layer="c3", channels="all", each=True)
    with RelevanceFilterHooks(net, ["c3"], lambda g: torch.zeros_like(g)):
        skip = run_config(net, x, target, LrpConfig(name="e+", **_eplus()), boundaries=False).relevance
    full = run_config(net, x, target, LrpConfig(name="e+", **_eplus()), boundaries=False).relevance
    through = rel.detach().numpy()[0].sum(axis=0)
    bypass = skip.detach().numpy()[0].sum(axis=0)
    ref = full.detach().numpy()[0].sum(axis=0)
    assert abs(bypass.sum()) > 0.05 * abs(ref.sum())  # the skip carries a real part: the test means something
    assert _rel_err(through + bypass, ref) < 0.01


def _eplus() -> dict:
    from napari_xai.core.lrp import COMPOSITES

    cfg = COMPOSITES["lrp-epsilon-plus"].config(1e-6)
    return {"default": cfg.default, "dense": cfg.dense}


def test_batched_and_one_by_one_give_the_same_maps():
    net = _init(Plain(bn=True), 5)
    x = _x(3)
    _, one = _crp(net, x, 0, layer="c2", top=3, each=True, batch=1, unconditioned=True)
    _, many = _crp(net, x, 0, layer="c2", top=3, each=True, batch=8, unconditioned=True)
    assert one["batch_used"] == 1 and many["batch_used"] == 4  # 3 concepts + the plain map
    a, b = one["_arrays"]["intermediate"], many["_arrays"]["intermediate"]
    assert sorted(a) == sorted(b) and len(a) == 4
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-4, atol=1e-6 * float(np.abs(a[key]).max()))


# ------------------------------------------------------------------ the two-blob toy


class TwoBlobNet(nn.Module):
    """Channel 0 detects bright voxels (ReLU(x)), channel 1 dark ones (ReLU(-x)); both add to class 0."""

    def __init__(self):
        super().__init__()
        self.detect = nn.Conv3d(1, 2, 3, padding=1, bias=False)
        with torch.no_grad():
            self.detect.weight[0].fill_(1.0 / 27)
            self.detect.weight[1].fill_(-1.0 / 27)
        self.act, self.pool, self.flat = nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten()
        self.head = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([[1.0, 1.0], [0.0, 0.0]]))

    def forward(self, x):
        return self.head(self.flat(self.pool(self.act(self.detect(x)))))


def _blobs(shape=(20, 20, 20), a=(5, 5, 6), b=(14, 13, 12), r=2.5):
    idx = np.indices(shape).transpose(1, 2, 3, 0)
    blob_a = np.linalg.norm(idx - np.array(a), axis=-1) <= r
    blob_b = np.linalg.norm(idx - np.array(b), axis=-1) <= r
    data = np.zeros(shape, np.float32)
    data[blob_a], data[blob_b] = 1.0, -1.0
    return data, blob_a, blob_b


def _near(mask: np.ndarray, d: int = 2) -> np.ndarray:
    from scipy.ndimage import binary_dilation

    return binary_dilation(mask, iterations=d)


@pytest.mark.parametrize("rules", ["lrp-epsilon", "lrp-0"])
def test_two_blob_toy_each_channel_on_its_own_blob(rules):
    net = TwoBlobNet().eval()
    data, blob_a, blob_b = _blobs()
    x = torch.from_numpy(data)[None, None]
    res = top_concepts(net, x, layer="detect", target=0, k=2, method=rules, epsilon=1e-9)
    assert [c.channel for c in res.concepts] == [0, 1] or [c.channel for c in res.concepts] == [1, 0]
    a, b = res.concept(0), res.concept(1)
    assert mask_share(a.map, _near(blob_a)) > 0.99 and mask_share(a.map, _near(blob_b)) < 0.01
    assert mask_share(b.map, _near(blob_b)) > 0.99 and mask_share(b.map, _near(blob_a)) < 0.01
    # equal blobs: equal shares; each map holds its channel's relevance; both make the whole map
    assert a.share == pytest.approx(0.5, abs=0.02) and b.share == pytest.approx(0.5, abs=0.02)
    assert a.map_sum == pytest.approx(a.relevance, rel=0.01)
    np.testing.assert_allclose(a.map + b.map, res.unconditioned, rtol=1e-4, atol=1e-7)


def _loaded(net: nn.Module, orientation: str | None = None, shape=None) -> LoadedModel:
    from napari_xai.core.input_space import InputSpace

    spec = ModelSpec(channels=1, class_names=["blobs", "none"], normalization="none", input_shape=shape,
                     space=InputSpace(orientation=orientation) if orientation else InputSpace())
    return LoadedModel(module=net, spec=spec, source="toy", kind="python", sha256="0" * 64,
                       device=torch.device("cpu"), is_scripted=False)


@pytest.mark.parametrize("stored", ["RAS", "LAS", "PIR"])
def test_toy_maps_land_on_the_blobs_of_the_volume_as_stored(stored):
    """Through explain()'s input space: the model declares RAS and a 16³ grid; the scan is stored RAS, LAS or
    PIR at 1.5 mm. Each concept's map comes back on the stored grid, on its own blob."""
    import nibabel as nib

    from napari_xai.core import geometry

    data, blob_a, blob_b = _blobs()
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    affine[:3, 3] = -15
    img = nib.Nifti1Image(data, affine)
    target_ornt = nib.orientations.axcodes2ornt(tuple(stored))
    xform = nib.orientations.ornt_transform(nib.orientations.io_orientation(affine), target_ornt)
    img2 = img.as_reoriented(xform)
    vdata, vaff = np.asarray(img2.dataobj, np.float32), img2.affine
    assert geometry.axcodes(vaff) == stored
    ma = np.asarray(nib.Nifti1Image(blob_a.astype(np.uint8), affine).as_reoriented(xform).dataobj) > 0
    mb = np.asarray(nib.Nifti1Image(blob_b.astype(np.uint8), affine).as_reoriented(xform).dataobj) > 0
    vol = Volume(data=vdata[None], affine=vaff, name=f"toy-{stored}")
    res = top_concepts(_loaded(TwoBlobNet().eval(), "RAS", (16, 16, 16)), vol, layer="detect", target=0, k=2,
                       method="lrp-epsilon")
    a, b = res.concept(0), res.concept(1)
    assert a.map.shape == vdata.shape
    np.testing.assert_allclose(res.affine, vaff)
    assert mask_share(a.map, _near(ma, 3)) > 0.95 and mask_share(a.map, _near(mb, 3)) < 0.02
    assert mask_share(b.map, _near(mb, 3)) > 0.95 and mask_share(b.map, _near(ma, 3)) < 0.02


def test_channels_and_layers_are_checked():
    net = _init(Plain(bn=False), 6)
    x = _x(4)
    with pytest.raises(UserError, match="channel 9 does not exist"):
        _crp(net, x, 0, layer="c2", channels="1,9")
    with pytest.raises(UserError, match="does not have"):
        _crp(net, x, 0, layer="c9")
    with pytest.raises(UserError, match="channel numbers"):
        _crp(net, x, 0, layer="c2", channels="one")
    with pytest.raises(UserError, match="LRP rules"):
        top_concepts(net, x, layer="c2", method="saliency")
    rel, used = _crp(net, x, 0)  # defaults: the last conv, its most relevant channel
    assert used["layer"] == "c3" and len(used["channels"]) == 1
    assert used["channels"][0] == int(np.argmax(used["channel_relevance"]))


def test_a_designer_configuration_object_and_a_segmentation_target():
    """rules=lrp with an in-memory LrpConfig (the designer's), and a segmentation model explained as the masked
    sum of a class's logits: all channels' maps sum to the plain LRP map under the same configuration."""
    from napari_xai.core.explain import explain
    from napari_xai.core.lrp import RuleParams, Segment, preset_params

    torch.manual_seed(0)
    seg = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 5, 3, padding=1), nn.ReLU(),
                        nn.Conv3d(5, 2, 1)).eval()
    cfg = LrpConfig(name="mine", segments=[Segment("0", "0", preset_params("lrp-z-plus"), "low"),
                                           Segment("2", "4", RuleParams(epsilon=1e-3), "up")])
    rng = np.random.default_rng(0)
    vol = Volume(data=(rng.random((1, 12, 12, 12)) + 0.2).astype(np.float32), affine=np.diag([2.0, 2, 2, 1]),
                 name="seg")
    model = _loaded(seg)
    mask = np.zeros((12, 12, 12), bool)
    mask[3:8, 4:9, 2:7] = True  # the target: class 1's logits summed inside this box
    res = top_concepts(model, vol, layer="2", target=1, channels="all", method="lrp", config=cfg, mask=mask)
    plain = explain(vol, model, "lrp", params={"config": cfg}, target=1, mask=mask)
    summed = sum(c.map for c in res.concepts)
    assert len(res.concepts) == 5
    assert res.provenance["params"]["configuration"]["name"] == "mine"
    assert _rel_err(summed, plain.data[0]) < 0.01
    assert _rel_err(res.unconditioned, plain.data[0]) < 0.01


def test_channel_lists_as_written_by_a_record():
    from napari_xai.core.lrp.conditional import parse_channels

    assert parse_channels("[3, 5]", 8, "l") == [3, 5]
    assert parse_channels("4-6,1", 8, "l") == [1, 4, 5, 6]
    assert parse_channels("all", 3, "l") == [0, 1, 2]
    assert parse_channels("", 3, "l") is None


def test_relevance_maximisation_in_one_call(tmp_path):
    """The widgets' entry: three demo subjects (two atrophic), channel 15 of the last convolution, target
    atrophy: the references are ranked by the peak relevance each map's record holds, and are atrophic."""
    import nibabel as nib

    from napari_xai.core.cohort import read_subjects
    from napari_xai.core.concept_refs import relevance_maximisation
    from napari_xai.core.demo import demo_volume
    from napari_xai.core.models import load_model
    from napari_xai.core.provenance import read_sidecar
    from napari_xai.core.volumes import save_nifti

    rows = ["id,path"]
    for seed in (1, 2, 3):
        vol, _ = demo_volume(seed, bool(seed % 2))
        save_nifti(tmp_path / f"s{seed}.nii.gz", vol.data[0], vol.affine)
        rows.append(f"s{seed},{tmp_path / f's{seed}.nii.gz'}")
    (tmp_path / "c.csv").write_text("\n".join(rows) + "\n")
    subjects = read_subjects(tmp_path / "c.csv")
    seen = []
    refs = relevance_maximisation(load_model("demo"), subjects, "features.6", 15, tmp_path / "out", n=2,
                                  size_mm=20.0, target="atrophy", on_row=seen.append)
    assert len(seen) == 3 and all(r["status"] == "ok" for r in seen)
    peaks = {s: read_sidecar(tmp_path / "out" / "maps" / f"{s}.nii.gz")["params"]["peak_relevance"]
             for s in ("s1", "s2", "s3")}
    assert [r.id for r in refs] == sorted(peaks, key=lambda s: -peaks[s])[:2]
    assert {r.id for r in refs} == {"s1", "s3"}  # the atrophic subjects
    assert nib.load(tmp_path / "out" / "refs" / f"01_{refs[0].id}.nii.gz").shape == (10, 10, 10)
    assert (tmp_path / "out" / "refs" / "montage.png").exists()
