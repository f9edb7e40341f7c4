"""The post-processing chain against hand-computed arrays and an independent plain reference."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import ndimage

from napari_xai.core import postprocess as pp
from napari_xai.core.errors import UserError, XaiWarning


def affine_mm(sizes=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)):
    a = np.eye(4)
    a[:3, :3] = np.diag(sizes)
    a[:3, 3] = origin
    return a


# ---------------------------------------------------------------------------
# an independent plain reference: ndimage.label per sign + bincount + mask
# ---------------------------------------------------------------------------

STRUCT = {6: 1, 18: 2, 26: 3}


def plain_reference(data, threshold, connectivity, min_voxels):
    """Label r > t and r < -t with scipy, keep clusters >= min_voxels, order by
    (size desc, positive first, first voxel in C order). Written from the spec,
    sharing no code with the chain."""
    st = ndimage.generate_binary_structure(3, STRUCT[connectivity])
    clusters = []  # (size, sign_key, first_flat_index, mask)
    for sign, mask in ((1, data > threshold), (-1, data < -threshold)):
        lab, n = ndimage.label(mask, structure=st)
        sizes = np.bincount(lab.ravel(), minlength=n + 1)
        for lbl in range(1, n + 1):
            if sizes[lbl] >= min_voxels:
                m = lab == lbl
                clusters.append((int(sizes[lbl]), 0 if sign > 0 else 1, int(np.flatnonzero(m)[0]), m, sign))
    clusters.sort(key=lambda c: (-c[0], c[1], c[2]))
    out = np.zeros(data.shape, np.int64)
    for i, c in enumerate(clusters, start=1):
        out[c[3]] = i
    return out, clusters


def labels_of(data, threshold, connectivity=18, min_voxels=0):
    lab = pp.label_clusters(data, threshold, connectivity)
    return pp.keep_min_size(lab, min_voxels), lab


# ---------------------------------------------------------------------------
# smoothing
# ---------------------------------------------------------------------------


def test_smoothing_sigma_in_mm_uses_voxel_sizes():
    # voxel sizes 1, 2, 4 mm; sigma 2 mm -> 2, 1, 0.5 voxels
    d = np.zeros((21, 21, 21), np.float32)
    d[10, 10, 10] = 1.0
    out = pp.smooth(d, affine_mm((1.0, 2.0, 4.0)), 2.0)
    assert out.dtype == np.float32
    assert out.sum() == pytest.approx(1.0, abs=1e-5)  # normalised kernel, far from the border
    c = out[10, 10, 10]
    # ratio of neighbours to the centre: exp(-d²/(2σ²)) with σ in voxels per axis
    assert out[11, 10, 10] / c == pytest.approx(np.exp(-1 / (2 * 2.0**2)), rel=1e-4)
    assert out[10, 11, 10] / c == pytest.approx(np.exp(-1 / (2 * 1.0**2)), rel=1e-4)
    assert out[10, 10, 11] / c == pytest.approx(np.exp(-1 / (2 * 0.5**2)), rel=1e-4)
    assert out[13, 10, 10] / c == pytest.approx(np.exp(-9 / (2 * 2.0**2)), rel=1e-4)


def test_smoothing_zero_sigma_is_identity_and_negative_is_refused():
    d = np.random.default_rng(0).standard_normal((5, 6, 7)).astype(np.float32)
    out = pp.smooth(d, affine_mm(), 0.0)
    assert np.array_equal(out, d) and out is not d
    with pytest.raises(UserError, match="sigma"):
        pp.smooth(d, affine_mm(), -1.0)
    with pytest.raises(UserError, match="sigma"):
        pp.PostParams(sigma_mm=-0.5).validated()


def test_smoothing_on_the_support_box_equals_whole_volume_filtering():
    rng = np.random.default_rng(3)
    d = np.zeros((40, 36, 30), np.float32)
    d[12:20, 5:14, 18:25] = rng.standard_normal((8, 9, 7))
    full = ndimage.gaussian_filter(d, sigma=(1.5, 0.75, 1.0), mode="constant", truncate=4.0)
    out = pp.smooth(d, affine_mm((2.0, 4.0, 3.0)), 3.0)
    assert np.allclose(out, full, atol=1e-7)


# ---------------------------------------------------------------------------
# scaling, filters, sign
# ---------------------------------------------------------------------------

R = np.array([-4.0, 2.0, 1.0, 0.0], np.float32).reshape(1, 1, 4)


@pytest.mark.parametrize(
    "mode,kw,expected",
    [
        ("none", {}, [-4.0, 2.0, 1.0, 0.0]),
        ("max", {}, [-1.0, 0.5, 0.25, 0.0]),
        # 50th percentile of |r| over the non-zero voxels {4, 2, 1} is 2
        ("percentile", {"percentile": 50.0}, [-2.0, 1.0, 0.5, 0.0]),
        ("fixed", {"value": 8.0}, [-0.5, 0.25, 0.125, 0.0]),
        ("fixed", {"value": 2.0, "clip": True}, [-1.0, 1.0, 0.5, 0.0]),
    ],
)
def test_scaling_modes(mode, kw, expected):
    out, divisor, msgs = pp.scale_map(R, mode, **kw)
    assert np.allclose(out.ravel(), expected)
    assert not msgs


def test_scaling_an_all_zero_map_says_so():
    out, divisor, msgs = pp.scale_map(np.zeros((2, 2, 2)), "max")
    assert divisor == 1.0 and not out.any() and "all zeros" in msgs[0]


# f = r / max|r| with max|r| = 2
F_VALUES = np.array([-1.0, -0.5, -0.25, 0.0, 0.1, 0.3, 0.6, 0.9], np.float32)
RF = (2.0 * F_VALUES).reshape(1, 2, 4)


def test_fraction_pass_filter_keeps_the_range_and_scales_back():
    # the seed's 0.4-pass: keep |f| <= 0.4
    out = pp.fraction_filter(RF, "pass", (0.0, 0.4)).ravel()
    assert np.allclose(out, 2.0 * np.array([0, 0, -0.25, 0, 0.1, 0.3, 0, 0]))
    # [0.2, 0.6]: keep 0.2 <= |f| <= 0.6
    out = pp.fraction_filter(RF, "pass", (0.2, 0.6)).ravel()
    assert np.allclose(out, 2.0 * np.array([0, -0.5, -0.25, 0, 0, 0.3, 0.6, 0]))


def test_fraction_clamp_filter():
    # the seed's 0.2-clamp: |f| > 0.2 -> ±0.2 (times N)
    out = pp.fraction_filter(RF, "clamp", (0.0, 0.2)).ravel()
    assert np.allclose(out, 2.0 * np.array([-0.2, -0.2, -0.2, 0, 0.1, 0.2, 0.2, 0.2]))
    # with a lower bound: |f| < 0.2 -> 0
    out = pp.fraction_filter(RF, "clamp", (0.2, 0.5)).ravel()
    assert np.allclose(out, 2.0 * np.array([-0.5, -0.5, -0.25, 0, 0, 0.3, 0.5, 0.5]))


def test_filter_none_and_bad_alpha():
    assert np.array_equal(pp.fraction_filter(RF, "none"), RF)
    with pytest.raises(UserError, match="alpha"):
        pp.fraction_filter(RF, "pass", (0.6, 0.2))
    with pytest.raises(UserError, match="alpha"):
        pp.PostParams(filter="pass", alpha=(0.1, 1.5)).validated()


def test_sign_selection():
    r = np.array([-3.0, -1.0, 0.0, 2.0], np.float32).reshape(1, 1, 4)
    assert np.array_equal(pp.select_sign(r, "positive").ravel(), [0, 0, 0, 2])
    assert np.array_equal(pp.select_sign(r, "negative").ravel(), [-3, -1, 0, 0])
    assert np.array_equal(pp.select_sign(r, "absolute").ravel(), [3, 1, 0, 2])
    assert np.array_equal(pp.select_sign(r, "both").ravel(), r.ravel())


# ---------------------------------------------------------------------------
# clusters: hand-built cases
# ---------------------------------------------------------------------------


def hand_volume():
    d = np.zeros((7, 7, 7), np.float32)
    d[1, 1, 1:4] = 1.0  # A: 3 positive voxels in a row
    d[1, 2, 4] = 1.0  # joins A through an edge (18, 26) but not through a face (6)
    d[5, 5, 5] = 0.8  # B: one positive voxel
    d[4, 4, 4] = 0.8  # joins B through a corner only (26)
    d[1, 1, 4] = -0.9  # N: a negative voxel touching A's face: must stay separate
    d[1, 1, 5] = -0.7  # N has 2 voxels
    return d


def test_connectivity_6_18_26_on_a_hand_case():
    d = hand_volume()
    lab6, l6 = labels_of(d, 0.5, 6)
    lab18, l18 = labels_of(d, 0.5, 18)
    lab26, l26 = labels_of(d, 0.5, 26)
    # 6: A(3) | N(2, neg) | edge voxel(1) | B(1) | corner voxel(1)
    assert list(l6.sizes) == [3, 2, 1, 1, 1]
    assert list(l6.signs) == [1, -1, 1, 1, 1]
    # 18: A+edge voxel (4) | N (2) | B | corner voxel
    assert list(l18.sizes) == [4, 2, 1, 1]
    assert lab18[1, 2, 4] == lab18[1, 1, 1] == 1
    # 26: A+edge (4) | N (2) | B+corner (2, positive, so before N? no: same size -> positive first)
    assert list(l26.sizes) == [4, 2, 2]
    assert list(l26.signs) == [1, 1, -1]
    assert lab26[5, 5, 5] == lab26[4, 4, 4] == 2
    assert lab26[1, 1, 4] == lab26[1, 1, 5] == 3
    # the negative cluster touches A but is never merged with it, at any connectivity
    for lab in (lab6, lab18, lab26):
        assert lab[1, 1, 4] != lab[1, 1, 3]
        assert lab.dtype == np.uint16


def test_negative_relevance_survives_thresholding():
    # the seed app cast relevance to int and lost most negative values; here -0.9 and -0.7 stay
    d = hand_volume()
    lab, lb = labels_of(d, 0.5, 18)
    neg_ids = [i + 1 for i, s in enumerate(lb.signs) if s < 0]
    assert len(neg_ids) == 1
    assert set(np.unique(lab[d < 0])) == set(neg_ids)


def test_strict_threshold_and_ties_in_raster_order():
    d = np.zeros((3, 3, 6), np.float32)
    d[0, 0, 0] = 0.5  # exactly at the threshold: not kept (|r| > t)
    d[2, 2, 5] = 0.6  # later in raster order
    d[0, 2, 0] = 0.7  # earlier in raster order, same size (1) -> label 1
    lab, lb = labels_of(d, 0.5, 6)
    assert lab[0, 0, 0] == 0
    assert lab[0, 2, 0] == 1 and lab[2, 2, 5] == 2


def test_min_size_in_voxels_and_mm3():
    d = hand_volume()
    lb = pp.label_clusters(d, 0.5, 18)
    a2 = affine_mm((2.0, 2.0, 2.0))  # 8 mm³ voxels
    assert pp.min_size_voxels(16.0, "mm3", a2) == pytest.approx(2.0)
    lab = pp.keep_min_size(lb, pp.min_size_voxels(16.0, "mm3", a2))
    assert set(np.unique(lab)) == {0, 1, 2}  # sizes 4 and 2 kept, the single voxels dropped
    assert lb.n_kept(3) == 1 and lb.n_kept(2) == 2 and lb.n_kept(0) == 4 and lb.n_kept(5) == 0


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("connectivity", [6, 18, 26])
def test_equals_the_plain_reference_on_random_inputs(seed, connectivity):
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in rng.integers(4, 17, 3))
    d = rng.standard_normal(shape).astype(np.float32)
    if seed % 2:
        d = ndimage.gaussian_filter(d, 1.0)
    t = float(rng.uniform(0.0, 0.6)) * float(np.abs(d).max())
    min_vox = int(rng.integers(0, 4))
    ref, clusters = plain_reference(d, t, connectivity, min_vox)
    lab, lb = labels_of(d, t, connectivity, min_vox)
    assert any(c[4] < 0 for c in clusters), "the case must include negative clusters"
    assert np.array_equal(lab.astype(np.int64), ref)
    # the table against direct numpy statistics of the reference's clusters
    aff = affine_mm((1.5, 2.0, 2.5), (-10.0, 20.0, 5.0))
    table = pp.cluster_table(lb, d, aff).head(lb.n_kept(min_vox))
    assert len(table) == len(clusters)
    for i, c in enumerate(clusters):
        m = c[3]
        assert table.voxels[i] == m.sum()
        assert table.sign[i] == c[4]
        assert table.mm3[i] == pytest.approx(m.sum() * 1.5 * 2.0 * 2.5)
        assert table.sum[i] == pytest.approx(float(d[m].astype(np.float64).sum()), rel=1e-6, abs=1e-6)
        ijk = np.argwhere(m)
        peak = ijk[np.argmax(np.abs(d[m]))]  # first max in C order
        assert tuple(table.peak_ijk[i]) == tuple(peak)
        assert table.peak[i] == pytest.approx(float(d[tuple(peak)]))
        assert np.allclose(table.peak_mm[i], aff[:3, :3] @ peak + aff[:3, 3])
        assert np.allclose(table.centroid_mm[i], aff[:3, :3] @ ijk.mean(axis=0) + aff[:3, 3])


def test_size_update_from_previous_equals_from_scratch():
    rng = np.random.default_rng(7)
    d = ndimage.gaussian_filter(rng.standard_normal((20, 22, 18)), 1.0).astype(np.float32)
    lb = pp.label_clusters(d, 0.1, 18)
    prev = (pp.keep_min_size(lb, 0), lb.n)
    for m in [3, 1, 10, 10, 0, 25, 2]:
        upd = pp.keep_min_size(lb, m, previous=prev)
        assert np.array_equal(upd, pp.keep_min_size(lb, m))
        assert upd is not prev[0]
        prev = (upd, lb.n_kept(m))


def test_more_than_65535_clusters_is_refused_never_wrapped():
    d = np.zeros((82, 82, 82), np.float32)
    d[::2, ::2, ::2] = 1.0  # 41³ = 68,921 isolated voxels (not neighbours even at 26)
    lb = pp.label_clusters(d, 0.5, 26)
    assert lb.n == 41**3
    with pytest.raises(UserError, match="65,535"):
        pp.keep_min_size(lb, 0)
    # with a size filter that removes them all, the (empty) result is fine
    assert not pp.keep_min_size(lb, 2).any()


# ---------------------------------------------------------------------------
# statistics and guides
# ---------------------------------------------------------------------------


def test_table_row_and_csv():
    d = hand_volume()
    lb = pp.label_clusters(d, 0.5, 18)
    t = pp.cluster_table(lb, d, affine_mm((2.0, 2.0, 2.0), (-7.0, 0.0, 0.0)))
    row = t.row(2)
    assert row["sign"] == "negative" and row["voxels"] == 2 and row["mm3"] == pytest.approx(16.0)
    assert row["sum"] == pytest.approx(-1.6) and row["peak"] == pytest.approx(-0.9)
    assert row["peak_mm"] == pytest.approx((-5.0, 2.0, 8.0))  # voxel (1, 1, 4)
    assert row["centroid_mm"] == pytest.approx((-5.0, 2.0, 9.0))  # mean of k = 4, 5
    assert t.row(99) is None
    lines = t.to_csv().strip().splitlines()
    assert lines[0].split(",") == list(pp.TABLE_COLUMNS)
    assert lines[2].split(",")[:3] == ["2", "negative", "2"]
    assert len(lines) == 1 + lb.n


def test_size_histogram_counts_all_clusters():
    h = pp.size_histogram(np.array([1, 1, 2, 5, 40, 40, 300]), voxel_mm3=8.0, n_bins=10)
    assert h.counts.sum() == 7
    assert h.edges_voxels[0] == 1.0 and h.edges_voxels[-1] >= 300
    assert np.allclose(h.edges_mm3, 8.0 * h.edges_voxels)
    # the bin holding 40 counts 2
    i = np.searchsorted(h.edges_voxels, 40, side="right") - 1
    assert h.counts[i] == 2


def test_slice_profiles_hand_case():
    d = np.zeros((2, 3, 4), np.float32)
    d[0, 1, 2] = 2.0
    d[1, 2, 3] = -1.5
    d[1, 0, 0] = 0.5
    prof = pp.slice_profiles(d)
    (p0, n0), (p1, n1), (p2, n2) = prof
    assert np.allclose(p0, [2.0, 0.5]) and np.allclose(n0, [0.0, -1.5])
    assert np.allclose(p1, [0.5, 2.0, 0.0]) and np.allclose(n1, [0.0, 0.0, -1.5])
    assert np.allclose(p2, [0.5, 0, 2.0, 0]) and np.allclose(n2, [0, 0, 0, -1.5])
    # with a box that covers the non-zero voxels the result is the same
    box = pp.support_box(d)
    for (a, b), (c, e) in zip(prof, pp.slice_profiles(d, box)):
        assert np.allclose(a, c) and np.allclose(b, e)


# ---------------------------------------------------------------------------
# bad input and parameters
# ---------------------------------------------------------------------------


def test_nan_relevance_is_treated_as_zero_with_a_warning():
    d = np.ones((3, 3, 3), np.float32)
    d[1, 1, 1] = np.nan
    d[0, 0, 0] = np.inf
    with pytest.warns(XaiWarning, match="2 NaN/Inf"):
        out, msgs = pp.sanitize(d)
    assert out[1, 1, 1] == 0 and out[0, 0, 0] == 0 and np.isfinite(out).all()
    assert "treated as 0" in msgs[0]


def test_sanitize_refuses_non_3d():
    with pytest.raises(UserError, match="3D"):
        pp.sanitize(np.zeros((4, 4)))


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"scale": "log"}, "scale"),
        ({"connectivity": 8}, "connectivity"),
        ({"threshold": -0.1}, "threshold"),
        ({"min_size": -1}, "minimum cluster size"),
        ({"sign": "up"}, "sign"),
        ({"size_unit": "ml"}, "size unit"),
        ({"scale": "fixed", "scale_value": 0.0}, "fixed scale"),
        ({"percentile": 0.0}, "percentile"),
        ({"threshold": float("nan")}, "finite"),
    ],
)
def test_parameter_validation(kw, match):
    with pytest.raises(UserError, match=match):
        pp.PostParams(**kw).validated()


def test_params_round_trip_and_unknown_keys():
    p = pp.PostParams(sigma_mm=3.0, filter="clamp", alpha=(0.1, 0.3), size_unit="mm3", min_size=40).validated()
    assert pp.PostParams.from_dict(p.to_dict()) == p
    with pytest.raises(UserError, match="unknown"):
        pp.PostParams.from_dict({**p.to_dict(), "smoothing": 2})
    with pytest.raises(UserError, match="unknown"):
        p.replace(treshold=0.2)


def test_label_order_is_independent_of_warnings_filter():
    # sanity: no warnings from the chain on clean input
    d = hand_volume()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pp.keep_min_size(pp.label_clusters(d, 0.5, 18), 0)


def test_masked_to_clusters_with_and_without_box():
    rng = np.random.default_rng(2)
    d = ndimage.gaussian_filter(rng.standard_normal((12, 14, 10)), 1.0).astype(np.float32)
    lb = pp.label_clusters(d, 0.2, 18)
    lab = pp.keep_min_size(lb, 3)
    expected = np.where(lab > 0, d, 0)
    assert np.array_equal(pp.masked_to_clusters(d, lab), expected)
    assert np.array_equal(pp.masked_to_clusters(d, lab, lb.box), expected)
    # the box bounds every voxel above the threshold
    outside = np.ones(d.shape, bool)
    outside[lb.box] = False
    assert not (np.abs(d[outside]) > 0.2).any()


@pytest.mark.parametrize("seed", range(3))
def test_a_size_step_changes_exactly_the_voxels_of_the_clusters_that_come_or_go(seed):
    """``size_step`` (what the explorer's layers rewrite in place) against the plain reference at both sizes,
    and mapped into a crop box with ``index_in_box``."""
    rng = np.random.default_rng(seed)
    d = ndimage.gaussian_filter(rng.standard_normal((14, 16, 12)), 1.0).astype(np.float32)
    t = 0.3 * float(np.abs(d).max())
    lb = pp.label_clusters(d, t, 18)
    for m_prev, m in ((0, 4), (4, 0), (2, 9), (9, 9)):
        ref_prev, _ = plain_reference(d, t, 18, m_prev)
        ref, _ = plain_reference(d, t, 18, m)
        idx, values = pp.size_step(lb, lb.n_kept(m_prev), lb.n_kept(m))
        changed = np.flatnonzero(ref_prev.ravel() != ref.ravel())
        assert np.array_equal(np.sort(idx), changed)
        assert np.array_equal(values, ref.ravel()[idx])
        out = ref_prev.astype(np.uint16).ravel()
        out[idx] = values
        assert np.array_equal(out, ref.ravel())
    box = tuple(slice(1, n - 1) for n in d.shape)
    inner = np.zeros(d.shape, bool)
    inner[box] = True
    flat = np.flatnonzero(inner.ravel())[::7]
    local = pp.index_in_box(flat, d.shape, box)
    assert np.array_equal(d[box].ravel()[local], d.ravel()[flat])
