import numpy as np
import pytest
import torch

from mega.flame import build_toy_head, enhance
from mega.flame.head_model import HeadModel


@pytest.fixture(scope="session")
def toy_head() -> HeadModel:
    return build_toy_head()


@pytest.fixture
def one_thread():
    """Torch (and its BLAS) on one thread for one test. MKL picks how many threads a product
    uses from the machine's load (MKL_DYNAMIC), and another split of a sum changes the last bits
    that a test comparing two training runs would see (an interrupted and an uninterrupted one)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def toy_enhanced(toy_head) -> HeadModel:
    return enhance(toy_head)


def tiny_head(seed: int = 0, n_shape: int = 3, n_expr: int = 2) -> HeadModel:
    """A random 6-vertex, 5-joint model for float64 gradchecks."""
    rng = np.random.default_rng(seed)
    V = 6
    weights = rng.uniform(size=(V, 5))
    weights /= weights.sum(1, keepdims=True)
    regressor = rng.uniform(size=(5, V))
    regressor /= regressor.sum(1, keepdims=True)
    faces = np.array([[0, 1, 2], [2, 3, 4], [3, 4, 5]])
    return HeadModel(
        v_template=rng.normal(size=(V, 3)) * 0.1, faces=faces,
        shapedirs=rng.normal(size=(V, 3, n_shape + n_expr)) * 0.01, posedirs=rng.normal(size=(V, 3, 36)) * 0.01,
        J_regressor=regressor, lbs_weights=weights, parents=np.array([-1, 0, 1, 1, 1]),
        uvs=rng.uniform(size=(V, 2)), faces_uv=faces, n_shape=n_shape, n_expr=n_expr,
    )
