import os

import pytest
import tiny_models

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


ESM_VOCAB = ["<cls>", "<pad>", "<eos>", "<unk>", "L", "A", "G", "V", "S", "E", "R", "T", "I", "D", "P", "K", "Q",
             "N", "F", "Y", "M", "H", "W", "C", "X", "B", "U", "Z", "O", ".", "-", "<null_1>", "<mask>"]


@pytest.fixture(scope="session")
def tiny_esmfold(tmp_path_factory):
    """A tiny ESMFold (random weights, built from config) saved as a checkpoint folder."""
    folder = tmp_path_factory.mktemp("esmfold")
    sm = {"sequence_dim": 32, "pairwise_dim": 32, "num_blocks": 1, "ipa_dim": 16, "num_heads_ipa": 2,
          "num_qk_points": 2, "num_v_points": 2, "resnet_dim": 16, "num_resnet_blocks": 1}
    trunk = {"num_blocks": 1, "sequence_state_dim": 32, "pairwise_state_dim": 32, "sequence_head_width": 8,
             "pairwise_head_width": 8, "structure_module": sm}
    model = tiny_models.esm(head="folding", eval_mode=False, dropout=0.1, vocab_size=len(ESM_VOCAB),
                            is_folding_model=True, vocab_list=ESM_VOCAB, esmfold_config={"trunk": trunk})
    model.save_pretrained(folder)
    return folder
