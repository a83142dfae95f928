"""What a new user may throw at minimind_ref: every case gets an error of the right type that names the
argument, or the correct result; never a silent wrong answer or a cryptic error from deep inside torch.

The tables follow the hostile-input review of issue 10 (§2): config types and values, inputs of forward
and generate, files and folders; then the Hugging Face conventions of §3.
"""

import dataclasses
import math

import pytest
import torch
from torch.testing import assert_close

import minimind_ref
from minimind_ref import KVCache, MiniMindConfig, MiniMindForCausalLM

from .conftest import tiny_config


def make(**kw) -> MiniMindForCausalLM:
    torch.manual_seed(0)
    return MiniMindForCausalLM(tiny_config(**kw)).eval()


def ids(b=2, t=6, seed=1):
    return torch.randint(3, 97, (b, t), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------- config
BAD_CONFIGS = [
    # (fields, error type, the field the message names)
    (dict(hidden_size="512"), TypeError, "hidden_size"),
    (dict(hidden_size=512.0), TypeError, "hidden_size"),
    (dict(num_hidden_layers=True), TypeError, "num_hidden_layers"),
    (dict(vocab_size=None), TypeError, "vocab_size"),
    (dict(num_attention_heads=0), ValueError, "num_attention_heads"),
    (dict(rms_norm_eps="1e-5"), TypeError, "rms_norm_eps"),
    (dict(rope_theta="1e6"), TypeError, "rope_theta"),
    (dict(dropout="0.1"), TypeError, "dropout"),
    (dict(use_moe="false"), TypeError, "use_moe"),  # a truthy string used to build an MoE
    (dict(flash_attn="no"), TypeError, "flash_attn"),
    (dict(tie_word_embeddings=1), TypeError, "tie_word_embeddings"),
    (dict(qk_norm="true"), TypeError, "qk_norm"),
    (dict(eos_token_id="2"), TypeError, "eos_token_id"),
    (dict(hidden_act=None), TypeError, "hidden_act"),
    (dict(rms_norm_eps=math.inf), ValueError, "rms_norm_eps"),
    (dict(rms_norm_eps=math.nan), ValueError, "rms_norm_eps"),
    (dict(rope_theta=math.inf), ValueError, "rope_theta"),
    (dict(dropout=math.nan), ValueError, "dropout"),
    (dict(aux_loss_alpha=math.inf), ValueError, "aux_loss_alpha"),
    (dict(max_position_embeddings=10**9), ValueError, "max_position_embeddings"),  # a 32 GB RoPE table
    (dict(head_dim=15), ValueError, "head_dim"),
    (dict(head_dim=0), ValueError, "head_dim"),
    (dict(head_dim="16"), TypeError, "head_dim"),
    (dict(use_moe=True, moe_intermediate_size=0), ValueError, "moe_intermediate_size"),
    (dict(use_moe=True, moe_variant="minimind4"), ValueError, "moe_variant"),
    # rope_scaling: what is not understood is refused, never replaced by the default YaRN x16
    (dict(rope_scaling={"rope_type": "linear", "factor": 2.0}), ValueError, "rope_scaling"),
    (dict(rope_scaling={"type": "dynamic", "factor": 2.0}), ValueError, "rope_scaling"),
    (dict(rope_scaling={"type": "yarn", "factr": 4}), ValueError, "rope_scaling"),
    (dict(rope_scaling={}), ValueError, "rope_scaling"),
    (dict(rope_scaling={"factor": 4.0}), ValueError, "rope_scaling"),  # no type: which scaling?
    (dict(rope_scaling={"type": "yarn", "rope_type": "linear"}), ValueError, "rope_scaling"),
    (dict(rope_scaling={"type": "yarn", "factor": "4"}), TypeError, "rope_scaling"),
    (dict(rope_scaling={"type": "yarn", "factor": math.inf}), ValueError, "rope_scaling"),
    (dict(rope_scaling={"type": "yarn", "original_max_position_embeddings": 2048.5}), TypeError, "rope_scaling"),
    (dict(rope_scaling="yarn"), TypeError, "rope_scaling"),
]


@pytest.mark.parametrize(
    "kwargs,error,field", BAD_CONFIGS, ids=[f"{f}={list(k.values())[-1]!r}" for k, _, f in BAD_CONFIGS]
)
def test_bad_config_values_raise_naming_the_field(kwargs, error, field):
    with pytest.raises(error, match=rf"MiniMindConfig\.{field}\b"):
        tiny_config(**kwargs)


def test_hf_rope_type_spelling_is_accepted():
    c = tiny_config(rope_scaling={"rope_type": "yarn", "factor": 4.0})
    assert c.rope_scaling == {**minimind_ref.config.DEFAULT_YARN, "factor": 4.0}
    assert MiniMindConfig.from_dict(c.to_dict()) == c


def change(cfg, **fields):
    for k, v in fields.items():
        setattr(cfg, k, v)
    return cfg


CHANGED_AFTER = [
    (dict(num_key_value_heads=3), ValueError, "num_key_value_heads"),
    (dict(use_moe="yes"), TypeError, "use_moe"),
    (dict(rope_scaling={"rope_type": "linear"}), ValueError, "rope_scaling"),
    (dict(inference_rope_scaling=True), ValueError, "inference_rope_scaling"),  # the YaRN dict was never made
    (dict(hidden_size=128), ValueError, "head_dim"),  # head_dim and the FFN width were derived from 64
    (dict(max_position_embeddings=2**30), ValueError, "max_position_embeddings"),
]


@pytest.mark.parametrize("fields,error,field", CHANGED_AFTER, ids=[f for *_, f in CHANGED_AFTER])
def test_a_field_changed_after_construction_is_checked_when_the_model_is_built(fields, error, field):
    cfg = change(tiny_config(), **fields)
    with pytest.raises(error, match=rf"MiniMindConfig\.{field}\b"):
        MiniMindForCausalLM(cfg)


def test_changing_derived_fields_together_is_fine():
    cfg = change(tiny_config(), hidden_size=128, head_dim=32, intermediate_size=352)
    assert MiniMindForCausalLM(cfg).model.layers[0].mlp.up_proj.weight.shape == (352, 128)
    with pytest.raises(TypeError, match="config must be a MiniMindConfig"):
        MiniMindForCausalLM(cfg.to_dict())


# ------------------------------------------------------------------------------------------- inputs
FORWARD_CASES = [
    # (what, call(model), error type, the argument the message names)
    ("bool ids", lambda m: m(ids().bool()), TypeError, "input_ids"),
    ("uint8 ids", lambda m: m(ids().to(torch.uint8)), TypeError, "input_ids"),
    ("float ids", lambda m: m(ids().float()), TypeError, "input_ids"),
    ("list ids", lambda m: m([[1, 2, 3]]), TypeError, "input_ids"),
    ("empty batch", lambda m: m(torch.zeros(0, 5, dtype=torch.long)), ValueError, "input_ids"),
    ("no tokens", lambda m: m(torch.zeros(2, 0, dtype=torch.long)), ValueError, "input_ids"),
    ("meta ids", lambda m: m(torch.zeros(1, 4, dtype=torch.long, device="meta")), ValueError, "input_ids"),
    ("mask of 2s", lambda m: m(ids(), attention_mask=2 * torch.ones(2, 6)), ValueError, "attention_mask"),
    ("mask of halves", lambda m: m(ids(), attention_mask=torch.full((2, 6), 0.5)), ValueError, "attention_mask"),
    ("mask as list", lambda m: m(ids(), attention_mask=[[1] * 6] * 2), TypeError, "attention_mask"),
    ("float logits_to_keep", lambda m: m(ids(), logits_to_keep=1.0), TypeError, "logits_to_keep"),
    ("bool logits_to_keep", lambda m: m(ids(), logits_to_keep=True), TypeError, "logits_to_keep"),
    ("negative logits_to_keep", lambda m: m(ids(), logits_to_keep=-2), ValueError, "logits_to_keep"),
    ("float labels", lambda m: m(ids(), labels=ids().float()), TypeError, "labels"),
    ("labels outside vocab", lambda m: m(ids(), labels=ids() + 97), ValueError, "labels"),
]


@pytest.mark.parametrize("what,call,error,arg", FORWARD_CASES, ids=[c[0] for c in FORWARD_CASES])
def test_bad_forward_inputs(what, call, error, arg):
    with pytest.raises(error, match=arg):
        call(make())


def test_int32_ids_and_bool_or_float_masks_are_fine():
    m = make()
    x = ids()
    ref = m(x).logits
    assert_close(m(x.int()).logits, ref)
    mask = torch.ones(2, 6)
    mask[1, :2] = 0
    assert_close(m(x, attention_mask=mask).logits, m(x, attention_mask=mask.bool()).logits)


GENERATE_CASES = [
    ("max_new_tokens float", dict(max_new_tokens=4.0), TypeError, "max_new_tokens"),
    ("max_new_tokens None", dict(max_new_tokens=None), TypeError, "max_new_tokens"),
    ("max_new_tokens negative", dict(max_new_tokens=-1), ValueError, "max_new_tokens"),
    ("top_k float", dict(top_k=5.0, do_sample=True), TypeError, "top_k"),
    ("top_k zero", dict(top_k=0, do_sample=True), ValueError, "top_k"),
    ("top_p nan", dict(top_p=math.nan, do_sample=True), ValueError, "top_p"),
    ("top_p > 1", dict(top_p=1.5, do_sample=True), ValueError, "top_p"),
    ("temperature nan", dict(temperature=math.nan, do_sample=True), ValueError, "temperature"),
    ("temperature inf", dict(temperature=math.inf, do_sample=True), ValueError, "temperature"),
    ("temperature string", dict(temperature="hot"), TypeError, "temperature"),
    ("do_sample string", dict(do_sample="false"), TypeError, "do_sample"),
    ("eos outside vocab", dict(eos_token_id=97), ValueError, "eos_token_id"),
    ("eos negative", dict(eos_token_id=-1), ValueError, "eos_token_id"),
    ("eos float", dict(eos_token_id=2.0), TypeError, "eos_token_id"),
    ("eos list with a bad id", dict(eos_token_id=[2, 500]), ValueError, "eos_token_id"),
    ("repetition_penalty zero", dict(repetition_penalty=0.0), ValueError, "repetition_penalty"),
    ("repetition_penalty nan", dict(repetition_penalty=math.nan), ValueError, "repetition_penalty"),
    ("streamer not callable", dict(streamer="print"), TypeError, "streamer"),
    ("right padding", dict(attention_mask=torch.tensor([[1] * 6, [1] * 4 + [0] * 2])), ValueError, "attention_mask"),
    ("padding in the middle", dict(attention_mask=torch.tensor([[1] * 6, [0, 1, 0, 1, 1, 1]])), ValueError, "mask"),
    ("row of padding only", dict(attention_mask=torch.tensor([[1] * 6, [0] * 6])), ValueError, "attention_mask"),
    ("mask as list", dict(attention_mask=[[1] * 6] * 2), TypeError, "attention_mask"),
]  # fmt: skip


@pytest.mark.parametrize("what,kwargs,error,arg", GENERATE_CASES, ids=[c[0] for c in GENERATE_CASES])
def test_bad_generate_arguments(what, kwargs, error, arg):
    kwargs = {"max_new_tokens": 3, **kwargs}
    with pytest.raises(error, match=arg):
        make().generate(ids(), **kwargs)


def test_right_padded_prompt_refused_left_padded_gives_the_rows_alone():
    """Right padding would append new tokens after the pads (silently wrong before): it is refused; the
    same prompts left-padded decode exactly what each prompt decodes alone."""
    m = make()
    a, b = ids(1, 6, seed=4), ids(1, 3, seed=5)
    right = torch.cat([a, torch.cat([b, torch.zeros(1, 3, dtype=torch.long)], 1)])
    with pytest.raises(ValueError, match="left padding"):
        m.generate(right, 5, attention_mask=torch.tensor([[1] * 6, [1, 1, 1, 0, 0, 0]]), eos_token_id=[])
    left = torch.cat([a, torch.cat([torch.zeros(1, 3, dtype=torch.long), b], 1)])
    out = m.generate(left, 5, attention_mask=torch.tensor([[1] * 6, [0, 0, 0, 1, 1, 1]]), eos_token_id=[])
    assert torch.equal(out[0, 6:], m.generate(a, 5, eos_token_id=[])[0, 6:])
    assert torch.equal(out[1, 6:], m.generate(b, 5, eos_token_id=[])[0, 3:])


# ------------------------------------------------------------------------------------------- files
def _saved(tmp_path, **kw):
    m = make(**kw)
    m.save_pretrained(tmp_path)
    return m


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _empty(path):
    path.write_bytes(b"")


def _random(path):
    path.write_bytes(
        torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0)).byte().numpy().tobytes()
    )


