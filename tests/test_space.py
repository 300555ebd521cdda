import json

import pytest

from fbnet_fast.errors import SpaceError
from fbnet_fast.space import (FBNET_CANDIDATES, Architecture, SearchSpace, builtin_spaces, load_space,
                              make_divisible, parse_candidate)


@pytest.mark.parametrize("name", list(FBNET_CANDIDATES) + ["k7_e4", "k3_e0.5", "k5_e6_g4"])
def test_candidate_grammar_round_trips(name):
    assert parse_candidate(name).name == name


def test_candidate_kwargs():
    c = parse_candidate("k5_e1_g2")
    assert c.to_kwargs() == {"kind": "ir", "kernel": 5, "expansion": 1.0, "groups": 2}
    assert parse_candidate("skip").to_kwargs() == {"kind": "skip"}


@pytest.mark.parametrize("bad", ["k3", "e6", "k4_e6", "k3_e6_g1", "k3_e06", "conv3x3", "", "k3_e0"])
def test_unknown_or_malformed_block_names_name_the_token(bad):
    with pytest.raises(SpaceError, match="k3|block|name|kernel|canonical|expansion"):
        parse_candidate(bad)
    try:
        parse_candidate(bad)
    except SpaceError as e:
        assert repr(bad) in str(e)


def test_builtin_spaces_match_the_paper():
    assert {"fbnet", "fbnet-cifar"} <= set(builtin_spaces())
    s = load_space("fbnet")
    assert s.num_layers == 22 and s.input_size == 224
    assert list(s.candidates) == list(FBNET_CANDIDATES)
    assert [(l.c_out, l.stride) for l in s.layers if l.stride == 2] == [(24, 2), (32, 2), (64, 2), (184, 2)]
    assert s.final_size == 7 and s.head_channels == 1504 and s.stem_channels == 16
    assert s.layers[0].in_size == 112


def test_cifar_space_ends_at_4x4():
    s = load_space("fbnet-cifar")
    assert s.num_layers == 22 and s.input_size == 32
    assert s.layers[0].in_size == 32 and s.final_size == 4


def test_width_multiplier_scales_every_stage():
    s = load_space("fbnet", width_mult=0.5)
    assert [l.c_out for l in s.layers][:2] == [8, 16]
    assert s.layers[-1].c_out == make_divisible(352 * 0.5)
    assert s.head_channels == 1504  # kept when shrinking (MobileNet convention)
    assert load_space("fbnet", width_mult=2.0).head_channels == 3008
    assert make_divisible(46) == 48 and make_divisible(6) == 8


def test_fingerprint_is_stable_and_sensitive():
    a, b = load_space("fbnet"), load_space("fbnet")
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 16
    assert load_space("fbnet", num_classes=10).fingerprint == a.fingerprint  # classifier is not searched
    assert load_space("fbnet", width_mult=0.5).fingerprint != a.fingerprint
    assert a.replace(head_filters=1984).fingerprint != a.fingerprint
    assert a.replace(candidates=list(FBNET_CANDIDATES[:-1])).fingerprint != a.fingerprint
    # pinned: a change here invalidates every LUT and checkpoint users have
    assert a.fingerprint == "3857077435a8c18d"


def test_user_space_file_yaml_and_json(tmp_path):
    d = load_space("fbnet-cifar").to_dict()
    d["candidates"] = ["k3_e2", "k7_e4_g2", "skip"]
    d["stages"] = [{"filters": 16, "repeats": 2, "stride": 1}, [32, 1, 2]]
    p = tmp_path / "mine.json"
    p.write_text(json.dumps(d))
    s = load_space(str(p))
    assert s.num_layers == 3 and s.candidates == ["k3_e2", "k7_e4_g2", "skip"]
    y = tmp_path / "mine.yaml"
    import yaml

    y.write_text(yaml.safe_dump(SearchSpace.from_dict(d).to_dict()))
    assert load_space(str(y)).fingerprint == s.fingerprint


@pytest.mark.parametrize(
    "change, message",
    [
        ({"candidates": ["k3_e6", "bogus"]}, "unknown block name 'bogus'"),
        ({"stages": [{"filters": 16, "repeats": 0, "stride": 1}]}, "stage 0 field 'repeats'"),
        ({"stages": [{"filters": -8, "repeats": 1, "stride": 1}]}, "stage 0 field 'filters'"),
        ({"stages": [{"filters": 15, "repeats": 1, "stride": 1}], "candidates": ["k3_e1_g2"]}, "does not divide"),
        ({"input_size": 4, "stages": [{"filters": 16, "repeats": 1, "stride": 2}] * 4}, "too small"),
        ({"stages": []}, "'stages' is empty"),
        ({"colour": "red"}, "unknown field"),
    ],
)
def test_bad_space_files_get_one_clear_error(tmp_path, change, message):
    d = load_space("fbnet-cifar").to_dict()
    d.update(change)
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(d))
    with pytest.raises(SpaceError, match=message) as e:
        load_space(str(p))
    assert "bad.json" in str(e.value)


def test_unreadable_space_file(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("stages: [\n")
    with pytest.raises(SpaceError, match="not valid YAML"):
        load_space(str(p))
    with pytest.raises(SpaceError, match="neither a file nor a built-in"):
        load_space("no-such-space")


def test_architecture_round_trip_and_checks():
    s = load_space("fbnet")
    arch = Architecture.from_indices(s, [0] * 22)
    again = Architecture.from_dict(json.loads(json.dumps(arch.to_dict())))
    assert again == arch and again.indices(s) == [0] * 22
    with pytest.raises(SpaceError, match="has 3 layers"):
        Architecture(("k3_e1",) * 3).check(s)
    with pytest.raises(SpaceError, match="fingerprint"):
        Architecture(arch.blocks, "fbnet", "0" * 16).check(s)
    with pytest.raises(SpaceError, match="layer 2"):
        Architecture(("k3_e1", "k3_e1", "nope"))
