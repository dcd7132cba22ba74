"""FLAME-format files: chumpy-free loading, validation errors, the toy model's round trip."""

import pickle
import sys
import types

import numpy as np
import pytest
import scipy.sparse

from mega.errors import AssetError
from mega.flame import files, load_head_model, write_head_model


def _fake_chumpy_module():
    """A stand-in 'chumpy.ch' whose Ch pickles its __dict__ as chumpy does."""
    module = types.ModuleType("chumpy.ch")

    class Ch:
        def __init__(self, x):
            self.x = np.asarray(x, np.float64)
            self._dirty_vars = set()
            self._depends_on_deps = {}

        def __getstate__(self):
            return dict(self.__dict__)

        def __reduce_ex__(self, protocol):
            import copyreg
            return copyreg.__newobj__, (type(self),), self.__getstate__()

    Ch.__module__ = "chumpy.ch"
    Ch.__qualname__ = "Ch"
    module.Ch = Ch
    package = types.ModuleType("chumpy")
    package.ch = module
    return package, module


def _flame_like_dict(V=12, F=8, chumpy_cls=None):
    rng = np.random.default_rng(0)
    wrap = chumpy_cls if chumpy_cls is not None else (lambda a: a)
    weights = rng.uniform(size=(V, 5))
    return {
        "v_template": wrap(rng.normal(size=(V, 3))),
        "f": rng.integers(0, V, size=(F, 3)).astype(np.uint32),
        "shapedirs": wrap(rng.normal(size=(V, 3, 400))),
        "posedirs": wrap(rng.normal(size=(V, 3, 36))),
        "J_regressor": scipy.sparse.csc_matrix(rng.uniform(size=(5, V))),
        "weights": wrap(weights / weights.sum(1, keepdims=True)),
        "kintree_table": np.array([[2**32 - 1, 0, 1, 1, 1], [0, 1, 2, 3, 4]]),
        "bs_style": "lbs",
    }


def test_chumpy_pickle_loads_without_chumpy(tmp_path, monkeypatch):
    package, module = _fake_chumpy_module()
    monkeypatch.setitem(sys.modules, "chumpy", package)
    monkeypatch.setitem(sys.modules, "chumpy.ch", module)
    data = _flame_like_dict(chumpy_cls=module.Ch)
    path = tmp_path / "flame_chumpy.pkl"
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=2)
    monkeypatch.delitem(sys.modules, "chumpy")
    monkeypatch.delitem(sys.modules, "chumpy.ch")
    assert b"chumpy.ch" in path.read_bytes()

    model = files.read_flame_pickle(path)
    np.testing.assert_array_equal(model["v_template"], data["v_template"].x)
    np.testing.assert_array_equal(model["shapedirs"], data["shapedirs"].x)
    np.testing.assert_allclose(model["J_regressor"], data["J_regressor"].toarray())
    assert model["parents"].tolist() == [-1, 0, 1, 1, 1]
    assert model["faces"].dtype == np.int64


def test_chumpy_expression_without_value_is_a_clear_error(tmp_path, monkeypatch):
    package, module = _fake_chumpy_module()
    monkeypatch.setitem(sys.modules, "chumpy", package)
    monkeypatch.setitem(sys.modules, "chumpy.ch", module)
    data = _flame_like_dict()
    node = module.Ch(np.zeros(3))
    del node.x  # an expression node carries operands, not 'x'
    data["v_template"] = node
    path = tmp_path / "expr.pkl"
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=2)
    monkeypatch.delitem(sys.modules, "chumpy")
    monkeypatch.delitem(sys.modules, "chumpy.ch")
    with pytest.raises(AssetError, match=r"expr\.pkl.*'v_template'.*chumpy"):
        files.read_flame_pickle(path)


def test_missing_key_names_file_and_key(tmp_path):
    data = _flame_like_dict()
    del data["posedirs"]
    path = tmp_path / "nokey.pkl"
    path.write_bytes(pickle.dumps(data, protocol=2))
    with pytest.raises(AssetError, match=r"nokey\.pkl: key 'posedirs' is missing"):
        files.read_flame_pickle(path)


def test_wrong_shape_names_file_key_found_and_expected(tmp_path):
    data = _flame_like_dict()
    data["shapedirs"] = np.zeros((12, 3, 50))
    path = tmp_path / "shape.pkl"
    path.write_bytes(pickle.dumps(data, protocol=2))
    with pytest.raises(AssetError, match=r"shape\.pkl: 'shapedirs' has shape \(12, 3, 50\), expected \(V=12, 3, S>=400\)"):
        files.read_flame_pickle(path)
    data = _flame_like_dict()
    data["weights"] = np.zeros((11, 5))
    path.write_bytes(pickle.dumps(data, protocol=2))
    with pytest.raises(AssetError, match=r"'weights' has shape \(11, 5\), expected \(V=12, 5\)"):
        files.read_flame_pickle(path)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(AssetError, match="missing.pkl: file not found"):
        files.read_flame_pickle(tmp_path / "missing.pkl")
    (tmp_path / "junk.pkl").write_bytes(b"not a pickle")
    with pytest.raises(AssetError, match="junk.pkl: not a readable pickle"):
        files.read_flame_pickle(tmp_path / "junk.pkl")


def test_obj_without_uvs_and_bad_masks(tmp_path):
    obj = tmp_path / "nouv.obj"
    obj.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    with pytest.raises(AssetError, match="nouv.obj"):
        files.read_obj(obj)
    masks = tmp_path / "masks.pkl"
    masks.write_bytes(pickle.dumps({"face": np.array([0, 99])}))
    with pytest.raises(AssetError, match=r"masks\.pkl: region 'face' indexes vertices outside \[0, 10\)"):
        files.read_masks(masks, 10)


def test_toy_model_round_trips_through_its_files(tmp_path, toy_head):
    paths = write_head_model(tmp_path, toy_head)
    raw = files.read_pickle(paths["model"])
    assert raw["shapedirs"].shape == (toy_head.n_vertices, 3, 400)
    assert raw["kintree_table"][0, 0] == 2**32 - 1
    assert scipy.sparse.issparse(pickle.loads(paths["model"].read_bytes())["J_regressor"])
    loaded = load_head_model(paths["model"], paths["masks"], paths["template"])
    for name in ("v_template", "faces", "shapedirs", "posedirs", "J_regressor", "lbs_weights", "parents",
                 "faces_uv", "lip_ring_upper", "lip_ring_lower"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(toy_head, name), err_msg=name)
    np.testing.assert_allclose(loaded.uvs, toy_head.uvs, atol=1e-8)
    assert loaded.regions.keys() == toy_head.regions.keys()
    for name in toy_head.regions:
        np.testing.assert_array_equal(loaded.regions[name], toy_head.regions[name])


def test_template_must_share_the_model_topology(tmp_path, toy_head):
    paths = write_head_model(tmp_path, toy_head)
    text = paths["template"].read_text().splitlines()
    first_face = next(i for i, line in enumerate(text) if line.startswith("f "))
    text[first_face] = "f 1/1 3/3 2/2"
    paths["template"].write_text("\n".join(text) + "\n")
    with pytest.raises(AssetError, match="faces differ"):
        load_head_model(paths["model"], paths["masks"], paths["template"])