@pytest.mark.parametrize("spoil", [_truncate, _empty, _random], ids=["truncated", "empty", "random bytes"])
@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "pth"])
def test_spoilt_weights_file_error_names_the_file(tmp_path, spoil, safe):
    m = make()
    m.save_pretrained(tmp_path, safe_serialization=safe)
    weights = tmp_path / ("model.safetensors" if safe else "pytorch_model.pth")
    spoil(weights)
    with pytest.raises(ValueError, match=weights.name):
        MiniMindForCausalLM.from_pretrained(tmp_path)


def test_missing_folder_and_hub_id(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        MiniMindForCausalLM.from_pretrained(tmp_path / "no-such-folder")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        FileNotFoundError, match=r"(?s)jingyaogong/MiniMind2 does not exist.*downloading is not its job"
    ):
        MiniMindForCausalLM.from_pretrained("jingyaogong/MiniMind2")


@pytest.mark.parametrize(
    "text,error,match",
    [("[1, 2]", ValueError, "JSON object"), ("", ValueError, "not valid JSON"),
     ("{hidden_size: 64", ValueError, "not valid JSON"),
     ('{"hidden_size": "64"}', TypeError, r"MiniMindConfig\.hidden_size")],
    ids=["list", "empty", "invalid", "string size"],
)  # fmt: skip
def test_bad_config_json_names_the_file(tmp_path, text, error, match):
    _saved(tmp_path)
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(error, match=match) as err:
        MiniMindForCausalLM.from_pretrained(tmp_path)
    if error is ValueError:
        assert "config.json" in str(err.value)


