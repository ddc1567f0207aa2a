import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def two_stage_run(tmp_path_factory):
    """Both ProLLaMA stages on the shipped Pfam families with the tiny model (about a CPU minute)."""
    from adaptome.domains.protein.quickstart import two_stage

    out = tmp_path_factory.mktemp("protein_two_stage")
    report = two_stage(out)
    return out, report


@pytest.fixture(scope="session")
def tuned(two_stage_run):
    from adaptome.domains.protein.model import load_model_and_tokenizer

    out, _ = two_stage_run
    return load_model_and_tokenizer(str(out / "stage2" / "merged"))


@pytest.fixture
def tiny():
    from adaptome.domains.protein.model import load_model_and_tokenizer

    return load_model_and_tokenizer(None, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2)