def test_config_from_json_and_from_dict_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        MiniMindConfig.from_json(tmp_path / "config.json")
    with pytest.raises(ValueError, match="JSON text is not valid JSON"):
        MiniMindConfig.from_json("{oops")
    with pytest.raises(TypeError, match="from_dict"):
        MiniMindConfig.from_dict([("hidden_size", 64)])


def test_folder_without_weights_or_config(tmp_path):
    tiny_config().to_json(tmp_path / "config.json")
    with pytest.raises(FileNotFoundError, match="no weights"):
        MiniMindForCausalLM.from_pretrained(tmp_path)
    (tmp_path / "config.json").unlink()
    torch.save(make().state_dict(), tmp_path / "pretrain_64.pth")
    with pytest.raises(ValueError, match=r"config=MiniMindConfig\(\.\.\.\)"):
        MiniMindForCausalLM.from_pretrained(tmp_path)


def test_training_checkpoint_is_not_a_state_dict(tmp_path):
    m = make()
    torch.save({"model": m.state_dict(), "step": 3}, tmp_path / "resume.pth")
    with pytest.raises(ValueError, match=r"resume\.pth does not hold a state dict"):
        MiniMindForCausalLM.from_pretrained(tmp_path / "resume.pth", config=m.config)


# ---------------------------------------------------------------------------- save_pretrained's folder
@pytest.mark.parametrize("first_safe", [True, False], ids=["safetensors-then-pth", "pth-then-safetensors"])
def test_saving_over_an_older_save_in_the_other_format_loads_the_new_weights(tmp_path, first_safe):
    """The bug: save_pretrained(safe_serialization=False) beside an older model.safetensors, and
    from_pretrained loaded the OLD weights."""
    old, new = make(), make()
    with torch.no_grad():
        new.model.norm.weight.add_(1.0)
    old.save_pretrained(tmp_path, safe_serialization=first_safe)
    new.save_pretrained(tmp_path, safe_serialization=not first_safe)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["config.json", "pytorch_model.pth" if first_safe else "model.safetensors"]
    )
    loaded = MiniMindForCausalLM.from_pretrained(tmp_path)
    assert torch.equal(loaded.model.norm.weight, new.model.norm.weight)


def test_a_folder_with_two_weight_files_is_refused_and_the_file_can_be_named(tmp_path):
    m = _saved(tmp_path)
    torch.save(m.state_dict(), tmp_path / "pytorch_model.pth")  # put there by hand
    with pytest.raises(ValueError, match="ambiguous"):
        MiniMindForCausalLM.from_pretrained(tmp_path)
    loaded = MiniMindForCausalLM.from_pretrained(tmp_path / "model.safetensors")  # config.json read beside it
    assert loaded.config == m.config
    (tmp_path / "pytorch_model.pth").rename(tmp_path / "full_sft_64.pth")
    with pytest.raises(ValueError, match=r"full_sft_64\.pth"):  # a file save_pretrained did not write
        m.save_pretrained(tmp_path)


# ---------------------------------------------------------------------------- Hugging Face conventions
def test_generate_is_greedy_and_stops_at_the_configs_eos_by_default():
    m = make()
    x = ids(1, 5)
    free = m.generate(x, 8, eos_token_id=[])  # [] : no stop token at all
    assert free.shape == (1, 13) and torch.equal(free, m.generate(x, 8, do_sample=False, eos_token_id=[]))
    first = int(free[0, 5])
    stopping = MiniMindForCausalLM(dataclasses.replace(m.config, eos_token_id=first)).eval()
    stopping.load_state_dict(m.state_dict())
    assert stopping.generate(x, 8).shape == (1, 6)  # eos_token_id=None: the config's EOS
    assert stopping.generate(x, 8, eos_token_id=[]).shape == (1, 13)
    assert m.generate(x, 8, eos_token_id=[50, first]).shape == (1, 6)  # several stop tokens


def naive_penalised_greedy(m, x, n, penalty, mask=None):
    """HF's RepetitionPenaltyLogitsProcessor, by hand: every token already in the row (prompt included,
    padding excluded) has its logit divided by the penalty if positive, multiplied if negative."""
    real = torch.ones_like(x) if mask is None else mask
    seen = [set(row[mk.bool()].tolist()) for row, mk in zip(x, real, strict=True)]
    for _ in range(n):
        logits = m(x, attention_mask=mask).logits[:, -1].clone()
        for b, tokens in enumerate(seen):
            for t in tokens:
                logits[b, t] = logits[b, t] / penalty if logits[b, t] > 0 else logits[b, t] * penalty
        nxt = logits.argmax(-1)
        for b, t in enumerate(nxt.tolist()):
            seen[b].add(t)
        x = torch.cat([x, nxt[:, None]], 1)
        mask = None if mask is None else torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    return x


@pytest.mark.parametrize("penalty", [1.3, 0.7])
def test_repetition_penalty_is_hfs(penalty):
    m = make()
    x = ids(2, 5)
    out = m.generate(x, 10, repetition_penalty=penalty, eos_token_id=[])
    assert torch.equal(out, naive_penalised_greedy(m, x, 10, penalty))
    assert not torch.equal(out, m.generate(x, 10, eos_token_id=[]))  # the penalty changed something
    mask = torch.tensor([[1] * 5, [0, 0, 1, 1, 1]])
    padded = m.generate(x, 6, repetition_penalty=penalty, attention_mask=mask, eos_token_id=[])
    assert torch.equal(padded[1, 5:], m.generate(x[1:, 2:], 6, repetition_penalty=penalty, eos_token_id=[])[0, 3:])


@pytest.mark.parametrize(
    "kwargs,expected",
    [(dict(dtype="bfloat16"), torch.bfloat16), (dict(torch_dtype=torch.float16), torch.float16),
     (dict(dtype="fp16"), torch.float16), (dict(dtype="auto"), torch.float16), (dict(), torch.float32)],
)  # fmt: skip
def test_from_pretrained_dtype_and_eval_mode(tmp_path, kwargs, expected):
    m = make()
    torch.save({k: v.half() for k, v in m.state_dict().items()}, tmp_path / "full_sft_64.pth")
    loaded = MiniMindForCausalLM.from_pretrained(tmp_path / "full_sft_64.pth", config=m.config, **kwargs)
    assert not loaded.training and all(p.dtype == expected for p in loaded.parameters())


@pytest.mark.parametrize(
    "kwargs,error",
    [(dict(dtype="int8"), ValueError), (dict(dtype="float17"), TypeError), (dict(dtype=3), TypeError),
     (dict(dtype=torch.float16, torch_dtype=torch.bfloat16), ValueError)],
)  # fmt: skip
def test_from_pretrained_bad_dtype(tmp_path, kwargs, error):
    _saved(tmp_path)
    with pytest.raises(error, match="dtype"):
        MiniMindForCausalLM.from_pretrained(tmp_path, **kwargs)


def test_public_api_is_documented():
    assert minimind_ref.KVCache is KVCache and "KVCache" in minimind_ref.__all__
    for obj in (MiniMindForCausalLM, MiniMindForCausalLM.forward, MiniMindForCausalLM.generate,
                MiniMindForCausalLM.from_pretrained, MiniMindConfig.minimind3):  # fmt: skip
        assert obj.__doc__ and len(obj.__doc__) > 80, obj
